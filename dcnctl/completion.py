"""`completion bash|zsh`: a completion script generated from the argument parser itself,
so it never falls behind the commands. zsh loads it through bashcompinit.

What it completes, as kubectl's does: subcommands and flags; a flag's values where the
flag has choices (`-o wide|yaml|json|name`, `--dry-run`, `--optimizer`), files where it
takes any other value; resource types after `get`, `describe` and `delete` (every name
`kinds` accepts, short names included); and resource names, asked of the server when TAB
is pressed (`dcnctl get TYPE -o name`, with the --server/--context/--config/--token and
--insecure given on the line), as kubectl's `__kubectl_get_resource` does. A server that
does not answer within a few seconds completes nothing rather than hanging the shell.
"""

from __future__ import annotations

import argparse
import dataclasses

from dcnctl import kinds

#: Commands whose positional arguments are resource names: (command, the index of the
#: positional that is a name, whether every later one is a name too, the type named — None
#: when it is the positional before the names, as in `get TYPE NAME...`).
_NAMES: tuple[tuple[str, int, bool, str | None], ...] = (
    ("get", 1, True, None),
    ("describe", 1, True, None),
    ("delete", 1, True, None),
    ("cordon", 0, True, kinds.PNODE.plural),
    ("uncordon", 0, True, kinds.PNODE.plural),
    ("drain", 0, True, kinds.PNODE.plural),
    ("train", 0, False, kinds.NETWORK.plural),
    ("infer", 0, False, kinds.NETWORK.plural),
    ("explain", 1, False, kinds.NETWORK.plural),
)


@dataclasses.dataclass
class _Command:
    words: list[str]  # its subcommands and long flags
    choices: dict[str, list[str]]  # flag -> the values it accepts


def _commands(parser: argparse.ArgumentParser) -> dict[str, _Command]:
    """Command path ("get", "config use-context") -> what may follow it."""
    found: dict[str, _Command] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        words: list[str] = []
        choices: dict[str, list[str]] = {}
        for action in p._actions:
            words += [s for s in action.option_strings if s.startswith("--")]
            if action.option_strings and action.choices:
                for flag in action.option_strings:
                    choices[flag] = [str(c) for c in action.choices]
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    words.append(name)
                    walk(sub, f"{path} {name}".strip())
            elif action.choices and not action.option_strings:
                words += [str(c) for c in action.choices]
        found[path] = _Command(sorted(set(words)), choices)

    walk(parser, "")
    return found


def _valued_flags(parser: argparse.ArgumentParser) -> list[str]:
    """Every flag that takes a value, in any command: the word after it is that value."""
    flags: set[str] = set()

    def walk(p: argparse.ArgumentParser) -> None:
        for action in p._actions:
            if action.option_strings and action.nargs != 0:
                flags.update(action.option_strings)
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    walk(sub)

    walk(parser)
    return sorted(flags)


def resource_types() -> list[str]:
    """What `get TYPE` accepts, short names included."""
    return sorted({alias for kind in kinds.ALL for alias in kind.aliases})


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    commands = _commands(parser)
    word_cases, choice_cases = [], []
    for path, command in sorted(commands.items(), key=lambda item: -len(item[0])):
        pattern = f'"{path}"*' if path else "*"
        word_cases.append(f'        {pattern}) words="{" ".join(command.words)}" ;;')
        for flag, values in sorted(command.choices.items()):
            choice_cases.append(f'        "{path}:{flag}") words="{" ".join(values)}" ;;')
    name_cases = []
    for command_name, index, many, type_ in _NAMES:
        kind = f'"{type_}"' if type_ else '"${args[1]}"'
        test = ">=" if many else "=="
        name_cases.append(
            f"                {command_name}) (( n {test} {index} )) && [[ -n {kind} ]] "
            f"&& {{ words=\"$(_dcnctl_names {kind})\"; named=1; }} ;;"
        )
    type_commands = "|".join(c for c, _, _, t in _NAMES if t is None)
    bash = f"""# dcnctl completion; source it: source <(dcnctl completion {shell})
_dcnctl_names() {{
    # The names of resources of type $1, from the server, with the connection flags
    # given on the command line.
    local i flags=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        case "${{COMP_WORDS[i]}}" in
            --server|-s|--context|--config|--token)
                flags+=("${{COMP_WORDS[i]}}" "${{COMP_WORDS[i+1]}}") ;;
            --insecure|--no-insecure)
                flags+=("${{COMP_WORDS[i]}}") ;;
        esac
    done
    dcnctl "${{flags[@]}}" --request-timeout 5s get "$1" -o name 2>/dev/null | sed 's|^.*/||'
}}
_dcnctl() {{
    local cur prev path="" w i n args=() words="" named=""
    local valued=" {" ".join(_valued_flags(parser))} "
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        if [[ "$w" == -* ]]; then
            [[ "$valued" == *" $w "* && "$w" != *=* ]] && ((i++))
            continue
        fi
        args+=("$w")
    done
    # The command path: the leading positionals that name (sub)commands.
    path="${{args[0]}}"
    [[ "$path" == config && ${{#args[@]}} -gt 1 ]] && path="config ${{args[1]}}"
    if [[ "$prev" == -* && "$valued" == *" $prev "* ]]; then
        case "$path:$prev" in
{chr(10).join(choice_cases)}
            *) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        esac
        COMPREPLY=($(compgen -W "$words" -- "$cur"))
        return
    fi
    n=$(( ${{#args[@]}} - 1 ))  # positionals after the command
    if [[ "$cur" != -* && ${{#args[@]}} -gt 0 ]]; then
        case "${{args[0]}}" in
            {type_commands}) (( n == 0 )) && words="{" ".join(resource_types())}" ;;
        esac
        if [[ -z "$words" ]]; then
            case "${{args[0]}}" in
{chr(10).join(name_cases)}
            esac
        fi
        if [[ -n "$words" || -n "$named" ]]; then  # a name: never a flag in its place
            COMPREPLY=($(compgen -W "$words" -- "$cur"))
            return
        fi
    fi
    case "$path" in
{chr(10).join(word_cases)}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _dcnctl dcnctl
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash
    return bash

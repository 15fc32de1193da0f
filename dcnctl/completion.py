"""`completion bash|zsh`: a completion script generated from the argument parser itself,
so it never falls behind the commands. zsh loads it through bashcompinit."""

from __future__ import annotations

import argparse


def _words(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Command path ("get", "config use-context") -> its subcommands and flags."""
    found: dict[str, list[str]] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        words: list[str] = []
        for action in p._actions:
            words += [s for s in action.option_strings if s.startswith("--")]
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    words.append(name)
                    walk(sub, f"{path} {name}".strip())
            elif action.choices and not action.option_strings:
                words += [str(c) for c in action.choices]
        found[path] = sorted(set(words))

    walk(parser, "")
    return found


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    cases = []
    for path, words in sorted(_words(parser).items(), key=lambda item: -len(item[0])):
        pattern = f'"{path}"*' if path else "*"
        cases.append(f'        {pattern}) words="{" ".join(words)}" ;;')
    body = "\n".join(cases)
    bash = f"""# dcnctl completion; source it: source <(dcnctl completion {shell})
_dcnctl() {{
    local cur path="" w i
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ "$w" == -* ]] && continue
        path="${{path:+$path }}$w"
    done
    local words
    case "$path" in
{body}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _dcnctl dcnctl
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash
    return bash

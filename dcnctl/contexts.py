"""`config set-context | use-context | get-contexts | current-context`."""

from __future__ import annotations

import argparse
import sys

from dcnctl import config, errors, tables


def run(args: argparse.Namespace) -> int:
    file = config.load(config.path_of(args.config))
    action = args.config_command
    if action == "set-context":
        ctx = file.contexts.get(args.name) or config.Context(name=args.name)
        for flag in ("server", "token", "tls_ca", "tls_cert", "tls_key", "tls_server_name"):
            value = getattr(args, flag)
            if value is not None:
                setattr(ctx, flag, value)
        if args.insecure is not None:
            ctx.insecure = args.insecure
        created = args.name not in file.contexts
        file.contexts[args.name] = ctx
        if not file.current:
            file.current = args.name
        file.save()
        print(f'Context "{args.name}" {"created" if created else "modified"}.')
    elif action == "use-context":
        if args.name not in file.contexts:
            raise errors.local(f'no context exists with the name: "{args.name}"')
        file.current = args.name
        file.save()
        print(f'Switched to context "{args.name}".')
    elif action == "get-contexts":
        rows = [
            ["*" if name == file.current else "", name, ctx.server or config.DEFAULT_SERVER,
             "token" if ctx.token else tables.NONE,
             "plaintext" if not ctx.tls else "tls"]
            for name, ctx in sorted(file.contexts.items())
        ]  # fmt: skip
        if args.no_headers:
            sys.stdout.write(tables.render(["CURRENT"] * 5, rows, no_headers=True))
        else:
            sys.stdout.write(
                tables.render(["CURRENT", "NAME", "SERVER", "AUTH", "TRANSPORT"], rows)
            )
    elif action == "delete-context":
        if file.contexts.pop(args.name, None) is None:
            raise errors.local(f'no context exists with the name: "{args.name}"')
        if file.current == args.name:
            file.current = ""
        file.save()
        print(f"deleted context {args.name} from {file.path}")
    else:  # current-context
        if not file.current:
            raise errors.local("current-context is not set")
        print(file.current)
    return 0

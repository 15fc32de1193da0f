"""Contexts: named servers with their credentials and TLS settings, in a YAML file.

The file (`~/.dcnr/config`, or $DCNR_CONFIG, or --config) looks like kubectl's kubeconfig,
flattened, since DCNR has no separate users or clusters:

    apiVersion: dcnr.io/v1
    kind: Config
    current-context: lab
    contexts:
      - name: lab
        server: dcnr.lab.example:7070
        token: s3cret
        tls-ca: /etc/dcnr/ca.pem
        tls-server-name: dcnr.lab.example   # optional: the name its certificate carries
      - name: local
        server: 127.0.0.1:7070
        insecure: true                      # plaintext: `serve --insecure` only

TLS unless told otherwise, as kubectl: a context without tls-ca verifies the server against
gRPC's default roots (the file $GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names, else the Mozilla
bundle grpcio ships). Plaintext only with `insecure: true` or the --insecure flag, and then
dcnctl warns on stderr that the token crosses the network readable.

Which server a command talks to: --server, else $DCNR_SERVER, else the chosen context
(--context, else current-context), else 127.0.0.1:7070. The file may hold tokens, so it is
written readable by its owner only.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import yaml

from dcnctl import errors

DEFAULT_SERVER = "127.0.0.1:7070"
SERVER_ENV = "DCNR_SERVER"
CONFIG_ENV = "DCNR_CONFIG"
_FIELDS = ("server", "token", "tls-ca", "tls-cert", "tls-key", "tls-server-name", "insecure")


@dataclasses.dataclass
class Context:
    name: str
    server: str = ""
    token: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    #: The name to expect in the server's certificate when `server` is an address it does
    #: not name (an IP, a port-forward).
    tls_server_name: str = ""
    #: Plaintext, even when TLS files are set (a local cluster, a debugging session); the
    #: only way to plaintext: without it, TLS against tls-ca or the default roots.
    insecure: bool = False

    @property
    def tls(self) -> bool:
        return not self.insecure

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name}
        for field in _FIELDS:
            value = getattr(self, field.replace("-", "_"))
            if value:
                body[field] = value
        return body


@dataclasses.dataclass
class ConfigFile:
    path: pathlib.Path
    current: str = ""
    contexts: dict[str, Context] = dataclasses.field(default_factory=dict)

    def save(self) -> None:
        body = {
            "apiVersion": "dcnr.io/v1",
            "kind": "Config",
            "current-context": self.current,
            "contexts": [c.to_dict() for c in self.contexts.values()],
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            yaml.safe_dump(body, f, sort_keys=False)


def path_of(flag: str | None) -> pathlib.Path:
    chosen = flag or os.environ.get(CONFIG_ENV) or str(pathlib.Path.home() / ".dcnr" / "config")
    return pathlib.Path(chosen).expanduser()


def load(path: pathlib.Path) -> ConfigFile:
    """The file's contexts; an absent file is an empty configuration, a broken one an error
    naming the file and the field."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return ConfigFile(path)
    except OSError as exc:
        raise errors.local(f"{path}: cannot read the config: {exc.strerror or exc}") from None
    try:
        body = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise errors.local(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(body, dict):
        raise errors.local(f"{path}: must be a mapping with 'contexts' and 'current-context'")
    found = ConfigFile(path, current=str(body.get("current-context") or ""))
    raw = body.get("contexts") or []
    if not isinstance(raw, list):
        raise errors.local(f"{path}: contexts: must be a list")
    for i, entry in enumerate(raw):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise errors.local(f"{path}: contexts[{i}]: must be a mapping with a 'name'")
        unknown = sorted(set(entry) - {"name", *_FIELDS})
        if unknown:
            raise errors.local(
                f"{path}: contexts[{i}]: unknown field {unknown[0]!r} "
                f"(known: name, {', '.join(_FIELDS)})"
            )
        ctx = Context(
            name=entry["name"],
            server=str(entry.get("server") or ""),
            token=str(entry.get("token") or ""),
            tls_ca=str(entry.get("tls-ca") or ""),
            tls_cert=str(entry.get("tls-cert") or ""),
            tls_key=str(entry.get("tls-key") or ""),
            tls_server_name=str(entry.get("tls-server-name") or ""),
            insecure=bool(entry.get("insecure", False)),
        )
        found.contexts[ctx.name] = ctx
    return found


def resolve(
    file: ConfigFile,
    *,
    server: str | None,
    context: str | None,
    token: str | None,
    insecure: bool | None = None,
) -> Context:
    """The effective connection settings, by the precedence in the module docstring;
    `insecure` (the --insecure/--no-insecure flag; None: not given) overrides the
    context's."""
    name = context or file.current
    if name and name not in file.contexts:
        if context:
            raise errors.local(f'context "{name}" does not exist in {file.path}')
        chosen = Context(name="")  # a dangling current-context: fall through to the default
    else:
        chosen = dataclasses.replace(file.contexts[name]) if name else Context(name="")
    chosen.server = server or os.environ.get(SERVER_ENV) or chosen.server or DEFAULT_SERVER
    _, sep, rest = chosen.server.partition("://")
    if sep:
        # kubectl habits put https:// in front; gRPC's resolver would answer with
        # "Misformatted domain name" at the first call instead.
        raise errors.local(
            f"server {chosen.server!r}: give HOST:PORT without a scheme,"
            f" e.g. {rest or DEFAULT_SERVER}"
            " (dcnr.v1 is gRPC over TLS unless --insecure, not chosen by a scheme)"
        )
    if token is not None:
        chosen.token = token
    if insecure is not None:
        chosen.insecure = insecure
    return chosen

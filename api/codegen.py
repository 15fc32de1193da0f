"""Generate the Python code of the dcnr.v1 contract: `python -m api.codegen [--check]`.

The .proto files under api/proto are the contract; the modules under api/dcnr are derived
from them and committed, so that users of the package need no protoc. This module is the one
command that derives them (`make proto`), and `--check` (CI, and the drift test) proves the
committed copy is what the .proto files produce now.

Both modes generate into a temporary directory first and then compare or copy, so the check
sees exactly what a regeneration would write. protoc names the generated modules after the
proto package (`dcnr.v1`), while they live in our package `api`; the imports between them
are rewritten to `api.dcnr.v1` after generation, by fixed textual rules, so the output stays
byte-for-byte deterministic.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.resources
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from grpc_tools import protoc

REPO = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO / "api" / "proto"
#: The generated tree: api/dcnr/__init__.py, api/dcnr/v1/__init__.py, api/dcnr/v1/*_pb2*.
OUTPUT_ROOT = REPO / "api" / "dcnr"

_GENERATED_NOTICE = "Do not edit: regenerate with `make proto` (python -m api.codegen)."
INIT_FILES = {
    "__init__.py": (
        f'"""Generated code of the dcnr protobuf packages.\n\n{_GENERATED_NOTICE}\n"""\n'
    ),
    "v1/__init__.py": (
        '"""Generated code of dcnr.v1, from api/proto/dcnr/v1/*.proto.\n\n'
        f'{_GENERATED_NOTICE}\n"""\n'
    ),
}

PLUGINS = ("protoc-gen-mypy", "protoc-gen-mypy_grpc")

# protoc writes `from dcnr.v1 import x_pb2` in .py and .pyi files, and mypy-protobuf may write
# `import dcnr.v1.x_pb2` and qualified names `dcnr.v1.x_pb2.Message`. Only module names
# ending in _pb2/_pb2_grpc are rewritten: the serialized descriptors also contain "dcnr.v1"
# (the proto package, which must stay as it is), never followed by a module name.
_FROM_IMPORT = re.compile(r"^(\s*)from dcnr\.v1 import ", re.MULTILINE)
_QUALIFIED = re.compile(r"(?<![\w.])dcnr\.v1\.(\w+_pb2(?:_grpc)?)\b")
_LEFTOVER = re.compile(r"^\s*(?:from|import)\s+dcnr\b", re.MULTILINE)


class CodegenError(Exception):
    """protoc failed, a plugin is missing, or the generated code has an unexpected form."""


def rewrite_imports(text: str) -> str:
    """Point the generated cross-imports at api.dcnr.v1 instead of the top-level dcnr.v1."""
    text = _FROM_IMPORT.sub(r"\1from api.dcnr.v1 import ", text)
    text = _QUALIFIED.sub(r"api.dcnr.v1.\1", text)
    leftover = _LEFTOVER.search(text)
    if leftover is not None:
        # A new protoc or plugin version with an import form these rules do not know: fail
        # here rather than commit modules that import a package that does not exist.
        raise CodegenError(f"unrewritten import of dcnr in generated code: {leftover.group()!r}")
    return text


def _plugin(name: str) -> Path:
    """The plugin of the running interpreter's environment, even if it is not on PATH."""
    candidate = Path(sysconfig.get_path("scripts")) / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise CodegenError(
            f"{name} not found in {candidate.parent} nor on PATH: install the dev extras "
            "(pip install -e '.[dev]'), which include mypy-protobuf"
        )
    return Path(found)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to `path`: protoc and its plugins (child processes) write there,
    and mypy-protobuf prints a line per file even on success."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("wb") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """The .proto files, as protoc names them (relative to the root), in a fixed order."""
    return sorted(path.relative_to(proto_root).as_posix() for path in proto_root.rglob("*.proto"))


def generate(proto_root: Path = PROTO_ROOT) -> dict[str, bytes]:
    """Everything the generated tree should hold: path relative to api/dcnr -> content."""
    files = proto_files(proto_root)
    if not files:
        raise CodegenError(f"no .proto files under {proto_root}")
    with contextlib.ExitStack() as stack:
        well_known = stack.enter_context(
            importlib.resources.as_file(importlib.resources.files("grpc_tools") / "_proto")
        )
        out = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dcnr-codegen-")))
        gen = out / "gen"
        gen.mkdir()
        args = [
            "grpc_tools.protoc",
            f"--proto_path={proto_root}",
            f"--proto_path={well_known}",
            *(f"--plugin={name}={_plugin(name)}" for name in PLUGINS),
            f"--python_out={gen}",
            f"--grpc_python_out={gen}",
            f"--mypy_out={gen}",
            f"--mypy_grpc_out={gen}",
            *files,
        ]
        log = out / "stderr.txt"
        with _stderr_to(log):
            status = int(protoc.main(args))
        if status != 0:
            raise CodegenError(f"protoc failed (exit {status}):\n{log.read_text(errors='replace')}")
        package = gen / "dcnr"
        result = {
            path.relative_to(package).as_posix(): rewrite_imports(path.read_text()).encode()
            for path in package.rglob("*")
            if path.is_file()
        }
    result.update({name: text.encode() for name, text in INIT_FILES.items()})
    return dict(sorted(result.items()))


def committed(output_root: Path = OUTPUT_ROOT) -> dict[str, bytes]:
    """What the generated tree holds now, ignoring bytecode caches."""
    if not output_root.is_dir():
        return {}
    return {
        path.relative_to(output_root).as_posix(): path.read_bytes()
        for path in sorted(output_root.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def differences(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """One line per file that differs: 'changed', 'missing' (to be generated) or 'stale'."""
    lines = []
    for name in sorted(expected.keys() | actual.keys()):
        if name not in actual:
            lines.append(f"missing: {name}")
        elif name not in expected:
            lines.append(f"stale:   {name}")
        elif expected[name] != actual[name]:
            lines.append(f"changed: {name}")
    return lines


def write(expected: dict[str, bytes], output_root: Path = OUTPUT_ROOT) -> list[str]:
    """Make the generated tree equal `expected`; returns one line per file it changed."""
    changes = []
    for name, content in expected.items():
        target = output_root / name
        if not target.is_file() or target.read_bytes() != content:
            changes.append(f"{'updated' if target.is_file() else 'created'}: {name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    for name in sorted(committed(output_root).keys() - expected.keys()):
        changes.append(f"removed: {name}")
        (output_root / name).unlink()
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.codegen", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 listing the files that differ from a fresh generation",
    )
    options = parser.parse_args(argv)
    try:
        expected = generate()
    except CodegenError as exc:
        print(f"codegen: {exc}", file=sys.stderr)
        return 2
    where = OUTPUT_ROOT.relative_to(REPO).as_posix()
    if options.check:
        diff = differences(expected, committed())
        if diff:
            print(f"{where} is out of date with api/proto; run `make proto`:", file=sys.stderr)
            for line in diff:
                print(f"  {line}", file=sys.stderr)
            return 1
        print(f"{where}: {len(expected)} files up to date")
        return 0
    changes = write(expected)
    for line in changes:
        print(line)
    print(f"{where}: {len(expected)} files, {len(changes)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main())

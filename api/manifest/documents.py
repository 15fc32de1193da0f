"""Manifest files to resources: the entry points `dcnctl apply -f` and the API use.

Every problem in every document of every file is collected and raised together as one
ManifestError; any other exception escaping from here is a bug (the fuzz tests hold us
to that), but as a last line of defence it is still turned into a ManifestError, so that
bad input can never take a process down.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

from api.manifest import decode, errors, reader
from api.resources import meta

#: File names a directory is searched for, as `kubectl apply -f DIR` does.
SUFFIXES = (".yaml", ".yml", ".json")


def parse_documents(
    data: bytes | str,
    *,
    source: str = "<stdin>",
    max_bytes: int = reader.MAX_DOCUMENT_BYTES,
) -> list[meta.Resource]:
    """The resources in a YAML stream (`---`-separated) or a JSON object or List."""
    found, problems = _parse(data, source, max_bytes)
    if problems:
        raise errors.ManifestError(problems)
    return found


def parse_object(obj: Any, *, source: str = "") -> meta.Resource:
    """One resource from an already-decoded JSON object, with every manifest check.

    For callers that receive JSON over the wire (gRPC Apply, the operator): the same
    rules as files, without the text layer.
    """
    found: meta.Resource | None = None
    try:
        doc = reader.normalize(obj)
        problems = doc.errors
        if not problems:
            found, problems = decode.resource_at(doc.body, "")
    except Exception as exc:  # the last line of defence, see module doc
        problems = [_internal(exc)]
    if found is None:
        raise errors.ManifestError([dataclasses.replace(p, source=source) for p in problems])
    return found


def load_file(
    path: str | os.PathLike[str], *, max_bytes: int = reader.MAX_DOCUMENT_BYTES
) -> list[meta.Resource]:
    found, problems = _load(pathlib.Path(path), max_bytes)
    if problems:
        raise errors.ManifestError(problems)
    return found


def load_path(
    path: str | os.PathLike[str], *, max_bytes: int = reader.MAX_DOCUMENT_BYTES
) -> list[meta.Resource]:
    """A file, or every *.yaml, *.yml and *.json file of a directory in name order."""
    root = pathlib.Path(path)
    if not root.is_dir():
        return load_file(root, max_bytes=max_bytes)
    files = sorted(p for p in root.iterdir() if p.suffix in SUFFIXES and p.is_file())
    if not files:
        raise errors.ManifestError([errors.FieldError(
            "", f"no {', '.join('*' + s for s in SUFFIXES)} files in this directory",
            source=str(root),
        )])
    found: list[meta.Resource] = []
    problems: list[errors.FieldError] = []
    for file in files:
        file_found, file_problems = _load(file, max_bytes)
        found += file_found
        problems += file_problems
    if problems:
        raise errors.ManifestError(problems)
    return found


def _load(
    path: pathlib.Path, max_bytes: int
) -> tuple[list[meta.Resource], list[errors.FieldError]]:
    try:
        with path.open("rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return [], [errors.FieldError("", f"cannot read: {reason}", source=str(path))]
    if len(data) > max_bytes:
        return [], [errors.FieldError(
            "", f"file is more than the limit of {max_bytes} bytes", source=str(path)
        )]
    return _parse(data, str(path), max_bytes)


def _parse(
    data: bytes | str, source: str, max_bytes: int
) -> tuple[list[meta.Resource], list[errors.FieldError]]:
    found: list[meta.Resource] = []
    problems: list[errors.FieldError] = []
    try:
        documents = reader.read(data, max_bytes=max_bytes)
        numbered = len(documents) > 1
        for doc in documents:
            document = doc.number if numbered else None
            if doc.errors:
                doc_problems = doc.errors
            else:
                doc_found, doc_problems = decode.resources(doc.body)
                found += doc_found
            problems += [
                dataclasses.replace(p, source=source, document=document) for p in doc_problems
            ]
    except errors.ManifestError as exc:
        problems += exc.errors
    except Exception as exc:  # the last line of defence, see module doc
        problems.append(_internal(exc))
    return found, [dataclasses.replace(p, source=p.source or source) for p in problems]


def _internal(exc: Exception) -> errors.FieldError:
    return errors.FieldError(
        "", f"internal error while validating ({type(exc).__name__}: {exc}); please report it"
    )


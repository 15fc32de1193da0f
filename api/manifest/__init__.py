"""Manifests: Kubernetes-shaped YAML and JSON documents parsed into resource models.

The user-facing front door of invariant 5: any input at all yields either validated
resources or a ManifestError listing every problem by file, document and field path
(`network.yaml: document 2: spec.vnodes[3].inputs[0]: unknown vnode "fc9" (...)`).
Pure parsing and validation; the only I/O is reading the files `load_path` is given.

    reader    text -> JSON-shaped documents, with the size, depth and alias limits
              (read_json: one JSON text received over the wire, with the same limits)
    decode    documents -> resources: apiVersion, kind, models, then graph
    graph     Network checks that span VNodes (names, edges, cycles, sizes)
    errors    FieldError and ManifestError, and pydantic's errors translated into them
    documents the entry points: parse_documents, parse_object, load_file, load_path
    output    dump_yaml and dump_json
"""

from __future__ import annotations

from api.manifest.decode import SYSTEM_KINDS, USER_KINDS
from api.manifest.documents import load_file, load_path, parse_documents, parse_object
from api.manifest.errors import MAX_REPORTED_ERRORS, FieldError, ManifestError
from api.manifest.output import dump_json, dump_yaml, to_manifest
from api.manifest.reader import MAX_DEPTH, MAX_DOCUMENT_BYTES, MAX_NODES, read_json

__all__ = [
    "MAX_DEPTH",
    "MAX_DOCUMENT_BYTES",
    "MAX_NODES",
    "MAX_REPORTED_ERRORS",
    "SYSTEM_KINDS",
    "USER_KINDS",
    "FieldError",
    "ManifestError",
    "dump_json",
    "dump_yaml",
    "load_file",
    "load_path",
    "parse_documents",
    "parse_object",
    "read_json",
    "to_manifest",
]

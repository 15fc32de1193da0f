"""Object metadata and the base every stored resource shares.

Field names follow Kubernetes: Python attributes are snake_case, the wire form (manifests,
JSON, the store) is camelCase. `generation` changes only when spec changes;
`resource_version` changes on every write and is the optimistic-concurrency token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

#: Final, so that mypy sees the Literal type the `apiVersion` field declares.
API_VERSION: Final = "dcnr.io/v1"
GROUP = "dcnr.io"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z"
)
_LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")


def check_dns1123_label(value: str) -> str:
    """A name usable as one DNS label: at most 63 of [a-z0-9-], alphanumeric at both ends."""
    if len(value) > 63 or not _DNS1123_LABEL.match(value):
        raise ValueError(
            f"invalid name {value!r}: must be a DNS-1123 label (at most 63 characters of "
            "lowercase letters, digits and '-', starting and ending with a letter or digit)"
        )
    return value


def check_dns1123_subdomain(value: str) -> str:
    """A name of dot-separated DNS labels, at most 253 characters."""
    if len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value):
        raise ValueError(
            f"invalid name {value!r}: must be a DNS-1123 subdomain (at most 253 characters of "
            "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)"
        )
    return value


def _check_qualified_name(key: str, what: str) -> None:
    """A label or annotation key: an optional DNS-subdomain prefix and '/', then a name."""
    prefix, _, name = key.rpartition("/")
    if prefix:
        check_dns1123_subdomain(prefix)
    if not name or len(name) > 63 or not _LABEL_KEY_NAME.match(name):
        raise ValueError(
            f"invalid {what} key {key!r}: name part must be at most 63 characters of "
            "alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
        )


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    for key, value in labels.items():
        _check_qualified_name(key, "label")
        if len(value) > 63 or not _LABEL_VALUE.match(value):
            raise ValueError(
                f"invalid label value {value!r} for key {key!r}: at most 63 characters of "
                "alphanumerics, '-', '_' or '.', starting and ending with an alphanumeric"
            )
    return labels


#: As Kubernetes' TotalAnnotationSizeLimitB: keys and values of one object together.
MAX_ANNOTATIONS_BYTES = 256 * 1024


def check_annotations(annotations: dict[str, str]) -> dict[str, str]:
    """Keys are qualified names like label keys; values are free text, but all of them
    together are bounded, so a record cannot be made arbitrarily large through them."""
    total = 0
    for key, value in annotations.items():
        _check_qualified_name(key, "annotation")
        total += len(key.encode()) + len(value.encode())
    if total > MAX_ANNOTATIONS_BYTES:
        raise ValueError(
            f"annotations are {total} bytes, more than the limit of {MAX_ANNOTATIONS_BYTES}"
        )
    return annotations


DNSLabel = Annotated[str, AfterValidator(check_dns1123_label)]
DNSSubdomain = Annotated[str, AfterValidator(check_dns1123_subdomain)]
Labels = Annotated[dict[str, str], AfterValidator(check_labels)]
Annotations = Annotated[dict[str, str], AfterValidator(check_annotations)]


class Model(BaseModel):
    """Base of every wire model: camelCase aliases, unknown fields are errors.

    Input is validated when parsed, not on attribute assignment: quantities are parsed from
    user units (`cpu: 2` is two cores) into integers (2000 millicores), so re-validating an
    assignment such as `allocated.cpu += 500` would read 500 as cores, not millicores.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )


#: One `__pydantic_fields_set__` per (model class, names): see `share_fields_sets`. Records
#: read back from a store name every field, so a handful of entries per class in practice;
#: past the bound (documents naming odd subsets of optional fields) a model keeps its own.
MAX_SHARED_FIELDS_SETS: Final = 4096
_FIELDS_SETS: dict[tuple[type[BaseModel], frozenset[str]], set[str]] = {}


def share_fields_sets(record: BaseModel) -> None:
    """Make every model in `record` (itself, and the models in its fields, lists and dicts)
    use one shared `__pydantic_fields_set__` per class and set of names, in place.

    pydantic gives each model instance its own set of the field names it was given: in a
    record of small models (an Allocation is five), those sets were about half of the
    record's memory (4.4 kB -> 1.8 kB an Allocation, 7.7 kB -> 3.4 kB a PNode; issue 13,
    a process that holds every record of a large cluster). Nothing of ours reads them
    (no `exclude_unset`); pydantic's copies (`model_copy`, deep or not) copy the set, so a
    copy never shares it. Only an assignment to a field of the very record would add a name
    to the shared set, and records held this way (the view's cache) are never assigned to.
    """
    fields = record.__pydantic_fields_set__
    key = (type(record), frozenset(fields))
    shared = _FIELDS_SETS.get(key)
    if shared is None and len(_FIELDS_SETS) < MAX_SHARED_FIELDS_SETS:
        shared = _FIELDS_SETS[key] = set(fields)
    if shared is not None and fields is not shared:
        object.__setattr__(record, "__pydantic_fields_set__", shared)
    for value in record.__dict__.values():
        if isinstance(value, BaseModel):
            share_fields_sets(value)
        elif isinstance(value, list | tuple):
            for item in value:
                if isinstance(item, BaseModel):
                    share_fields_sets(item)
        elif isinstance(value, dict):
            for item in value.values():
                if isinstance(item, BaseModel):
                    share_fields_sets(item)


class ObjectMeta(Model):
    name: DNSSubdomain
    uid: str = ""
    generation: int = Field(default=0, ge=0)
    resource_version: int = Field(default=0, ge=0)
    labels: Labels = Field(default_factory=dict)
    annotations: Annotations = Field(default_factory=dict)
    finalizers: list[str] = Field(default_factory=list)
    creation_timestamp: datetime | None = None
    deletion_timestamp: datetime | None = None


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """One observation, as in Kubernetes: Ready=True, Unschedulable=True with a reason."""

    type: str
    status: ConditionStatus
    reason: str = ""
    message: str = ""
    last_transition_time: datetime | None = None
    observed_generation: int = 0


def condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int = 0,
) -> Condition:
    """The condition of `type` as observed `now`, given the current `conditions`: its
    last_transition_time moves only when its status changes (or was never set), as in
    Kubernetes, so a status written only when it changed really says since when."""
    old = next((c for c in conditions if c.type == type), None)
    since = now
    if old is not None and old.status == status and old.last_transition_time is not None:
        since = old.last_transition_time
    return Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=observed_generation,
    )


def set_condition(
    conditions: Sequence[Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: datetime,
    observed_generation: int = 0,
) -> list[Condition]:
    """`conditions` with the one of `type` replaced by its `condition` now (put last)."""
    fresh = condition(
        conditions,
        type=type,
        status=status,
        reason=reason,
        message=message,
        now=now,
        observed_generation=observed_generation,
    )
    return [*(c for c in conditions if c.type != type), fresh]


def remove_condition(conditions: Sequence[Condition], type: str) -> list[Condition]:
    return [c for c in conditions if c.type != type]


class Resource(Model):
    """A stored record: apiVersion, kind, metadata, spec and status.

    `INDEXES` names the secondary indexes the store keeps for this kind; `index_values`
    gives this record's value for each (None: not indexed, as in a sparse index).
    """

    KIND: ClassVar[str]
    PLURAL: ClassVar[str]
    INDEXES: ClassVar[tuple[str, ...]] = ()
    #: Whether records of this kind may have a `forget_after` time (DynamoDB: a TTL attribute).
    EXPIRES: ClassVar[bool] = False

    api_version: Literal["dcnr.io/v1"] = Field(default=API_VERSION, alias="apiVersion")
    metadata: ObjectMeta

    @property
    def name(self) -> str:
        return self.metadata.name

    def index_values(self) -> dict[str, str | None]:
        return {}

    def forget_after(self) -> datetime | None:
        """When the store may forget this record (None: never). Stores neither return a
        record past it nor keep it (`api.resources.event`: events have a TTL)."""
        return None

    def to_json(self) -> str:
        return self.model_dump_json(by_alias=True, exclude_none=True)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

"""The Store protocol: what every backend provides, and the operations of a transaction.

Semantics every backend shares (the conformance suite checks them):

- `create` fails with AlreadyExists if the name is taken. It always assigns a fresh uid,
  sets resource_version to 1, generation to 1 when the caller left it 0, and
  creation_timestamp from the store's clock when the caller left it unset; it returns the
  stored record.
- `update` and `delete` are conditioned on `metadata.resource_version` (for delete, on the
  `resource_version` argument when given): Conflict when it differs, NotFound when the
  record is gone. An update returns the record with resource_version bumped by one. The
  store never touches `generation`: bumping it when spec changes is the writer's job
  (see `api.resources.meta`), as the API server's, not etcd's, is in Kubernetes.
- `list` returns records ordered by name, a page at a time; `continue_token` is opaque.
  `index=("network", "mnist")` restricts to records whose `index_values()["network"]`
  equals "mnist"; only the kind's declared INDEXES may be named.
- `transact` applies up to MAX_TRANSACTION_OPS operations atomically, each with its own
  condition; if any condition fails nothing is written. One record may appear once.
- Every returned record is a fresh object; mutating it never changes the store.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
import builtins
from typing import Generic, Protocol, TypeVar

from api.resources.meta import Resource

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

#: DynamoDB's TransactWriteItems limit; both backends enforce it so code that works on one
#: works on the other.
MAX_TRANSACTION_OPS = 100
DEFAULT_PAGE_SIZE = 500

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Create:
    obj: Resource


@dataclass(frozen=True, slots=True)
class Update:
    """Write `obj`, conditioned on the stored resource_version equal to obj's."""

    obj: Resource


@dataclass(frozen=True, slots=True)
class Delete:
    kind: type[Resource]
    name: str
    resource_version: int | None = None


@dataclass(frozen=True, slots=True)
class Check:
    """Write nothing; fail the transaction unless the record is at this resource_version."""

    kind: type[Resource]
    name: str
    resource_version: int


Op = Create | Update | Delete | Check


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    continue_token: str | None = None


class Store(Protocol):
    async def get(self, kind: type[R], name: str) -> R: ...

    async def list(
        self,
        kind: type[R],
        *,
        index: tuple[str, str] | None = None,
        limit: int = DEFAULT_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> Page[R]: ...

    async def create(self, obj: R) -> R: ...

    async def update(self, obj: R) -> R: ...

    async def delete(
        self, kind: type[R], name: str, *, resource_version: int | None = None
    ) -> None: ...

    async def transact(self, ops: Sequence[Op]) -> builtins.list[Resource | None]:
        """Apply ops atomically; returns, per op, the written record (None for Delete/Check)."""
        ...

    async def close(self) -> None: ...


async def iterate(
    store: Store,
    kind: type[R],
    *,
    index: tuple[str, str] | None = None,
    page_size: int = DEFAULT_PAGE_SIZE,
) -> AsyncIterator[R]:
    """Every record of a kind (optionally by index), following pages."""
    token: str | None = None
    while True:
        page = await store.list(kind, index=index, limit=page_size, continue_token=token)
        for item in page.items:
            yield item
        if page.continue_token is None:
            return
        token = page.continue_token


async def list_all(store: Store, kind: type[R], *, index: tuple[str, str] | None = None) -> list[R]:
    return [item async for item in iterate(store, kind, index=index)]

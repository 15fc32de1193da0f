"""A real store with a hook run right after a listing of one kind completes, so a test can
write while a view's refresh is between its reads, as a concurrent request would; it also
records the gets made through it and the feed's pages, and can hide chosen records' changes
(or only their deletions) from the feed."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Sequence

from api.resources import meta
from store import base


class HookedStore:
    """The real store, with a hook run right after a listing of one kind completes: lets a
    test write while a refresh is between its reads, as a concurrent request would."""

    def __init__(self, inner: base.Store) -> None:
        self.inner = inner
        #: Kind → a hook run once, after the next `list` or `versions` page of that kind.
        self.after_list: dict[str, Callable[[], Awaitable[None]]] = {}
        #: (kind, name) of every get, in order.
        self.gets: builtins.list[tuple[str, str]] = []
        #: (kind, name) whose changes `changes` leaves out: a feed that missed them.
        self.hidden: set[tuple[str, str]] = set()
        #: (kind, name) whose deletions (only) `changes` leaves out.
        self.hidden_deletions: set[tuple[str, str]] = set()
        #: Every page `changes` returned, in order, as the store made it (before `hidden`).
        self.pages: builtins.list[base.ChangePage] = []

    async def get(self, kind: type[base.R], name: str) -> base.R:
        self.gets.append((kind.KIND, name))
        return await self.inner.get(kind, name)

    async def versions(
        self,
        kind: type[meta.Resource],
        *,
        limit: int = base.DEFAULT_VERSIONS_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[base.Version]:
        page = await self.inner.versions(kind, limit=limit, continue_token=continue_token)
        hook = self.after_list.pop(kind.KIND, None)
        if hook is not None:
            await hook()
        return page

    async def list(
        self,
        kind: type[base.R],
        *,
        index: tuple[str, str] | None = None,
        limit: int = base.DEFAULT_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[base.R]:
        page = await self.inner.list(kind, index=index, limit=limit, continue_token=continue_token)
        hook = self.after_list.pop(kind.KIND, None)
        if hook is not None:
            await hook()
        return page

    async def create(self, obj: base.R) -> base.R:
        return await self.inner.create(obj)

    async def update(self, obj: base.R) -> base.R:
        return await self.inner.update(obj)

    async def delete(
        self,
        kind: type[base.R],
        name: str,
        *,
        resource_version: int | None = None,
        uid: str | None = None,
    ) -> None:
        await self.inner.delete(kind, name, resource_version=resource_version, uid=uid)

    async def transact(self, ops: Sequence[base.Op]) -> builtins.list[meta.Resource | None]:
        return await self.inner.transact(ops)

    async def feed_head(self, kinds: Sequence[type[meta.Resource]]) -> str:
        return await self.inner.feed_head(kinds)

    async def changes(
        self, cursor: str, *, limit: int = base.DEFAULT_PAGE_SIZE, held: base.Held | None = None
    ) -> base.ChangePage:
        page = await self.inner.changes(cursor, limit=limit, held=held)
        self.pages.append(page)
        if not self.hidden and not self.hidden_deletions:
            return page
        kept = [
            c
            for c in page.changes
            if (c.kind, c.name) not in self.hidden
            and not (c.deleted and (c.kind, c.name) in self.hidden_deletions)
        ]
        return base.ChangePage(kept, page.cursor, page.more)

    async def close(self) -> None:
        await self.inner.close()

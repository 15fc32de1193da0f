"""Which PNodes no work should go to, as this replica knows it: the view's PNodes judged by
the trust book, whose strikes not yet written count too (a PNode about to be marked Bugged
is avoided before the store says so). Without a book (None: trust is not tracked) only
what the view holds counts."""

from __future__ import annotations

from collections.abc import Iterable

from controller.state import view as view_mod
from controller.trust import book as trust


class Suspects:
    def __init__(self, *, view: view_mod.View, book: trust.TrustBook | None) -> None:
        self._view = view
        self._book = book

    def suspect(self, pnode_name: str) -> bool:
        """The PNode is Bugged, or its strikes this replica holds unwritten make it so: no
        work goes to it (`trust.TrustBook.suspect`)."""
        node = self._view.pnodes.get(pnode_name)
        if node is None:
            return False
        if self._book is None:
            return node.status.trust.bugged
        return self._book.suspect(pnode_name, node.status.trust)

    def holding(self, slots: Iterable[str]) -> list[str]:
        """The PNodes holding `slots` that are `suspect`, sorted."""
        view = self._view
        held = {a.spec.pnode for s in slots if (a := view.allocations.get(s)) is not None}
        return sorted(p for p in held if self.suspect(p))

    def struck(self, pnode_name: str) -> bool:
        """The PNode has a strike in its window, written or not."""
        node = self._view.pnodes.get(pnode_name)
        if node is None:
            return False
        if self._book is None:
            return node.status.trust.strikes > 0
        return self._book.strikes(pnode_name, node.status.trust) > 0

"""Which PNode a bearer credential belongs to, answered from memory.

ResolutionService asks this on every call (agents resolve far more often than anything is
written), so the answer never reads the store and, for a credential already verified,
hashes nothing: `_verified` maps the credential to the PNode and the hash it was verified
against, and a hit costs two dict lookups and a string comparison with the PNode's current
hash in the view. A new Register replaces the PNode's hash, so the old incarnation's
credential stops matching at once.

A credential not seen before costs one SHA-256 and a lookup in `_by_hash`, the view's
PNodes indexed by credential hash (kept current from the view's change notifications).
Only verified credentials are cached, at most `max_cached` of them (the oldest is dropped
first), so a flood of invented credentials costs a hash each and fills nothing.
"""

from __future__ import annotations

from api.resources import meta, pnode
from controller.state import credentials
from controller.state import view as view_mod

#: Verified credentials kept; more than the PNodes a replica serves, so agents never miss.
MAX_CACHED = 100_000


class Identities:
    def __init__(self, view: view_mod.View, *, max_cached: int = MAX_CACHED) -> None:
        self._view = view
        self._max_cached = max_cached
        self._by_hash: dict[str, str] = {}
        self._verified: dict[str, tuple[str, str]] = {}
        for node in view.pnodes.values():
            self._changed(None, node)
        view.subscribe(self._changed)

    def _changed(self, old: meta.Resource | None, new: meta.Resource | None) -> None:
        if isinstance(old, pnode.PNode) and self._by_hash.get(old.spec.credential_hash) == old.name:
            del self._by_hash[old.spec.credential_hash]
        if isinstance(new, pnode.PNode) and new.spec.credential_hash:
            self._by_hash[new.spec.credential_hash] = new.name

    def pnode(self, presented: str | None) -> str | None:
        """The name of the PNode whose current credential `presented` is, or None."""
        if not presented:
            return None
        hit = self._verified.get(presented)
        if hit is not None:
            name, hashed = hit
            node = self._view.pnodes.get(name)
            if node is not None and node.spec.credential_hash == hashed:
                return name
            del self._verified[presented]  # re-registered or gone: verify afresh
        hashed = credentials.digest(presented)
        found = self._by_hash.get(hashed)
        if found is None:
            return None
        node = self._view.pnodes.get(found)
        if node is None or node.spec.credential_hash != hashed:
            return None
        if len(self._verified) >= self._max_cached:
            del self._verified[next(iter(self._verified))]
        self._verified[presented] = (found, hashed)
        return found

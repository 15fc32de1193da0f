"""Who may register a new PNode: join tokens, and the cap on pending PNodes.

Registration is permissionless by default (`joined_by: open`). With join tokens configured
(`serve --join-token-file`, like kubeadm's bootstrap tokens), a Register that is not the
PNode re-registering with its own credential (current, or the one proven at its last
registration: `pnode_registry.proven_credential`) must carry `join_token`: missing →
UNAUTHENTICATED (reason `JoinTokenMissing`), not one of the configured tokens →
PERMISSION_DENIED (`JoinTokenInvalid`); it then joins as `token`. Tokens are compared in
constant time against every configured token.

Pending cap: a new PNode is refused with RESOURCE_EXHAUSTED (`PendingCap`) while
`max_pending_pnodes` PNodes are pending, i.e. registered and never heartbeated
(`reconcilers.pnode.is_pending`); the lifecycle loop deletes those within
`pending_retention` of becoming Lost, so the cap frees itself. Re-registrations are never
refused by it. The count is taken from the view at most once per `RECOUNT_SECONDS` (and
raised by each admission in between), so a flood costs no scan per call.

The per-address rate limit on Register is `controller.services.admission`'s, in front of
this.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Iterable

from api.resources import pnode
from controller import config as config_mod
from controller import errors as faults
from controller.runtime import clock as clock_mod
from controller.state import pnode_registry as registry
from controller.state import view as view_mod
from reconcilers import pnode as lifecycle

RECOUNT_SECONDS = 1.0
MAX_JOIN_TOKEN = 256

Lookup = Callable[[str], Awaitable[pnode.PNode | None]]
OnRefused = Callable[[str, str], None]


class RegistrationGate:
    def __init__(
        self,
        *,
        view: view_mod.View,
        clock: clock_mod.Clock,
        config: config_mod.ControlPlaneConfig,
        join_tokens: Iterable[str] = (),
        on_refused: OnRefused | None = None,
    ) -> None:
        self._view = view
        self._clock = clock
        self._config = config
        self._tokens = [t.encode() for t in join_tokens if t]
        self._on_refused = on_refused or (lambda _method, _reason: None)
        self._pending = 0
        self._counted_at = float("-inf")

    @property
    def join_tokens_required(self) -> bool:
        return bool(self._tokens)

    async def admit(
        self, name: str, *, join_token: str, presented: str | None, lookup: Lookup
    ) -> pnode.JoinedBy:
        """How this Register is admitted, or raise the refusal. `lookup(name)` reads the
        PNode from the store when the view does not know it (only for a caller presenting
        a credential, so anonymous calls never cost a store read)."""
        if presented is not None and name and await self._own_credential(name, presented, lookup):
            return "open"  # re-registration: the registry keeps how it first joined
        joined: pnode.JoinedBy = "open"
        if self._tokens:
            if not join_token:
                self.count_refusal("/dcnr.v1.PNodeService/Register", "JoinTokenMissing")
                raise faults.Unauthenticated(
                    "join_token: this orchestrator admits new PNodes only with a join token "
                    "(dcnr-agent --join-token-file)",
                    reason="JoinTokenMissing",
                )
            if not self._valid(join_token):
                self.count_refusal("/dcnr.v1.PNodeService/Register", "JoinTokenInvalid")
                raise faults.PermissionDenied(
                    "join_token: not a join token of this orchestrator", reason="JoinTokenInvalid"
                )
            joined = "token"
        pending = self.pending_count()
        if pending >= self._config.max_pending_pnodes:
            self.count_refusal("/dcnr.v1.PNodeService/Register", "PendingCap")
            raise faults.ResourceExhausted(
                f"{pending} PNodes registered and never heartbeated (the cap is "
                f"{self._config.max_pending_pnodes}, --max-pending-pnodes); they are removed "
                f"{self._config.pending_retention:g}s after their lease runs out; retry later",
                reason="PendingCap",
            )
        self._pending += 1
        return joined

    def pending_count(self) -> int:
        now = self._clock.monotonic()
        if now - self._counted_at >= RECOUNT_SECONDS:
            duration = self._config.lease_duration
            self._pending = sum(
                1
                for name, node in self._view.pnodes.items()
                if lifecycle.is_pending(node, self._view.lease_expiry(name), duration)
            )
            self._counted_at = now
        return self._pending

    async def _own_credential(self, name: str, presented: str, lookup: Lookup) -> bool:
        node = self._view.pnodes.get(name)
        if node is None or registry.proven_credential(node, presented) is None:
            node = await lookup(name)  # the view may lag a registration on another replica
        return node is not None and registry.proven_credential(node, presented) is not None

    def _valid(self, token: str) -> bool:
        given = token.encode()[:MAX_JOIN_TOKEN]
        found = False
        for candidate in self._tokens:  # no early exit: every token costs the same
            found |= hmac.compare_digest(given, candidate)
        return found

    def count_refusal(self, method: str, reason: str) -> None:
        """Count a refusal in `dcnr_rpc_refused_total` (the service's own limits use it too)."""
        self._on_refused(method, reason)

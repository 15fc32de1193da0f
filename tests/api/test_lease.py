"""The one lease-expiry rule (`api.resources.lease.expiry`), shared by the view's liveness
and the PNode lifecycle loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.resources import lease, meta

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def stored(incarnation: int, renewed_after: float, duration: float = 4.0) -> lease.PNodeLease:
    return lease.PNodeLease(
        metadata=meta.ObjectMeta(name="p1"),
        spec=lease.LeaseSpec(
            incarnation=incarnation,
            renew_time=T0 + timedelta(seconds=renewed_after),
            duration_seconds=duration,
        ),
    )


@pytest.mark.parametrize(
    ("record", "local_after", "expires_after"),
    [
        (None, None, None),  # no lease of any kind
        (stored(2, 0), None, 10.0),
        (stored(2, 0), 3.0, 13.0),  # the local renewal is newer
        (stored(2, 5), 3.0, 15.0),  # the stored one is newer (a late local one)
        (stored(1, 5), None, None),  # another incarnation's lease is fenced
        (stored(1, 5), 3.0, 13.0),  # ... but this incarnation's local renewal counts
        (None, 3.0, 13.0),
    ],
)
def test_the_newer_renewal_of_the_incarnation_counts_for_the_duration(
    record: lease.PNodeLease | None, local_after: float | None, expires_after: float | None
) -> None:
    local = None if local_after is None else T0 + timedelta(seconds=local_after)
    expiry = lease.expiry(record, incarnation=2, local_renewal=local, duration=10.0)
    assert expiry == (None if expires_after is None else T0 + timedelta(seconds=expires_after))


def test_the_duration_is_the_callers_not_the_records() -> None:
    """The view passes its configured duration; the lifecycle loop the record's own."""
    record = stored(1, 0, duration=4.0)
    assert lease.expiry(record, incarnation=1, local_renewal=None, duration=9.0) == T0 + (
        timedelta(seconds=9)
    )
    assert (
        lease.expiry(
            record, incarnation=1, local_renewal=None, duration=record.spec.duration_seconds
        )
        == record.expires_at()
    )

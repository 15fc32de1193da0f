"""benchmarks/feed_follow.py cannot rot: at a tiny size it runs every step, and the view
skips exactly this replica's own writes and re-reads once after Gone. No time is asserted."""

from __future__ import annotations

from pathlib import Path

from benchmarks import feed_follow


async def test_the_steps_run_and_only_own_writes_are_held(tmp_path: Path) -> None:
    result = await feed_follow.measure(50, 400, 100, tmp_path)
    assert result["view_feed_held"] == 200 + 50  # own allocations, own renewals
    assert result["gone_relists"] == 1
    for step in ("allocations", "renewals"):
        for who in ("own", "other"):
            assert set(result[f"{step}_{who}"]) == {"wall_s", "cpu_s"}
        assert set(result[f"{step}_own_over_other"]) <= {"wall_s", "cpu_s"}

"""Store URLs: what each form means, and a clear error naming what is wrong otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest

from store import errors, url


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sqlite:///state.db", url.SqliteURL(Path("state.db"))),
        ("sqlite:///var/dcnr/state.db", url.SqliteURL(Path("var/dcnr/state.db"))),
        ("sqlite:////var/lib/dcnr/state.db", url.SqliteURL(Path("/var/lib/dcnr/state.db"))),
        ("sqlite:///state.db?feed_retention=500", url.SqliteURL(Path("state.db"), 500)),
        ("dynamodb://dcnr?region=eu-west-1", url.DynamoURL("dcnr", "eu-west-1", None)),
        (
            "dynamodb://prod-dcnr?region=us-east-2&endpoint=http://127.0.0.1:5000",
            url.DynamoURL("prod-dcnr", "us-east-2", "http://127.0.0.1:5000"),
        ),
    ],
)
def test_valid_urls(text: str, expected: object) -> None:
    assert url.parse(text) == expected


def test_dynamodb_region_defaults_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "ap-south-1")
    assert url.parse("dynamodb://dcnr") == url.DynamoURL("dcnr", "ap-south-1", None)
    monkeypatch.delenv("AWS_REGION")
    assert url.parse("dynamodb://dcnr") == url.DynamoURL("dcnr", url.DEFAULT_REGION, None)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("postgres://x/y", "unknown scheme 'postgres' (known: sqlite, dynamodb)"),
        ("state.db", "unknown scheme ''"),
        ("sqlite://host/state.db", "sqlite urls have no host"),
        ("sqlite:///", "missing database path"),
        ("sqlite:///dir/", "missing database path"),
        ("dynamodb://?region=x", "table prefix ''"),
        ("dynamodb://bad!prefix", "table prefix 'bad!prefix'"),
        ("dynamodb://dcnr?regoin=x", "unknown parameter 'regoin' (known: region, endpoint)"),
        ("sqlite:///s.db?retention=5", "unknown parameter 'retention' (known: feed_retention)"),
        ("sqlite:///s.db?feed_retention=0", "feed_retention '0' must be a whole number >= 1"),
        ("sqlite:///s.db?feed_retention=lots", "feed_retention 'lots' must be a whole number"),
    ],
)
def test_invalid_urls_name_the_problem(text: str, fragment: str) -> None:
    with pytest.raises(errors.InvalidRequest) as caught:
        url.parse(text)
    assert fragment in str(caught.value)
    assert repr(text) in str(caught.value)


def test_default_url_lives_under_the_state_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", "/tmp/xdg-state")
    assert url.default_url() == "sqlite:////tmp/xdg-state/dcnr/state.db"
    assert url.parse(url.default_url()) == url.SqliteURL(Path("/tmp/xdg-state/dcnr/state.db"))


async def test_serving_a_sqlite_path_in_a_missing_directory_is_refused_not_created(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    text = f"sqlite:///{missing / 'state.db'}"
    with pytest.raises(errors.InvalidRequest, match="does not exist; create it first"):
        await url.open_store(text)
    assert not (tmp_path / "no").exists()
    # init-store creates things, directories included; then serving finds it.
    await url.init_store(text)
    store = await url.open_store(text)
    await store.close()


async def test_the_default_state_directory_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    store = await url.open_store(url.default_url())
    await store.close()
    assert (tmp_path / "state" / "dcnr" / "state.db").is_file()


async def test_feed_retention_in_a_sqlite_url_bounds_the_change_feed(tmp_path: Path) -> None:
    from api.resources import job, meta

    opened = await url.open_store(f"sqlite:///{tmp_path / 'state.db'}?feed_retention=1")
    try:
        cursor = await opened.feed_head([job.Job])
        for name in ("a", "b", "c"):
            await opened.create(
                job.Job(metadata=meta.ObjectMeta(name=name), spec=job.JobSpec(network="n"))
            )
        with pytest.raises(errors.Gone, match="too old"):
            await opened.changes(cursor)
    finally:
        await opened.close()

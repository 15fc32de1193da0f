"""The order test files start in under `make pytest` (tests/conftest.py): the slowest files
first, the rest as pytest collects them, and no entry of the list pointing nowhere."""

from __future__ import annotations

from pathlib import Path

from tests import conftest

REPO = Path(__file__).resolve().parents[1]


def test_every_listed_file_exists_once() -> None:
    listed = conftest.SLOWEST_FIRST
    assert len(set(listed)) == len(listed), "a file is listed twice"
    missing = [path for path in listed if not (REPO / path).is_file()]
    assert not missing, f"SLOWEST_FIRST names files that are not there: {missing}"


def test_listed_files_go_first_in_list_order_and_the_rest_keep_theirs() -> None:
    first, second = conftest.SLOWEST_FIRST[:2]
    collected = [
        "tests/api/test_names.py::test_a",
        f"{second}::test_b",
        "tests/store/test_url.py::test_c[x]",
        f"{first}::Test::test_d",
        "tests/api/test_names.py::test_e",
        f"{second}::test_f",
    ]
    assert sorted(collected, key=conftest.run_order) == [
        f"{first}::Test::test_d",
        f"{second}::test_b",
        f"{second}::test_f",
        "tests/api/test_names.py::test_a",
        "tests/store/test_url.py::test_c[x]",
        "tests/api/test_names.py::test_e",
    ]

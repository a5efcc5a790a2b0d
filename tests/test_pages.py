"""``list`` a page at a time (``limit``, ``after``): the pages, one after the other, are the list."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from statekit import EpisodeNotFoundError, InvalidIdError, Store, ValidationError
from statekit.cli import main


@pytest.fixture
def store(tmp_path: Path) -> Store:
    store = Store.init(tmp_path / "s")
    for i in range(23):
        store.create("big", f"ep{i:03d}", title=f"episode {i}")
        if i % 3 == 0:
            store.advance("big", f"ep{i:03d}", "downloading")
    for i in range(5):
        store.create("aaa", f"x{i}")
        store.create("zzz", f"y{i}")
    return store


def keys(episodes: list) -> list[str]:  # type: ignore[type-arg]
    return [e.key for e in episodes]


def pages(store: Store, size: int, **where: str) -> list[list[str]]:
    """Every page of ``size``, each started after the last episode of the one before."""
    out: list[list[str]] = []
    after = None
    while True:
        page = keys(store.list(**where, limit=size, after=after))  # type: ignore[arg-type]
        if not page:
            return out
        assert len(page) <= size
        out.append(page)
        after = page[-1]


@pytest.mark.parametrize("size", [1, 4, 7, 23, 100])
def test_the_pages_one_after_the_other_are_the_list(store: Store, size: int) -> None:
    whole = keys(store.list("big"))
    assert len(whole) == 23
    found = pages(store, size, show="big")
    assert [k for page in found for k in page] == whole
    assert all(len(page) == size for page in found[:-1])
    everything = keys(store.list())  # every show, in show order
    assert [k for page in pages(store, size) for k in page] == everything
    assert everything[:5] == [f"aaa/x{i}" for i in range(5)] and everything[-5:] == [f"zzz/y{i}" for i in range(5)]
    at_stage = keys(store.list(stage="downloading"))
    assert len(at_stage) == 8
    assert [k for page in pages(store, size, stage="downloading") for k in page] == at_stage


def test_pages_follow_the_hand_set_order_then_creation(store: Store) -> None:
    show_file = Path(store.root, "shows/big/show.yaml")
    show_file.write_text(show_file.read_text().replace("order: []", "order: [ep020, ep003]"))
    store.sync()
    whole = keys(store.list("big"))
    assert whole[:3] == ["big/ep020", "big/ep003", "big/ep000"]
    assert [k for page in pages(store, 2, show="big") for k in page] == whole


def test_creates_and_deletes_between_pages_leave_no_gap_and_no_repeat(store: Store) -> None:
    first = keys(store.list("big", limit=10))
    store.delete("big", "ep005")  # on the page already read
    store.delete("big", "ep012")  # on a page to come
    store.create("big", "new1")  # created last: at the end
    rest = [k for page in pages_after(store, first[-1], 4) for k in page]
    assert "big/ep012" not in rest and "big/ep005" not in rest
    assert rest == [f"big/ep{i:03d}" for i in range(10, 23) if i != 12] + ["big/new1"]
    assert not set(first) & set(rest)


def pages_after(store: Store, after: str, size: int) -> list[list[str]]:
    out = []
    while page := keys(store.list("big", limit=size, after=after)):
        out.append(page)
        after = page[-1]
    return out


@pytest.mark.parametrize("limit", [0, -1, True, "5", 2.0])
def test_a_limit_that_is_not_a_positive_whole_number_is_refused(store: Store, limit: object) -> None:
    with pytest.raises(ValidationError, match="limit must be a positive integer"):
        store.list("big", limit=limit)  # type: ignore[arg-type]


@pytest.mark.parametrize("after", ["big", "big/ep001/x", "", "../big/ep001", "big/", "big/Ep 1", 5, ("big", "ep001")])
def test_an_after_that_names_no_episode_is_refused(store: Store, after: object) -> None:
    with pytest.raises((ValidationError, InvalidIdError)):
        store.list("big", after=after)  # type: ignore[arg-type]


def test_an_after_of_another_show_or_gone_is_refused_with_what_to_do(store: Store) -> None:
    with pytest.raises(ValidationError, match="another show") as other:
        store.list("big", after="aaa/x1")
    assert "page before" in (other.value.hint or "")
    with pytest.raises(EpisodeNotFoundError, match="not in the index") as gone:
        store.list("big", after="big/nope")
    assert "without 'after'" in (gone.value.hint or "")
    assert keys(store.list("big", after="big/ep021")) == ["big/ep022"]  # without a limit: the rest
    assert store.list("big", after="big/ep022") == []


def test_the_cli_shows_a_page_and_the_command_for_the_next(store: Store) -> None:
    runner = CliRunner()
    root = ["--root", str(store.root)]
    first = runner.invoke(main, [*root, "list", "--show", "big", "--limit", "10"])
    assert first.exit_code == 0, first.output
    assert "ep009" in first.stdout and "ep010" not in first.stdout
    assert "statekit list --show big --limit 10 --after big/ep009" in first.stderr
    second = runner.invoke(main, [*root, "list", "--show", "big", "--limit", "10", "--after", "big/ep009"])
    assert "ep010" in second.stdout and "ep019" in second.stdout and "ep020" not in second.stdout
    last = runner.invoke(main, [*root, "list", "--show", "big", "--limit", "10", "--after", "big/ep019"])
    assert "ep022" in last.stdout and "more follow" not in last.stderr  # the last page says no next
    data = runner.invoke(main, [*root, "list", "--show", "big", "--limit", "3", "--after", "big/ep019", "--json"])
    assert [e["episode_id"] for e in json.loads(data.stdout)] == ["ep020", "ep021", "ep022"]
    assert data.stderr == ""
    for bad in (["--limit", "0"], ["--after", "big"], ["--after", "big/nope"], ["--after", "aaa/x1"]):
        result = runner.invoke(main, [*root, "list", "--show", "big", *bad])
        assert result.exit_code == 2, (bad, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.output, (bad, result.stderr)

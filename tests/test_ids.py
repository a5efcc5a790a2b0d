import pytest

from statekit.errors import InvalidIdError
from statekit.ids import check_id


@pytest.mark.parametrize("good", ["ep001", "a", "0", "hy0-2004-04-14", "a.b_c-d", "x" * 128])
def test_valid_ids_pass(good: str) -> None:
    assert check_id(good) == good


@pytest.mark.parametrize(
    "bad",
    ["", "../x", "/etc", "..", ".", ".hidden", "-x", "_x", "A", "ep 1", "ep/1", "ep\\1", "x" * 129,
     "ep001\n", "\nep001", "ép", "ep\x00", "con", "aux.v2", "lpt1", "nul"],
)
def test_invalid_ids_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(InvalidIdError) as info:
        check_id(bad, "episode id")
    assert "episode id" in str(info.value)
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize("bad", [None, 5, b"ep", ["ep"]])
def test_non_strings_are_refused(bad: object) -> None:
    with pytest.raises(InvalidIdError, match="expected a string"):
        check_id(bad)

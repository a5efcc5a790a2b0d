"""The block YAML writer (``statekit.blockyaml``) writes exactly PyYAML's bytes, or declines."""

from __future__ import annotations

import os
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from statekit import Store
from statekit.blockyaml import BlockYaml
from statekit.codecs import CODECS, _Dumper


def pyyaml(data: dict[str, Any], encoding: str | None = "utf-8") -> Any:
    """What PyYAML writes (``YamlCodec.dump_plain`` without the block writer)."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096,
                     default_flow_style=False, encoding=encoding)


BLOCK = BlockYaml(lambda obj: pyyaml(obj, encoding=None))
"""As ``codecs`` has it (``blockyaml.block_dump`` with its dumper)."""


texts = st.one_of(
    st.text(max_size=12),
    st.text(alphabet="ab :#-'\"!&*?|>%@`,[]{}~\t\n.0123456789eE+_\\é😀\x85\u2028\ufeff\x07", max_size=10),
    st.sampled_from(["yes", "No", "TRUE", "off", "null", "~", "", "-", "1.5", "0x1f", "1_000", "12:30", ".inf",
                     "2026-12-06T15:53:58.770011Z", "2026-12-06", "https://archive.org/x", "a: b", "<<", "="]),
    st.text(min_size=990, max_size=1100, alphabet="ab "),
)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**70), max_value=2**70),
                    st.floats(), texts)
documents = st.dictionaries(texts, st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12), max_size=8)


# 150 examples in the default suite (each run draws new ones); STATEKIT_STRESS=1 runs 1,000
EXAMPLES = os.environ.get("STATEKIT_BLOCKYAML_EXAMPLES", "1000" if os.environ.get("STATEKIT_STRESS") else "150")


# no_cover: coverage does not trace this comparison (hundreds of generated documents, 2-3x slower
# traced); what it runs is traced in the file's other tests and on every write
@pytest.mark.no_cover
@settings(max_examples=int(EXAMPLES), deadline=None)
@given(documents)
def test_it_writes_pyyamls_bytes_or_declines(data: dict[str, Any]) -> None:
    ours = BLOCK.dump(data)
    assert ours is None or ours == pyyaml(data)


def test_an_episode_is_written_without_pyyaml_and_reads_back(tmp_path: Any) -> None:
    store = Store.init(tmp_path / "s")
    store.create("s", "e", title="Épisode: \"one\" # first", metadata={"source": "https://archive.org/x", "n": 1.5,
                                                                        "tags": ["a", "yes", 3], "nested": {"k": []}})
    episode = store.advance("s", "e", "downloading", cost=0.25, message="it's going")
    data = episode.model_dump(mode="json")
    ours = BLOCK.dump(data)
    assert ours is not None and ours == pyyaml(data)
    assert CODECS[".yaml"].load(ours, "x") == data
    assert CODECS[".yaml"].dump_plain(data) == ours  # what the write path writes


def test_it_declines_what_pyyaml_writes_over_several_lines_or_spells_its_own_way() -> None:
    block = BlockYaml(lambda obj: yaml.safe_dump(obj, sort_keys=False, allow_unicode=True, width=4096,
                                                 default_flow_style=False))
    for data in ({"k": "two\nlines"}, {"k": float("nan")}, {"k": float("inf")}, {"k": ("a", "tuple")},
                 {"k": "x" * 1001}, {1: "a key that is not text"}):
        assert block.dump(data) is None, data
    assert block.dump({"k": "v", "l": [{"a": 1}, [], {}]}) == b"k: v\nl:\n- a: 1\n- []\n- {}\n"


def test_a_remembered_float_is_written_as_pyyaml_writes_it_the_next_times() -> None:
    """Floats' texts are remembered (not 0.0: -0.0 is the same key and written otherwise); a
    timestamp is checked before the plain-text rule. Each text is PyYAML's, the first time and after."""
    block = BlockYaml(lambda obj: pyyaml(obj, encoding=None))
    for _ in range(2):
        for value in (0.0, -0.0, 1.0, -1.0, 0.001, 1e16, 1.5e-7, 2.5, 1e300):
            data = {"cost": value, "costs": {"a": value, "b": [value, value]}, "at": "2026-12-06T15:53:58.770011Z"}
            assert block.dump(data) == pyyaml(data), value
    assert 0.0 not in block._floats and 1e16 in block._floats

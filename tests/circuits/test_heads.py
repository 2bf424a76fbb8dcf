from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lens.errors import SelectionError
from lens.heads import HeadRef, HeadSpecError, parse_head_spec, parse_layer_list


@dataclass(frozen=True)
class Facts:
    n_layers: int = 30
    n_heads: int = 9
    name: str = "SmolLM2-135M"


F = Facts()


def test_parses_items_ranges_and_wildcards():
    assert parse_head_spec("L3H4", F) == [HeadRef(3, 4)]
    assert parse_head_spec("L5H*", F) == [HeadRef(5, h) for h in range(9)]
    assert parse_head_spec(" l2-3h0-1 , L2H0 ", F) == [HeadRef(2, 0), HeadRef(2, 1), HeadRef(3, 0), HeadRef(3, 1)]
    assert len(parse_head_spec("L*H0", F)) == 30
    assert len(parse_head_spec("all", F)) == 270
    assert str(HeadRef(3, 4)) == "L3H4"


@pytest.mark.parametrize("text, words", [
    ("L3H9", "head 9 in 'L3H9' is out of range: SmolLM2-135M has heads 0-8"),
    ("L30H0", "layer 30 in 'L30H0' is out of range: SmolLM2-135M has layers 0-29"),
    ("L3", "is not like L3H4"),
    ("L5-2H0", "is empty: write it low-high"),
    ("", "`heads` is empty"),
    (",", "names no heads"),
    ("L99999999999H0", "out of range"),
])
def test_errors_name_the_problem(text, words):
    with pytest.raises(HeadSpecError, match=words.replace("(", r"\(").replace("*", r"\*")):
        parse_head_spec(text, F)


def test_error_is_a_selection_error():
    assert issubclass(HeadSpecError, SelectionError)


def test_layer_list():
    assert parse_layer_list("3,5-6", F) == [3, 5, 6]
    with pytest.raises(HeadSpecError, match="layer 30 in '30' is out of range"):
        parse_layer_list("30", F)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=30),
                 st.text(alphabet="LlHh0123456789*-, ", max_size=25)))
def test_fuzz_only_project_errors_or_valid_heads(text):
    try:
        heads = parse_head_spec(text, F)
    except HeadSpecError:
        return
    assert heads and heads == sorted(set(heads))
    assert all(0 <= h.layer < 30 and 0 <= h.head < 9 for h in heads)

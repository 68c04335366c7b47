"""A1111 attention weights and AND composition: `parse_attention` and `split_and`.

Expected values are what A1111's `parse_prompt_attention` / `get_multicond_prompt_list`
(modules/prompt_parser.py) return for the same input; they were produced by running A1111's
functions, and the doctests are copied from that file.
"""

from __future__ import annotations

import math
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfumato.errors import UserError
from sfumato.prompts.parser import parse_attention, split_and

# A1111's doctests of parse_prompt_attention.
DOCTESTS = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
]

ATTENTION_CASES = [
    # empty prompt
    ("", [["", 1.0]]),
    # empty parentheses
    ("()", [["", 1.0]]),
    # weight on nothing
    ("(:1.5)", [["", 1.0]]),
    # negative weight
    ("(a:-1)", [["a", -1.0]]),
    # exponent is no attention weight: text
    ("(a:1e2)", [["a:1e2", 1.1]]),
    # zero weight
    ("(a:0)", [["a", 0.0]]),
    # escaped backslash
    ("\\\\", [["\\", 1.0]]),
    # lone backslash drops out
    ("\\a", [["a", 1.0]]),
    # unmatched ')' is text
    ("a)", [["a)", 1.0]]),
    # unmatched ']' is text
    ("a]", [["a]", 1.0]]),
    # unclosed '[' applies to the end
    ("[a", [["a", 0.9090909090909091]]),
    # one unclosed '('
    ("((a)", [["a", 1.2100000000000002]]),
    # BREAK inside brackets is multiplied too
    ("(a BREAK b)", [["a", 1.1], ["BREAK", -1.1], ["b", 1.1]]),
    # BREAK and its blanks
    ("a BREAK b", [["a", 1.0], ["BREAK", -1], ["b", 1.0]]),
    # BREAK inside a word is text
    ("aBREAK b", [["aBREAK b", 1.0]]),
    # BREAK alone
    ("BREAK", [["", 1.0], ["BREAK", -1], ["", 1.0]]),
    # two BREAKs
    ("a  BREAK  BREAK b", [["a", 1.0], ["BREAK", -1], ["", 1.0], ["BREAK", -1], ["b", 1.0]]),
    # blanks around the weight
    ("(a: 1.5 )", [["a", 1.5]]),
    # unclosed weight: ':1.5' is text
    ("(a:1.5", [["a:1.5", 1.1]]),
    # ':w)' with no '(' open is text
    ("[a:1.5)", [["a:1.5)", 0.9090909090909091]]),
    # equal weights merge
    ("(a:1.5)(b:1.5)", [["ab", 1.5]]),
    # up then down
    ("(a)[b]", [["a", 1.1], ["b", 0.9090909090909091]]),
    # nested round and square
    ("(a [b] c)", [["a ", 1.1], ["b", 1.0], [" c", 1.1]]),
    # crossing brackets
    ("([a)]", [["a", 1.0]]),
    # 0.0 and -0.0 compare equal and merge
    ("(BREAK:0)", [["BREAK", 0.0]]),
    # colon is text
    ("a:b", [["a:b", 1.0]]),
    # signed weight
    ("(a:+1.5)", [["a", 1.5]]),
    # powers of 1.1 in A1111's order
    ("(((a)))", [["a", 1.3310000000000004]]),
    # powers of 1/1.1
    ("[[a]]", [["a", 0.8264462809917354]]),
    # escaped parentheses
    ("\\(a\\)", [["(a)", 1.0]]),
]
AND_CASES = [
    # plain split
    ("a AND b", [("a", 1.0), (" b", 1.0)]),
    # weight with a blank before the colon
    ("a cat :1.2 AND a dog", [("a cat", 1.2), (" a dog", 1.0)]),
    # AND must be a whole word
    ("a ANDb", [("a ANDb", 1.0)]),
    # word boundary, no blanks needed
    ("a,AND,b", [("a,", 1.0), (",b", 1.0)]),
    # trailing AND gives an empty part
    ("a AND", [("a", 1.0), ("", 1.0)]),
    # colon without a number stays
    ("a:", [("a:", 1.0)]),
    # blanks around the weight
    ("a : 1.5 ", [("a", 1.5)]),
    # two dots: no weight
    ("a:1.2.3", [("a:1.2.3", 1.0)]),
    # negative weight
    ("a:-0.5", [("a", -0.5)]),
    # leading blanks kept, trailing cut
    (" a AND  b  ", [(" a", 1.0), ("  b", 1.0)]),
    # leading dot
    ("a:.5", [("a", 0.5)]),
    # trailing dot
    ("a:5.", [("a", 5.0)]),
    # ANDROID is no separator
    ("ANDROID AND x", [("ANDROID", 1.0), (" x", 1.0)]),
    # exponent is no weight
    ("a:1e2", [("a:1e2", 1.0)]),
    # only the last colon
    ("a:1:2", [("a:1", 2.0)]),
]


def same(got: list, expected: list) -> bool:
    """Equal texts and bit-equal weights, sign of zero included."""
    return len(got) == len(expected) and all(
        g[0] == e[0] and g[1] == e[1] and math.copysign(1, g[1]) == math.copysign(1, e[1])
        for g, e in zip(got, expected, strict=True)
    )


@pytest.mark.parametrize(("text", "expected"), DOCTESTS + ATTENTION_CASES)
def test_attention_matches_a1111(text: str, expected: list) -> None:
    assert same(parse_attention(text), expected)


@pytest.mark.parametrize(
    "text",
    [
        "(a:1.2.3)",  # A1111 crashes in float(): we say what is wrong
        "(a:.)",  # a dot alone is read as a weight by A1111's regex
        "(a:1" + "0" * 400 + ")",  # weight overflows to inf
        "(" * 10_000 + "a" + ")" * 10_000,  # 1.1 ** 10000 overflows
    ],
)
def test_unusable_weights_are_user_errors(text: str) -> None:
    with pytest.raises(UserError):
        parse_attention(text)


def test_results_are_lists_like_a1111() -> None:
    # A1111 returns lists of [text, weight] lists; so do we, so results compare equal.
    assert parse_attention("(a)") == [["a", 1.1]]


@pytest.mark.parametrize(("prompt", "expected"), AND_CASES)
def test_split_and_matches_a1111(prompt: str, expected: list) -> None:
    assert split_and(prompt) == expected


def test_and_weight_overflow_is_a_user_error() -> None:
    with pytest.raises(UserError):
        split_and("a:" + "9" * 400)


def test_long_prompts_are_fast() -> None:
    # Quadratic traps of A1111's regexes: long blank runs around BREAK and before a weight.
    for text in ["a" + " " * 100_000 + "BREAK" + " " * 100_000 + ":1", "(x:1.1) " * 12_500, "[" * 100_000]:
        parse_attention(text)
        split_and(text)


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_attention_never_raises_other_errors(text: str) -> None:
    try:
        result = parse_attention(text)
    except UserError:
        return
    assert result
    for piece, weight in result:
        assert isinstance(piece, str)
        assert math.isfinite(weight)


@given(st.text(alphabet="ab ()[]\\,BREAK", max_size=60))
@settings(max_examples=300, deadline=None)
def test_weights_without_explicit_numbers_are_positive(text: str) -> None:
    # Only brackets: every weight is a power of 1.1 (positive), or a BREAK marker.
    result = parse_attention(text)
    for piece, weight in result:
        assert weight > 0 or (piece == "BREAK" and weight < 0)


@given(st.text(alphabet=string.ascii_letters + string.digits + " ,.-_'\"!?", max_size=200))
@settings(max_examples=200, deadline=None)
def test_plain_text_parses_to_itself(text: str) -> None:
    # No brackets, colons, backslashes or BREAK: one span of weight 1.
    if "BREAK" in text or "AND" in text:
        return
    assert parse_attention(text) == [[text, 1.0]]
    assert split_and(text) == [(text.rstrip(), 1.0)]


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_split_and_never_raises_other_errors(text: str) -> None:
    try:
        parts = split_and(text)
    except UserError:
        return
    assert parts and all(math.isfinite(w) for _, w in parts)

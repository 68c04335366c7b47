"""Prompt editing and alternation: `prompt_schedule` against A1111.

Expected values are what A1111's `get_learned_conditioning_prompt_schedules`
(modules/prompt_parser.py, lark 1.1.2) returns for the same input; they were produced by running
it. The doctests are copied from that file.
"""

from __future__ import annotations

import contextlib
import itertools
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfumato.errors import UserError
from sfumato.prompts.extra_networks import extract_extra_networks
from sfumato.prompts.parser import parse_attention, split_and
from sfumato.prompts.schedule import prompt_schedule

ALTERNATING = [[i, "a" if i % 2 else "(b:1.1)"] for i in range(1, 11)]

# A1111's doctests (steps 10; the last two with hires_steps 10).
DOCTESTS = [
    ("test", None, [[10, "test"]]),
    ("a [b:3]", None, [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", None, [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", None, [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", None, [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", None, [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", None, [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", None, [[10, "a [unbalanced"]]),
    ("a [b:.5] c", None, [[5, "a  c"], [10, "a b c"]]),
    # The doctest says [[5, 'a  c'], [10, 'a {b|d{ c']] ("not handling this right now"); it is
    # stale since '|' left plain text: A1111 itself now fails to parse it and keeps it whole.
    ("a [{b|d{:.5] c", None, [[10, "a [{b|d{:.5] c"]]),
    ("((a][:b:c [d:3]", None, [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", None, ALTERNATING),
    ("[fe|]male", None, [[i, "female" if i % 2 else "male"] for i in range(1, 11)]),
    ("[fe|||]male", None, [[i, "female" if i % 4 == 1 else "male"] for i in range(1, 11)]),
    ("a [b:.5] c", 10, [[10, "a b c"]]),
    ("a [b:1.5] c", 10, [[5, "a  c"], [10, "a b c"]]),
]

SCHEDULE_CASES = [
    # when 0: never 'from'; no step 0 entry
    ("[a:b:0]", 10, None, False, [[10, "b"]]),
    # integer 1 is step 1
    ("[a:b:1]", 10, None, False, [[1, "a"], [10, "b"]]),
    # 1.0 has a dot: a fraction, all steps
    ("[a:b:1.0]", 10, None, False, [[10, "a"]]),
    # step beyond steps is clamped to steps
    ("[a:b:100]", 10, None, False, [[10, "a"]]),
    # empty 'from' part
    ("[:b:3]", 10, None, False, [[3, ""], [10, "b"]]),
    # empty 'to' part
    ("[a::3]", 10, None, False, [[3, "a"], [10, ""]]),
    # alternation with an empty option
    ("[a|]", 4, None, False, [[1, "a"], [2, ""], [3, "a"], [4, ""]]),
    # negative step: always 'to'
    ("[a:b:-2]", 10, None, False, [[10, "b"]]),
    # exponent without a dot counts as an integer step
    ("[a:b:1e1]", 10, None, False, [[10, "a"]]),
    # exponent with a dot is a fraction
    ("[a:b:2.5e-1]", 10, None, False, [[2, "a"], [10, "b"]]),
    # blanks around the number
    ("[a:b: 3 ]", 10, None, False, [[3, "a"], [10, "b"]]),
    # non-number 'when': plain text
    ("[a:b:c]", 10, None, False, [[10, "[a:b:c]"]]),
    # two parts, no number: plain text
    ("[a:b]", 10, None, False, [[10, "[a:b]"]]),
    # three colons: plain text
    ("[a:b:c:3]", 10, None, False, [[10, "[a:b:c:3]"]]),
    # top-level '|' fails the grammar: whole prompt plain
    ("a | b [c:d:3]", 10, None, False, [[10, "a | b [c:d:3]"]]),
    # trailing backslash fails the grammar
    ("a [c:d:3] \\", 10, None, False, [[10, "a [c:d:3] \\"]]),
    # escaped brackets are text, backslashes kept
    ("\\[a:b:3\\]", 10, None, False, [[10, "\\[a:b:3\\]"]]),
    # alternation inside an edit's 'from'
    ("[[a|b]:c:3]", 6, None, False, [[1, "a"], [2, "b"], [3, "a"], [4, "c"], [5, "c"], [6, "c"]]),
    # alternation inside an edit's 'to'
    ("[a:[b|c]:3]", 6, None, False, [[1, "a"], [2, "a"], [3, "a"], [4, "c"], [5, "b"], [6, "c"]]),
    # edit inside an emphasis weight
    ("(a:[b:c:3])", 10, None, False, [[3, "(a:b)"], [10, "(a:c)"]]),
    # a number as 'from' text
    ("[a:3:4]", 10, None, False, [[4, "a"], [10, "3"]]),
    # nested edits; repeated texts are kept
    ("[[a:3]:4]", 10, None, False, [[3, ""], [4, ""], [10, "a"]]),
    # ':' and '|' mixed: grammar fails
    ("[a|b:3]", 10, None, False, [[10, "[a|b:3]"]]),
    # hires: integer counts on from the first pass
    ("[a:b:15]", 10, 10, False, [[5, "a"], [10, "b"]]),
    # hires: fraction <= 1 belongs to the first pass
    ("[a:b:0.5]", 10, 10, False, [[10, "b"]]),
    # hires: step inside the first pass
    ("[a:b:5]", 10, 10, False, [[10, "b"]]),
    # old scheduling: fraction of the hires steps
    ("[a:b:0.5]", 10, 20, True, [[5, "a"], [10, "b"]]),
    # old scheduling: 1.5 is a step, truncated
    ("[a:b:1.5]", 10, None, True, [[1, "a"], [10, "b"]]),
    # old scheduling: integer step in the hires pass
    ("[a:b:3]", 10, 20, True, [[3, "a"], [10, "b"]]),
    # signed number
    ("[a:b:+3]", 10, None, False, [[3, "a"], [10, "b"]]),
    # trailing dot is a fraction
    ("[a:b:1.]", 10, None, False, [[10, "a"]]),
    # '|' inside parentheses fails the grammar
    ("(a|b) [c:d:3]", 10, None, False, [[10, "(a|b) [c:d:3]"]]),
    # unclosed bracket before an edit stays text
    ("[a [b:3]", 10, None, False, [[3, "[a "], [10, "[a b"]]),
    # step beyond one step
    ("[a:b:3]", 1, None, False, [[1, "a"]]),
    # three-way alternation cycles
    ("[a|b|c]", 4, None, False, [[1, "a"], [2, "b"], [3, "c"], [4, "a"]]),
    # emphasis inside alternation is kept as text
    ("[(a:1.2)|[b]]", 3, None, False, [[1, "(a:1.2)"], [2, "[b]"], [3, "(a:1.2)"]]),
    # newline is plain text
    ("x\n[a:b:3]", 10, None, False, [[3, "x\na"], [10, "x\nb"]]),
    # backslash before a newline fails the grammar
    ("x\\\n[a:b:3]", 10, None, False, [[10, "x\\\n[a:b:3]"]]),
    # non-ASCII digit is no number
    ("[a:b:٣]", 10, None, False, [[10, "[a:b:٣]"]]),
    # fraction 0
    ("[a:b:0.0]", 10, None, False, [[10, "b"]]),
    # emphasis text is passed through
    ("(a:1.1)[b:c:2]", 10, None, False, [[2, "(a:1.1)b"], [10, "(a:1.1)c"]]),
    # extra opening bracket before an edit
    ("[[a:b:3]", 10, None, False, [[3, "[a"], [10, "[b"]]),
    # stray brackets and colons at top level
    ("((a][:b:c [d:3]", 10, None, False, [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
]


@pytest.mark.parametrize(("prompt", "hires", "expected"), DOCTESTS)
def test_a1111_doctests(prompt: str, hires: int | None, expected: list) -> None:
    assert prompt_schedule(prompt, 10, hires) == expected


@pytest.mark.parametrize(("prompt", "steps", "hires", "old", "expected"), SCHEDULE_CASES)
def test_matches_a1111(prompt: str, steps: int, hires: int | None, old: bool, expected: list) -> None:
    assert prompt_schedule(prompt, steps, hires, old) == expected


def test_ambiguous_structure_next_to_stray_is_read_as_structure() -> None:
    # A1111's Earley parse of "[a:3]:" depends on the hash seed (either reading comes out);
    # we always take the edit, A1111's answer wherever it is stable (compare "[a:3] :").
    assert prompt_schedule("[a:3]:", 10) == [[3, ":"], [10, "a:"]]
    assert prompt_schedule("[a:3] :", 10) == [[3, " :"], [10, "a :"]]


@pytest.mark.parametrize(
    ("prompt", "steps", "hires"),
    [
        ("[a:b:1e400]", 10, None),  # A1111 crashes in int(inf)
        ("[a:b:1.0e308]", 10, None),  # fraction times steps overflows
        ("a", 0, None),  # no steps
        ("a", 10, 0),  # no hires steps
    ],
)
def test_out_of_range_is_a_user_error(prompt: str, steps: int, hires: int | None) -> None:
    with pytest.raises(UserError):
        prompt_schedule(prompt, steps, hires)


def test_deep_nesting_and_long_prompts() -> None:
    # No recursion: 10 000 levels of every structure; 100 000 characters stay fast.
    depth = 10_000
    assert prompt_schedule("(" * depth + "a" + ")" * depth, 20) == [[20, "(" * depth + "a" + ")" * depth]]
    nested = prompt_schedule("[a:" * depth + "b" + ":5]" * depth, 20)
    assert nested == [[5, "a"], [20, "b"]]
    alternating = prompt_schedule("[" * depth + "a|b" + "]" * depth, 4)
    assert [text for _, text in alternating] == ["[" * (depth - 1) + c + "]" * (depth - 1) for c in "abab"]
    assert prompt_schedule("[" * 100_000, 20) == [[20, "[" * 100_000]]
    long = "[x:y:3] (w:1.2) [p|q] " * 4_500
    assert len(prompt_schedule(long, 30)) == 30
    assert prompt_schedule("[a:" + "1" * 50_000 + "x]", 20)[0][0] == 20


@given(st.text(), st.integers(1, 40), st.none() | st.integers(1, 40), st.booleans())
@settings(max_examples=300, deadline=None)
def test_schedule_properties(prompt: str, steps: int, hires: int | None, old: bool) -> None:
    try:
        schedule = prompt_schedule(prompt, steps, hires, old)
    except UserError:
        return
    ends = [end for end, _ in schedule]
    total = steps if hires is None or old else hires
    assert ends[-1] == total
    assert all(a < b for a, b in itertools.pairwise(ends))
    assert all(end >= 1 for end in ends)


@given(
    st.text(alphabet=string.ascii_letters + string.digits + " ,.-_'!?\n", max_size=200), st.integers(1, 50)
)
@settings(max_examples=200, deadline=None)
def test_plain_text_is_its_own_schedule(prompt: str, steps: int) -> None:
    assert prompt_schedule(prompt, steps) == [[steps, prompt]]


PROMPT_PIECES = st.sampled_from(
    [
        "a",
        " ",
        "(",
        ")",
        "[",
        "]",
        ":",
        "|",
        "\\",
        "BREAK",
        " AND ",
        "<lora:x:0.5>",
        "3",
        ".5",
        "-",
        "\n",
        "\x00",
        "\U0010ffff",
    ]
)


@given(st.lists(PROMPT_PIECES, max_size=40).map("".join) | st.text(max_size=80), st.integers(1, 30))
@settings(max_examples=3000, deadline=None)
def test_fuzz_every_entry_point(prompt: str, steps: int) -> None:
    # A bounded fuzz run of all entry points: a result or a UserError, nothing else.
    for call in (
        lambda: prompt_schedule(prompt, steps),
        lambda: prompt_schedule(prompt, steps, steps, False),
        lambda: prompt_schedule(prompt, steps, steps, True),
        lambda: parse_attention(prompt),
        lambda: split_and(prompt),
        lambda: extract_extra_networks(prompt),
    ):
        with contextlib.suppress(UserError):
            call()

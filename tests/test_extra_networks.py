"""`<kind:args>` tags: `extract_extra_networks` against A1111's `extra_networks.parse_prompt`.

Removed text and items follow A1111's regex `<(\\w+):([^>]+)>`; multipliers follow the Lora
extension's reading of positional and named items (te, unet, dyn).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfumato.errors import UserError
from sfumato.prompts.extra_networks import ExtraNetworkCall, extract_extra_networks


@pytest.mark.parametrize(
    ("prompt", "text", "tags"),
    [
        # tag removed, text around it untouched
        ("a <lora:x:0.8>, b", "a , b", [("lora", ("x", "0.8"))]),
        # any kind is a tag, in order of appearance
        ("<hypernet:h:1.1><lyco:l:1:0.5>", "", [("hypernet", ("h", "1.1")), ("lyco", ("l", "1", "0.5"))]),
        # empty arguments: no tag
        ("<lora:>", "<lora:>", []),
        # the kind is \w+: a blank breaks it
        ("<lo ra:x>", "<lo ra:x>", []),
        # unclosed tag stays
        ("<lora:x:1", "<lora:x:1", []),
        # arguments run to the first '>', taking a '<' with them
        ("<lora:a<b:1>c>", "c>", [("lora", ("a<b", "1"))]),
        # Unicode word characters in the kind
        ("<lóra:x>", "", [("lóra", ("x",))]),
        # a tag split over a newline is still one
        ("<lora:x\n:1>", "", [("lora", ("x\n", "1"))]),
    ],
)
def test_tags_match_a1111(prompt: str, text: str, tags: list) -> None:
    left, calls = extract_extra_networks(prompt)
    assert left == text
    assert [(c.kind, c.items) for c in calls] == tags


def call(tag: str) -> ExtraNetworkCall:
    (found,) = extract_extra_networks(tag)[1]
    return found


@pytest.mark.parametrize(
    ("tag", "te", "unet", "dyn"),
    [
        ("<lora:x>", 1.0, 1.0, None),  # defaults: weight 1, unet follows te
        ("<lora:x:0.5>", 0.5, 0.5, None),  # one weight for both
        ("<lora:x:0.5:0.25>", 0.5, 0.25, None),  # positional te, unet
        ("<lora:x:0.5:0.25:8>", 0.5, 0.25, 8),  # positional dyn dim
        ("<lora:x:1:unet=0.5>", 1.0, 0.5, None),  # named unet
        ("<lora:x:te=0.3>", 0.3, 0.3, None),  # named te; unet follows the named te
        ("<lora:x:0.9:te=0.3:dyn=4>", 0.3, 0.3, 4),  # named overrides positional
    ],
)
def test_lora_multipliers(tag: str, te: float, unet: float, dyn: int | None) -> None:
    found = call(tag)
    assert found.name == "x"
    assert (found.te_multiplier, found.unet_multiplier, found.dyn_dim) == (te, unet, dyn)


def test_named_and_positional_items() -> None:
    # 'key=value' with exactly one '=' is named; 'a=b=c' stays positional, as in A1111.
    found = call("<lora:x:a=b=c:k=v>")
    assert found.positional == ("x", "a=b=c")
    assert found.named == {"k": "v"}


@pytest.mark.parametrize("tag", ["<lora:x:abc>", "<lora:x:1:nan>", "<lora:x:1:1:1.5>", "<lora:a=b>"])
def test_bad_arguments_are_user_errors(tag: str) -> None:
    found = call(tag)
    with pytest.raises(UserError):
        print(found.name, found.te_multiplier, found.unet_multiplier, found.dyn_dim)


def test_long_unclosed_tags_are_fast() -> None:
    assert extract_extra_networks("<a:" * 40_000)[1] == []
    assert len(extract_extra_networks("<a:b>" * 20_000)[1]) == 20_000


@given(st.text())
@settings(max_examples=300, deadline=None)
def test_never_raises(prompt: str) -> None:
    text, calls = extract_extra_networks(prompt)
    assert len(text) <= len(prompt)
    if "<" not in prompt:
        assert (text, calls) == (prompt, [])

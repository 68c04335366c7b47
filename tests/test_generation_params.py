"""request -> infotext -> request is the identity on every field the infotext carries (property test)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from sfumato import infotext
from sfumato.generation_params import infotext_params, request_fields_from_infotext
from sfumato.request import build_request
from sfumato.sampling import SAMPLERS, SCHEDULES

# A1111's format strips every line of the prompts (so do we): generate stripped ones.
prompts = (
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=60)
    .map(lambda p: "\n".join(line.strip() for line in p.split("\n")).strip())
    .filter(lambda p: not p.startswith("Negative prompt:") and "\nNegative prompt:" not in p)
)


@settings(max_examples=150, deadline=None)
@given(
    prompt=prompts,
    negative=prompts,
    steps=st.integers(1, 150),
    cfg=st.floats(0, 30, allow_nan=False).map(lambda v: round(v, 2)),
    seed=st.integers(0, 2**32 - 1),
    subseed=st.integers(0, 2**32 - 1),
    strength=st.sampled_from([0.0, 0.25, 1.0]),
    sampler=st.sampled_from([s.name for s in SAMPLERS]),
    schedule=st.sampled_from(["Automatic"] + [s.label for s in SCHEDULES if s.label != "Automatic"]),
    size=st.tuples(st.integers(1, 256), st.integers(1, 256)).map(lambda wh: (wh[0] * 8, wh[1] * 8)),
    clip_skip=st.integers(1, 12),
    emphasis=st.sampled_from(["Original", "No norm", "None"]),
    pad_conds=st.booleans(),
)
def test_request_infotext_round_trip(
    prompt,
    negative,
    steps,
    cfg,
    seed,
    subseed,
    strength,
    sampler,
    schedule,
    size,
    clip_skip,
    emphasis,
    pad_conds,
):
    # A parameters-looking last prompt line is ambiguous in A1111's format itself; the infotext tests cover it.
    if prompt.strip() and len(prompt.splitlines()[-1].split(": ")) > 2:
        return
    request = build_request(
        prompt=prompt,
        negative_prompt=negative,
        steps=steps,
        cfg_scale=cfg,
        seed=seed,
        subseed=subseed,
        subseed_strength=strength,
        sampler_name=sampler,
        scheduler=schedule,
        width=size[0],
        height=size[1],
        clip_skip=clip_skip,
        emphasis=emphasis,
        pad_conds=pad_conds,
    )
    params = infotext_params(
        request.model_dump(),
        seed=seed,
        subseed=subseed,
        width=size[0],
        height=size[1],
        model_name="m",
        model_hash="0123456789",
    )
    text = infotext.format(request.prompt, request.negative_prompt, params)
    rebuilt = build_request(**request_fields_from_infotext(infotext.parse(text)))
    expected = request.model_copy(update={"subseed": subseed if strength > 0 else -1})
    assert rebuilt.model_dump() == expected.model_dump()


def test_prompt_line_breaks_are_one_form():
    """CRLF in prompts becomes LF, so the infotext (LF-separated lines) gives the request back; a lone
    CR inside a line stays (the infotext keeps it)."""
    request = build_request(prompt="a\r\nb\rc", negative_prompt="0\r\n0", hr_prompt="x\r\ny")
    assert (request.prompt, request.negative_prompt, request.hr_prompt) == ("a\nb\rc", "0\n0", "x\ny")
    text = infotext.format(
        request.prompt, request.negative_prompt, {"Steps": 20, "Sampler": "Euler", "Seed": 1}
    )
    assert infotext.parse(text)["Negative prompt"] == "0\n0" and infotext.parse(text)["Prompt"] == "a\nb\rc"

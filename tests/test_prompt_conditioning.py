"""The prompt language reaching the model: chunks, emphasis, per-step schedules, AND, robustness."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfumato.errors import UserError
from sfumato.models.loader import clip_tokenizer, load_single_file
from sfumato.prompts.encode import PromptEncoder, tokenize_chunks
from sfumato.prompts.plan import ConditioningPlan
from sfumato.request import build_request
from sfumato.sampling.denoiser import GuidedDenoiser, UNetExtras
from sfumato.tasks.txt2img import generate

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def models(tiny_models):
    return {
        name: load_single_file(tiny_models[name][0], device=CPU, dtype=torch.float32, prediction="epsilon")
        for name in ("sd1", "sd2-v", "sdxl")
    }


def real_tokens(chunk) -> list[int]:
    """Prompt tokens of a chunk: between the start token and the first end token."""
    return chunk.tokens[1 : chunk.tokens.index(49407)]


@pytest.mark.parametrize(("words", "chunks"), [(1, 1), (75, 1), (76, 2), (150, 2), (151, 3)])
def test_chunks_hold_75_tokens(words, chunks):
    tokenizer = clip_tokenizer(False)
    result = tokenize_chunks(tokenizer, " ".join(["cat"] * words))  # "cat" is one token
    assert len(result) == chunks
    assert all(len(c.tokens) == 77 and c.tokens[0] == 49406 and c.tokens[-1] == 49407 for c in result)
    assert sum(len(real_tokens(c)) for c in result) == words


def test_a_full_chunk_breaks_after_the_last_comma_within_20_tokens():
    tokenizer = clip_tokenizer(False)
    text = " ".join(["cat"] * 60) + ", " + " ".join(["dog"] * 30)
    first, second = tokenize_chunks(tokenizer, text)
    assert len(real_tokens(first)) == 61 and real_tokens(first)[-1] == tokenizer.convert_tokens_to_ids(
        ",</w>"
    )
    assert len(real_tokens(second)) == 30
    # A comma further back than 20 tokens does not move anything.
    text = " ".join(["cat"] * 50) + ", " + " ".join(["dog"] * 40)
    first, second = tokenize_chunks(tokenizer, text)
    assert len(real_tokens(first)) == 75


def test_break_starts_a_new_chunk_and_weights_follow_tokens():
    tokenizer = clip_tokenizer(False)
    first, second = tokenize_chunks(tokenizer, "a (red:1.5) cat BREAK [dog]")
    assert real_tokens(first) == tokenizer("a red cat", add_special_tokens=False).input_ids
    assert first.multipliers[1:4] == [1.0, 1.5, 1.0]
    assert second.multipliers[1] == pytest.approx(1 / 1.1)


def test_weighted_tokens_equal_the_hand_computation(models):
    model = models["sd1"]
    encoder, tokenizer = model.text_encoders[0], model.tokenizers[0]
    chunk = tokenize_chunks(tokenizer, "a (red:1.5) cat")[0]
    with torch.no_grad():
        plain = encoder(input_ids=torch.tensor([chunk.tokens])).last_hidden_state
    weights = torch.tensor(chunk.multipliers).reshape(1, -1, 1)
    no_norm = plain * weights
    assert torch.allclose(PromptEncoder(model, emphasis="No norm")("a (red:1.5) cat").cross, no_norm)
    assert torch.allclose(PromptEncoder(model, emphasis="None")("a (red:1.5) cat").cross, plain)
    original = PromptEncoder(model, emphasis="Original")("a (red:1.5) cat").cross
    if no_norm.mean().abs() > 1e-6 * no_norm.abs().mean():
        assert torch.allclose(original, no_norm * (plain.mean() / no_norm.mean()), atol=1e-5)
    else:  # layer-normed tiny states have mean 0: nothing to restore
        assert torch.allclose(original, no_norm)


def test_conditioning_shapes_per_family(models):
    long_prompt = " ".join(["cat"] * 100)
    sd1 = PromptEncoder(models["sd1"])(long_prompt)
    assert sd1.cross.shape == (1, 154, 32) and sd1.pooled is None
    sd2 = PromptEncoder(models["sd2-v"])("cat")
    assert sd2.cross.shape == (1, 77, 64)
    sdxl = PromptEncoder(models["sdxl"])(long_prompt)
    assert sdxl.cross.shape == (1, 154, 32 + 64) and sdxl.pooled.shape == (1, 48)


class RecordingUNet(torch.nn.Module):
    """Stands in for the UNet inside the denoiser: records what conditioning each call got."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet
        self.calls: list[torch.Tensor] = []

    def forward(self, *args, encoder_hidden_states, **kwargs):
        self.calls.append(encoder_hidden_states.clone())
        return self.unet(*args, encoder_hidden_states=encoder_hidden_states, **kwargs)


def conditioning_per_call(model, prompt: str, steps: int = 10, sampler: str = "Euler", cfg: float = 1.0):
    recorder = RecordingUNet(model.unet)
    original, model.unet = model.unet, recorder
    try:
        request = build_request(
            prompt=prompt, steps=steps, sampler_name=sampler, width=64, height=64, seed=1, cfg_scale=cfg
        )
        generate(model, request)
    finally:
        model.unet = original
    return recorder.calls


def test_prompt_editing_switches_at_the_scheduled_step(models):
    model = models["sd1"]
    encoder = PromptEncoder(model)
    cat, dog = encoder("a cat"), encoder("a dog")
    calls = conditioning_per_call(model, "a [cat:dog:4]")
    # A1111: [cat:dog:4] uses "a cat" for steps 0..4 and "a dog" from step 5 on.
    assert [torch.equal(c, cat.cross) for c in calls] == [True] * 5 + [False] * 5
    assert all(torch.equal(c, dog.cross) for c in calls[5:])
    fraction = conditioning_per_call(model, "a [cat:dog:0.25]")  # 0.25 × 10 steps -> step 2
    assert [torch.equal(c, cat.cross) for c in fraction] == [True] * 3 + [False] * 7


def test_alternation_changes_every_step(models):
    model = models["sd1"]
    encoder = PromptEncoder(model)
    cat, dog = encoder("a cat"), encoder("a dog")
    calls = conditioning_per_call(model, "a [cat|dog]", steps=5)
    # A1111's schedule is [[1, cat], [2, dog], [3, cat], …] and sampling step s (from 0) takes the first
    # entry with s <= end: so steps 0 and 1 both use "cat", then it alternates every step.
    assert [torch.equal(c, cat.cross) for c in calls] == [True, True, False, True, False]
    assert torch.equal(calls[2], dog.cross)


def test_and_composition_weights_each_part():
    def fake_model(x, sigma, cond, extras):
        return cond.cross.mean(dim=(1, 2)).reshape(-1, 1, 1, 1) + 0 * x  # output = the cond's id

    def cond(value):
        from sfumato.prompts.encode import Conditioning

        return Conditioning(cross=torch.full((1, 77, 4), float(value)))

    parts = [(cond(3), 1.0), (cond(5), 0.5)]
    guided = GuidedDenoiser(
        fake_model, torch.tensor([1.0, 0.0]), lambda step: (cond(1), parts), 7.0, UNetExtras()
    )
    out = guided(torch.zeros(1, 4, 2, 2), torch.tensor([1.0]))
    assert torch.allclose(out, torch.full((1, 4, 2, 2), 1 + 7 * (1.0 * (3 - 1) + 0.5 * (5 - 1))))


def test_and_parts_reach_the_unet_in_one_batch(models):
    calls = conditioning_per_call(models["sd1"], "a cat :1.2 AND a dog", steps=2, cfg=7.0)
    assert len(calls) == 2 and calls[0].shape[0] == 3  # negative + two parts, batched


def test_extra_network_tags_warn_and_leave_the_prompt(models):
    request = build_request(prompt="a cat <lora:nothing:0.8>", steps=1, width=64, height=64, seed=1)
    result = generate(models["sd1"], request)
    assert any("<lora:nothing>" in note for note in result.notes)
    plain = generate(models["sd1"], build_request(prompt="a cat", steps=1, width=64, height=64, seed=1))
    assert result.images[0].image.tobytes() == plain.images[0].image.tobytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200))
def test_any_prompt_gives_conditioning_or_a_user_error(models, text):
    plan = ConditioningPlan.build(PromptEncoder(models["sd1"]), text, text, 10, 1)
    try:
        plan.encode_all()
    except UserError:
        return
    negative, parts = plan.at(3)
    assert torch.isfinite(negative.cross).all() and all(torch.isfinite(c.cross).all() for c, _ in parts)


def test_a_100000_character_prompt_is_encoded(models):
    text = "red circle, " * 8334
    cond = PromptEncoder(models["sd1"])(text)
    assert cond.cross.shape[1] % 77 == 0 and cond.cross.shape[1] > 77 * 100


def test_pad_conds_batches_a_long_prompt_with_a_short_negative(models):
    long_prompt = " ".join(["cat"] * 100)  # two chunks; the empty negative has one
    separate = conditioning_per_call(models["sd1"], long_prompt, steps=2, cfg=7.0)
    assert [c.shape[:2] for c in separate] == [(1, 77), (1, 154)] * 2  # A1111's default: apart
    recorder = RecordingUNet(models["sd1"].unet)
    original, models["sd1"].unet = models["sd1"].unet, recorder
    try:
        request = build_request(
            prompt=long_prompt, steps=2, sampler_name="Euler", width=64, height=64, pad_conds=True
        )
        generate(models["sd1"], request)
    finally:
        models["sd1"].unet = original
    assert [c.shape[:2] for c in recorder.calls] == [(2, 154)] * 2
    empty = PromptEncoder(models["sd1"])("")
    assert torch.equal(recorder.calls[0][0, 77:], empty.cross[0])  # the negative, padded with ""


def test_sdxl_uses_the_penultimate_layer_of_both_encoders(models):
    model = models["sdxl"]
    ids = [
        tok("a cat", padding="max_length", max_length=77, return_tensors="pt").input_ids
        for tok in model.tokenizers
    ]
    ids[1][0, ids[1][0].tolist().index(49407) + 1 :] = 0  # OpenCLIP pads with 0 after the end token
    with torch.no_grad():
        first = model.text_encoders[0](input_ids=ids[0], output_hidden_states=True).hidden_states[-2]
        second = model.text_encoders[1](input_ids=ids[1], output_hidden_states=True)
    cond = PromptEncoder(model)("a cat")
    assert torch.allclose(cond.cross, torch.cat([first, second.hidden_states[-2]], dim=-1), atol=1e-6)
    assert torch.allclose(cond.pooled, second.text_embeds, atol=1e-6)

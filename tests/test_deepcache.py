"""DeepCache: the full UNet every N-th sampler step, only its shallowest branch over cached deep
features on the steps between; opt-in, and the UNet exact again once the run is over."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from sfumato.cli import TXT2IMG_FLAG_FIELDS, build_parser
from sfumato.errors import UserError
from sfumato.generation_params import infotext_params, request_fields_from_infotext
from sfumato.infotext import parse
from sfumato.models.loader import load_single_file
from sfumato.prompts.encode import Conditioning
from sfumato.request import build_request
from sfumato.sampling.deepcache import DeepCache
from sfumato.sampling.denoiser import UNetExtras
from sfumato.server.options import OptionsStore, request_fields
from sfumato.tasks.common import RunControl
from sfumato.tasks.txt2img import generate


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return load_single_file(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)


def generated(model, **fields) -> tuple[np.ndarray, list[torch.Tensor]]:
    """The image and each step's latents."""
    request = build_request(
        **{
            "prompt": "a red circle",
            "negative_prompt": "blue",
            "width": 64,
            "height": 64,
            "seed": 4,
            **fields,
        }
    )
    latents: list[torch.Tensor] = []
    result = generate(model, request, RunControl(on_step=lambda p: latents.append(p.denoised)))
    return np.asarray(result.images[0].image), latents


def deep_blocks(unet) -> list[torch.nn.Module]:
    return [*unet.down_blocks[1:], unet.mid_block, *unet.up_blocks[:-1]]


def count_runs(unet) -> tuple[Counter, list]:
    """Forward hooks on a resnet inside each deep block and inside the last up block: they fire only
    when the block really computes (a replayed block returns before reaching its resnets)."""
    counts: Counter = Counter()
    watched = {f"deep{i}": block.resnets[0] for i, block in enumerate(deep_blocks(unet))}
    watched["shallow"] = unet.up_blocks[-1].resnets[0]
    handles = [
        module.register_forward_hook(lambda *_, name=name: counts.update([name]))
        for name, module in watched.items()
    ]
    return counts, handles


def test_interval_0_and_1_are_exact(sd1):
    plain, _ = generated(sd1, steps=3)
    assert np.array_equal(generated(sd1, steps=3, deepcache_interval=0)[0], plain)
    assert np.array_equal(generated(sd1, steps=3, deepcache_interval=1)[0], plain)


@pytest.mark.parametrize(
    ("fields", "deep_runs", "calls"),
    [
        # batched CFG, one UNet call a step: steps 0 and 3 are full
        ({"sampler_name": "Euler", "steps": 6, "deepcache_interval": 3}, 2, 6),
        # Heun, 4 steps: 7 calls; its second evaluation counts to the next step, so step 1's own call
        # has no counterpart in step 0 and runs in full; steps 0 and 2 are full; step 3 replays both
        ({"sampler_name": "Heun", "steps": 4, "deepcache_interval": 2}, 4, 7),
        # NGMS on odd steps halves the batch there: step 1 (half) has no counterpart and runs in full,
        # step 2 replays step 0, step 3 is full, steps 4 and 5 replay steps 0 and 3
        ({"sampler_name": "Euler", "steps": 6, "deepcache_interval": 3, "s_min_uncond": 1e3}, 3, 6),
    ],
)
def test_the_deep_blocks_run_on_full_steps_only(sd1, fields, deep_runs, calls):
    plain, _ = generated(sd1, **{**fields, "deepcache_interval": 0})
    counts, handles = count_runs(sd1.unet)
    try:
        cached, latents = generated(sd1, **fields)
    finally:
        for handle in handles:
            handle.remove()
    assert counts["shallow"] == calls
    assert {counts[f"deep{i}"] for i in range(len(deep_blocks(sd1.unet)))} == {deep_runs}
    assert cached.shape == plain.shape and not np.array_equal(cached, plain)
    assert all(torch.isfinite(step).all() for step in latents)
    assert all("forward" not in block.__dict__ for block in deep_blocks(sd1.unet))  # wrappers removed
    assert np.array_equal(generated(sd1, **{**fields, "deepcache_interval": 0})[0], plain)


def shallow_branch(unet, x, t, context, deep_features):
    """conv_in → down_blocks[0] → up_blocks[-1] over the given deep features → conv_out, by hand."""
    emb = unet.time_embedding(unet.time_proj(t.expand(x.shape[0])).to(x.dtype))
    h = unet.conv_in(x)
    _, skips = unet.down_blocks[0](hidden_states=h, temb=emb, encoder_hidden_states=context)
    last = unet.up_blocks[-1]
    out = last(
        hidden_states=deep_features,
        temb=emb,
        res_hidden_states_tuple=(h, *skips)[: len(last.resnets)],
        encoder_hidden_states=context,
    )
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(out)))


def test_a_reuse_call_is_the_shallow_branch_over_the_last_full_calls_deep_features(sd1):
    unet = sd1.unet
    generator = torch.Generator().manual_seed(0)
    x1, x2 = (torch.randn(2, 4, 8, 8, generator=generator) for _ in range(2))
    context = torch.randn(2, 77, unet.config.cross_attention_dim, generator=generator)
    t = torch.tensor(500)

    def call(x, sigma, cond, extras):
        return unet(x, t, encoder_hidden_states=cond.cross).sample

    captured: dict[str, torch.Tensor] = {}
    hook = unet.up_blocks[-2].register_forward_hook(lambda m, a, out: captured.setdefault("deep", out))
    cond, extras = Conditioning(cross=context), UNetExtras()
    try:
        with torch.no_grad(), DeepCache(call, unet, 2, torch.tensor([2.0, 1.0, 0.0])) as cached:
            full = cached(x1, torch.tensor([2.0]), cond, extras)  # step 0: full
            reused = cached(x2, torch.tensor([1.0]), cond, extras)  # step 1: reuse
    finally:
        hook.remove()
    with torch.no_grad():
        assert torch.equal(full, unet(x1, t, encoder_hidden_states=context).sample)
        exact = unet(x2, t, encoder_hidden_states=context).sample
        by_hand = shallow_branch(unet, x2, t, context, captured["deep"])
    assert torch.allclose(reused, by_hand, atol=1e-6)
    assert not torch.allclose(reused, exact, atol=1e-3)  # the deep features really were x1's


def params(**fields) -> dict:
    request = build_request(prompt="a cat", **fields)
    where = {"seed": 1, "subseed": 1, "width": 64, "height": 64, "model_name": None, "model_hash": None}
    return infotext_params(request.model_dump(), **where)


def test_infotext_options_and_cli_flag(tmp_path):
    assert params(deepcache_interval=3)["DeepCache interval"] == 3
    assert "DeepCache interval" not in params(deepcache_interval=1)
    text = "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64, DeepCache interval: 3"
    assert request_fields_from_infotext(parse(text))["deepcache_interval"] == 3
    store = OptionsStore(tmp_path / "options.json", resolve_checkpoint=str, resolve_vae=str)
    assert request_fields(store.validated({"deepcache_interval": 2})) == {"deepcache_interval": 2}
    for bad in (2.5, -1, 1001, "2", True):
        with pytest.raises(UserError) as caught:
            store.validated({"deepcache_interval": bad})
        assert caught.value.field == "deepcache_interval"
    with pytest.raises(UserError) as caught:
        build_request(deepcache_interval=-1)
    assert caught.value.field == "deepcache_interval"
    assert build_parser().parse_args(["txt2img", "x", "--deepcache-interval", "3"]).deepcache_interval == 3
    assert TXT2IMG_FLAG_FIELDS["deepcache_interval"] == "deepcache_interval"

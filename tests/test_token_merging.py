"""A1111's token merging (ToMe, through tomesd): opt-in, applied for one sampling run, removed exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfumato.cli import HIRES_FLAG_FIELDS, TXT2IMG_FLAG_FIELDS, build_parser
from sfumato.errors import UserError
from sfumato.generation_params import infotext_params, request_fields_from_infotext
from sfumato.infotext import parse
from sfumato.models.loader import load_single_file
from sfumato.request import build_request
from sfumato.sampling import token_merging as tome
from sfumato.server.options import OptionsStore, request_fields
from sfumato.tasks.common import RunControl
from sfumato.tasks.txt2img import generate


@pytest.fixture(scope="module")
def sd1(tiny_models):
    return load_single_file(tiny_models["sd1"][0], device=torch.device("cpu"), dtype=torch.float32)


def image(model, control: RunControl | None = None, **fields) -> np.ndarray:
    request = build_request(
        prompt="a red circle", negative_prompt="blue", width=64, height=64, steps=3, seed=5, **fields
    )
    return np.asarray(generate(model, request, control).images[0].image)


def patched_blocks(unet: torch.nn.Module) -> list[str]:
    return [name for name, module in unet.named_modules() if type(module).__name__ == "ToMeBlock"]


def test_ratio_0_is_exact_and_a_ratio_changes_the_image_then_leaves_the_unet_exact(sd1):
    before = image(sd1)
    assert np.array_equal(image(sd1, token_merging_ratio=0.0), before)
    merged = image(sd1, token_merging_ratio=0.5)
    assert merged.shape == before.shape and not np.array_equal(merged, before)
    assert patched_blocks(sd1.unet) == []
    assert np.array_equal(image(sd1), before)  # the patch is gone: the next plain request is exact


def test_merged_unet_output_is_finite_and_differs(sd1):
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(
        2, 77, sd1.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        exact = sd1.unet(x, 500, encoder_hidden_states=context).sample
        with tome.token_merging(sd1.unet, 0.5):
            assert patched_blocks(sd1.unet)  # the full-resolution transformer blocks
            merged = sd1.unet(x, 500, encoder_hidden_states=context).sample
    assert torch.isfinite(merged).all() and merged.shape == exact.shape
    assert not torch.equal(merged, exact)


def test_an_interrupted_run_still_removes_the_patch(sd1):
    image(sd1, RunControl(should_stop=lambda: True), token_merging_ratio=0.5)
    assert patched_blocks(sd1.unet) == []


@pytest.mark.parametrize(
    ("ratio", "hires_ratio", "applied"),
    [
        (0.3, 0.6, [0.3, 0.6]),  # each pass its own
        (0.3, 0.0, [0.3, 0.3]),  # hires 0: the first pass's ratio (A1111)
        (0.0, 0.5, [0.5]),  # first pass exact, only the hires pass merges
    ],
)
def test_the_hires_pass_uses_its_own_ratio(sd1, monkeypatch, ratio, hires_ratio, applied):
    calls: list[float] = []
    real = tome.tomesd.apply_patch

    def spy(model, **kwargs):
        calls.append(kwargs["ratio"])
        return real(model, **kwargs)

    monkeypatch.setattr(tome.tomesd, "apply_patch", spy)
    image(
        sd1,
        enable_hr=True,
        hr_second_pass_steps=1,
        token_merging_ratio=ratio,
        token_merging_ratio_hr=hires_ratio,
    )
    assert calls == applied
    assert patched_blocks(sd1.unet) == []


def params(**fields) -> dict:
    request = build_request(prompt="a cat", **fields)
    where = {"seed": 1, "subseed": 1, "width": 64, "height": 64, "model_name": None, "model_hash": None}
    return infotext_params(request.model_dump(), **where)


def test_infotext_writes_a1111_keys_and_reads_them_back():
    assert "Token merging ratio" not in params() and "Token merging ratio hr" not in params()
    written = params(token_merging_ratio=0.5)
    assert written["Token merging ratio"] == 0.5 and "Token merging ratio hr" not in written
    with_hires = params(token_merging_ratio=0.5, enable_hr=True)
    assert with_hires["Token merging ratio hr"] == 0.5  # A1111 writes the ratio the pass used
    assert params(token_merging_ratio_hr=0.7, enable_hr=True)["Token merging ratio hr"] == 0.7
    text = "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64, Hires upscale: 2, Token merging ratio: 0.3, Token merging ratio hr: 0.6"
    fields = request_fields_from_infotext(parse(text))
    assert fields["token_merging_ratio"] == 0.3 and fields["token_merging_ratio_hr"] == 0.6
    assert build_request(**fields).token_merging_ratio_hr == 0.6


def test_img2img_jobs_take_the_img2img_ratio_when_it_is_set(tmp_path):
    store = OptionsStore(tmp_path / "options.json", resolve_checkpoint=str, resolve_vae=str)
    options = store.validated({"token_merging_ratio": 0.5, "token_merging_ratio_img2img": 0.3})
    assert request_fields(options)["token_merging_ratio"] == 0.5  # txt2img keeps the general ratio
    assert request_fields(options, img2img=True)["token_merging_ratio"] == 0.3
    unset = store.validated({"token_merging_ratio": 0.5, "token_merging_ratio_img2img": 0})
    assert request_fields(unset, img2img=True)["token_merging_ratio"] == 0.5  # 0: the general one
    with pytest.raises(UserError) as caught:
        store.validated({"token_merging_ratio_img2img": 1.5})
    assert caught.value.field == "token_merging_ratio_img2img"


def test_options_cli_flags_and_bad_values(tmp_path):
    store = OptionsStore(tmp_path / "options.json", resolve_checkpoint=str, resolve_vae=str)
    checked = store.validated({"token_merging_ratio": 0.5, "token_merging_ratio_hr": 0})
    assert request_fields(checked) == {"token_merging_ratio": 0.5, "token_merging_ratio_hr": 0.0}
    for bad in (0.95, -0.1, "half", True):
        with pytest.raises(UserError) as caught:
            store.validated({"token_merging_ratio_hr": bad})
        assert caught.value.field == "token_merging_ratio_hr"
    with pytest.raises(UserError) as caught:
        build_request(token_merging_ratio=0.95)
    assert caught.value.field == "token_merging_ratio"
    args = build_parser().parse_args(
        ["txt2img", "x", "--token-merging-ratio", "0.4", "--hires-token-merging-ratio", "0.2"]
    )
    assert TXT2IMG_FLAG_FIELDS["token_merging_ratio"] == "token_merging_ratio"
    assert HIRES_FLAG_FIELDS["hires_token_merging_ratio"] == "token_merging_ratio_hr"
    assert (args.token_merging_ratio, args.hires_token_merging_ratio) == (0.4, 0.2)

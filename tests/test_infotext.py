"""Tests for sfumato.infotext against A1111's behaviour.

Expected dicts were derived by reading A1111 v1.10's modules/infotext_utils.py
(parse_generation_parameters, restore_old_hires_fix_params, quote/unquote), infotext_versions.py
(backcompat), prompt_parser.parse_prompt_attention (the "Emphasis" default), sd_samplers.py
(get_sampler_and_scheduler) and processing.py (create_infotext, old_hires_fix_first_pass_dimensions).
The parameters lines of the real-world cases are copied from images people pasted in public issues,
docs and READMEs.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from sfumato import infotext

# What A1111 fills in when an infotext leaves a key out (values as str, see the module docstring).
DEFAULTS = {
    "Clip skip": "1",
    "Hires resize-1": "0",
    "Hires resize-2": "0",
    "Hires sampler": "Use same sampler",
    "Hires schedule type": "Use same scheduler",
    "Hires checkpoint": "Use same checkpoint",
    "Hires prompt": "",
    "Hires negative prompt": "",
    "Mask mode": "Inpaint masked",
    "Masked content": "original",
    "Inpaint area": "Whole picture",
    "Masked area padding": "32",
    "RNG": "GPU",
    "Schedule type": "Automatic",
    "Schedule max sigma": "0",
    "Schedule min sigma": "0",
    "Schedule rho": "0",
    "VAE Encoder": "Full",
    "VAE Decoder": "Full",
    "FP8 weight": "Disable",
    "Refiner switch by sampling steps": "False",
}


def expected(prompt: str, negative: str, **params: str) -> dict[str, str]:
    return {**DEFAULTS, **params, "Prompt": prompt, "Negative prompt": negative}


def kw(**params: str) -> dict[str, str]:
    return params


# --- real-world infotexts ---------------------------------------------------------------------------

# 1. ADetailer + ControlNet + Ultimate SD upscale + Lora/TI hashes, A1111 v1.6.0 (params line verbatim).
#    Checks: quoted values with commas/colons unquoted; many unknown extension keys kept; the old
#    combined sampler "DPM++ 2M Karras" split; "Size" -> Size-1/Size-2; Version < v1.7.0-225 turns on
#    "Downcast alphas_cumprod"; the negative's "(...:1.4)" makes "Emphasis: Original".
ADETAILER = (
    "portrait of pelarbues man, <lora:pelarbues:1>, <lora:epiC35mm:1>\n"
    "Negative prompt: (semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime, mutated hands and fingers:1.4)\n"
    "Steps: 40, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 938383883, Size: 1536x1024, Model hash: f6e523de7e, "
    "Model: fennPhoto_v10, VAE hash: 735e4c3a44, VAE: vae-ft-mse-840000-ema-pruned.safetensors, Denoising strength: 0, "
    "Ultimate SD upscale upscaler: 4xFaceUpSharpDAT, Ultimate SD upscale tile_width: 512, Ultimate SD upscale "
    "tile_height: 512, Ultimate SD upscale mask_blur: 8, Ultimate SD upscale padding: 32, ADetailer model: "
    'face_yolov8n.pt, ADetailer prompt: "portrait of pelarbues man, <lora:pelarbues:1>, <lora:more_details:1> ,  '
    '<lora:AdvancedEnhancer:2>, <lora:Better Portrait Lighting:0.8>, <lora:epiC35mm:1>", ADetailer confidence: 0.3, '
    "ADetailer mask only top k largest: 1, ADetailer dilate/erode: 4, ADetailer mask blur: 4, ADetailer denoising "
    "strength: 0.3, ADetailer inpaint only masked: True, ADetailer inpaint padding: 32, ADetailer ControlNet model: "
    "control_v11p_sd15_inpaint [ebff9138], ADetailer ControlNet module: inpaint_global_harmonious, ADetailer model "
    '2nd: hand_yolov8n.pt, ADetailer prompt 2nd: "hand, good hands, good fingers, <lora:more_details:1> ,  '
    '<lora:AdvancedEnhancer:2>, <lora:Better Portrait Lighting:0.8>, <lora:epiC35mm:1>", ADetailer negative prompt '
    '2nd: "bad anatomy, bad fingers, ", ADetailer confidence 2nd: 0.3, ADetailer dilate/erode 2nd: 4, ADetailer mask '
    "blur 2nd: 4, ADetailer denoising strength 2nd: 0.4, ADetailer inpaint only masked 2nd: True, ADetailer inpaint "
    'padding 2nd: 32, ADetailer version: 23.9.3, ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny '
    "[d14c016b], Weight: 1, Resize Mode: Just Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold "
    'B: 200, Guidance Start: 0, Guidance End: 1, Pixel Perfect: True, Control Mode: Balanced", Lora hashes: '
    '"AdvancedEnhancer: bd3301b4928d, epiC35mm: 7a3667450b02", TI hashes: "CyberRealistic_Negative-neg: '
    '65f3ea567c04", Version: v1.6.0'
)
ADETAILER_EXPECTED = expected(
    "portrait of pelarbues man, <lora:pelarbues:1>, <lora:epiC35mm:1>",
    "(semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime, mutated hands and fingers:1.4)",
    **kw(
        Steps="40",
        Sampler="DPM++ 2M",
        **{
            "Schedule type": "Karras",
            "CFG scale": "7",
            "Seed": "938383883",
            "Size-1": "1536",
            "Size-2": "1024",
        },
        **{"Model hash": "f6e523de7e", "Model": "fennPhoto_v10", "VAE hash": "735e4c3a44"},
        **{"VAE": "vae-ft-mse-840000-ema-pruned.safetensors", "Denoising strength": "0"},
        **{
            "Ultimate SD upscale upscaler": "4xFaceUpSharpDAT",
            "Ultimate SD upscale tile_width": "512",
            "Ultimate SD upscale tile_height": "512",
            "Ultimate SD upscale mask_blur": "8",
            "Ultimate SD upscale padding": "32",
            "ADetailer model": "face_yolov8n.pt",
            "ADetailer prompt": "portrait of pelarbues man, <lora:pelarbues:1>, <lora:more_details:1> ,  "
            "<lora:AdvancedEnhancer:2>, <lora:Better Portrait Lighting:0.8>, <lora:epiC35mm:1>",
            "ADetailer confidence": "0.3",
            "ADetailer mask only top k largest": "1",
            "ADetailer dilate/erode": "4",
            "ADetailer mask blur": "4",
            "ADetailer denoising strength": "0.3",
            "ADetailer inpaint only masked": "True",
            "ADetailer inpaint padding": "32",
            "ADetailer ControlNet model": "control_v11p_sd15_inpaint [ebff9138]",
            "ADetailer ControlNet module": "inpaint_global_harmonious",
            "ADetailer model 2nd": "hand_yolov8n.pt",
            "ADetailer prompt 2nd": "hand, good hands, good fingers, <lora:more_details:1> ,  "
            "<lora:AdvancedEnhancer:2>, <lora:Better Portrait Lighting:0.8>, <lora:epiC35mm:1>",
            "ADetailer negative prompt 2nd": "bad anatomy, bad fingers, ",
            "ADetailer confidence 2nd": "0.3",
            "ADetailer dilate/erode 2nd": "4",
            "ADetailer mask blur 2nd": "4",
            "ADetailer denoising strength 2nd": "0.4",
            "ADetailer inpaint only masked 2nd": "True",
            "ADetailer inpaint padding 2nd": "32",
            "ADetailer version": "23.9.3",
            "ControlNet 0": "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 1, Resize Mode: "
            "Just Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, Threshold B: 200, Guidance "
            "Start: 0, Guidance End: 1, Pixel Perfect: True, Control Mode: Balanced",
            "Lora hashes": "AdvancedEnhancer: bd3301b4928d, epiC35mm: 7a3667450b02",
            "TI hashes": "CyberRealistic_Negative-neg: 65f3ea567c04",
            "Version": "v1.6.0",
            "Downcast alphas_cumprod": "True",
            "Emphasis": "Original",
        },
    ),
)

# 2. SDXL with hires fix, A1111 v1.10.0 (params line verbatim), written by an extension that put an
#    unquoted JSON object in "Hashes". Checks A1111's exact scanning quirks: the unquoted value ends at
#    the first comma, `"embed:...` yields a key "embed" (the text before it is skipped), `"vae": ...`
#    is no entry at all; "Hires upscale"/"Hires steps"/"Hires upscaler" kept; explicit Clip skip and
#    Schedule type win over the defaults; a v1.10 infotext gets no compatibility flags.
HASHES_JSON = (
    "Hell4ineXLPOS  solo, long hair, looking at viewer, 1boy, jewelry, closed mouth, upper body, white hair, "
    "male focus, wings, necklace, border, cross, black wings,\n"
    "Negative prompt: XL_Neg\n"
    "Steps: 30, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 970527942, Size: 832x1216, "
    "Model hash: 238ffac319, Model: HellaineMixXL-FIX.fp16, VAE hash: 63aeecb90f, VAE: sdxl_vae.safetensors, "
    'Denoising strength: 0.35, Clip skip: 2, Hashes: {"model": "238ffac319", "embed:Hell4ineXLPOS": "23f5e3fc03", '
    '"vae": "63aeecb90f"}, Hires upscale: 1.5, Hires steps: 30, Hires upscaler: 4x_foolhardy_Remacri, TI hashes: '
    '"Hell4ineXLPOS: 23f5e3fc030a, Hell4ineXLPOS: 23f5e3fc030a", Hardware Info: "RTX 4090 24GB, Threadripper PRO '
    '5975WX 32-s, 252GB RAM", Time taken: 18.0 sec., Version: v1.10.0'
)
HASHES_JSON_EXPECTED = expected(
    "Hell4ineXLPOS  solo, long hair, looking at viewer, 1boy, jewelry, closed mouth, upper body, white hair, "
    "male focus, wings, necklace, border, cross, black wings,",
    "XL_Neg",
    **{
        "Steps": "30",
        "Sampler": "Euler a",
        "Schedule type": "Automatic",
        "CFG scale": "7",
        "Seed": "970527942",
        "Size-1": "832",
        "Size-2": "1216",
        "Model hash": "238ffac319",
        "Model": "HellaineMixXL-FIX.fp16",
        "VAE hash": "63aeecb90f",
        "VAE": "sdxl_vae.safetensors",
        "Denoising strength": "0.35",
        "Clip skip": "2",
        "Hashes": '{"model": "238ffac319"',
        "embed": 'Hell4ineXLPOS": "23f5e3fc03"',
        "Hires upscale": "1.5",
        "Hires steps": "30",
        "Hires upscaler": "4x_foolhardy_Remacri",
        "TI hashes": "Hell4ineXLPOS: 23f5e3fc030a, Hell4ineXLPOS: 23f5e3fc030a",
        "Hardware Info": "RTX 4090 24GB, Threadripper PRO 5975WX 32-s, 252GB RAM",
        "Time taken": "18.0 sec.",
        "Version": "v1.10.0",
    },
)

# 3. Old hires fix (late 2022, params line verbatim): "First pass size: 0x0" means A1111 computes the
#    first pass (about 512x512 px in the final aspect, multiples of 64): 512x768 -> 448x640, and the
#    written Size becomes "Hires resize". Also: "Seed: 927419423, 3561518470" keeps the first number
#    (the second is no entry); ENSD kept; old combined sampler name split; ((...)) -> Emphasis.
OLD_HIRES = (
    "masterpiece, best quality, ((1girl)), silver hair\n"
    "Negative prompt: lowres, ((bad anatomy)), bad hands, text, error\n"
    "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 927419423, 3561518470, Size: 512x768, "
    "Model hash: 783d0732, Model: yohan-diffusion, Denoising strength: 0.7, ENSD: 31337, First pass size: 0x0"
)
OLD_HIRES_EXPECTED = expected(
    "masterpiece, best quality, ((1girl)), silver hair",
    "lowres, ((bad anatomy)), bad hands, text, error",
    **{
        "Steps": "20",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "927419423",
        "Size-1": "448",
        "Size-2": "640",
        "Hires resize-1": "512",
        "Hires resize-2": "768",
        "Model hash": "783d0732",
        "Model": "yohan-diffusion",
        "Denoising strength": "0.7",
        "ENSD": "31337",
        "First pass size-1": "0",
        "First pass size-2": "0",
        "Emphasis": "Original",
    },
)

# 4. v1.9.4 with ControlNet and TI hashes (params line verbatim): new-style explicit "Schedule type:
#    Karras" with a plain sampler (nothing to split); unknown "Pad conds" kept; v1.9.4 > v1.7.0-225 so
#    no "Downcast alphas_cumprod"; the prompt has a trailing comma kept as written.
CONTROLNET = (
    "masterpiece,ultra high quality,1girl,solo,(black background:1.3),(silhouette:1.1),sparkle,glowing,\n"
    "Negative prompt: Easy Negative,bad handv4,ng_deepnegative_v1_75t,(worst quality:2),(low quality:2),lowres,\n"
    "Steps: 30, Sampler: UniPC, Schedule type: Karras, CFG scale: 7, Seed: 3620085674, Size: 1024x1536, "
    'Model hash: 3d1b3c42ec, Model: AWPainting_v1.2, ControlNet 0: "Module: tile_resample, Model: '
    "control_v11f1e_sd15_tile_fp16 [3b860298], Weight: 0.6, Resize Mode: Crop and Resize, Processor Res: 512, "
    "Threshold A: 1.0, Threshold B: 0.5, Guidance Start: 0.0, Guidance End: 1.0, Pixel Perfect: True, Control Mode: "
    'Balanced", TI hashes: "ng_deepnegative_v1_75t: 54e7e4826d53", Pad conds: True, Version: v1.9.4'
)
CONTROLNET_EXPECTED = expected(
    "masterpiece,ultra high quality,1girl,solo,(black background:1.3),(silhouette:1.1),sparkle,glowing,",
    "Easy Negative,bad handv4,ng_deepnegative_v1_75t,(worst quality:2),(low quality:2),lowres,",
    **{
        "Steps": "30",
        "Sampler": "UniPC",
        "Schedule type": "Karras",
        "CFG scale": "7",
        "Seed": "3620085674",
        "Size-1": "1024",
        "Size-2": "1536",
        "Model hash": "3d1b3c42ec",
        "Model": "AWPainting_v1.2",
        "ControlNet 0": "Module: tile_resample, Model: control_v11f1e_sd15_tile_fp16 [3b860298], Weight: 0.6, "
        "Resize Mode: Crop and Resize, Processor Res: 512, Threshold A: 1.0, Threshold B: 0.5, Guidance Start: "
        "0.0, Guidance End: 1.0, Pixel Perfect: True, Control Mode: Balanced",
        "TI hashes": "ng_deepnegative_v1_75t: 54e7e4826d53",
        "Pad conds": "True",
        "Version": "v1.9.4",
        "Emphasis": "Original",
    },
)

# 5. Modern hires fix with "Hires resize: 832x1280" (a README's params line, keys in unusual order):
#    any WxH value splits (Hires resize-1/-2, so the 0 defaults are not added); no Version -> no flags.
HIRES_RESIZE = (
    "<lora:rog_mountain:1>rog_mountain, scenery, water, cloud sky, forest\n"
    "Negative prompt: human\n"
    "Steps: 30, Size: 512x768, Seed: 1261263585, Model: Lyriel_v16, Sampler: DPM++ 2M Karras, CFG scale: 9, "
    "Clip skip: 2, Model hash: e96852ac4a, Hires steps: 38, Hires resize: 832x1280, Hires upscaler: Latent, "
    "Denoising strength: 0.56"
)
HIRES_RESIZE_EXPECTED = expected(
    "<lora:rog_mountain:1>rog_mountain, scenery, water, cloud sky, forest",
    "human",
    **{
        "Steps": "30",
        "Size-1": "512",
        "Size-2": "768",
        "Seed": "1261263585",
        "Model": "Lyriel_v16",
        "Sampler": "DPM++ 2M",
        "Schedule type": "Karras",
        "CFG scale": "9",
        "Clip skip": "2",
        "Model hash": "e96852ac4a",
        "Hires steps": "38",
        "Hires resize-1": "832",
        "Hires resize-2": "1280",
        "Hires upscaler": "Latent",
        "Denoising strength": "0.56",
    },
)

# 6. Multi-line prompt and negative, no emphasis; lines are stripped and joined with "\n"; a blank line
#    inside the prompt stays; Version v1.7.0 (< v1.7.0-225) -> Downcast alphas_cumprod.
MULTILINE = (
    "a castle on a hill  \n"
    "\n"
    "  at sunset, golden hour\n"
    "Negative prompt: blurry,\n"
    "   low quality, watermark\n"
    "Steps: 30, Sampler: Euler a, CFG scale: 7.5, Seed: 42, Size: 768x512, Model hash: 6ce0161689, "
    "Model: v1-5-pruned-emaonly, Version: v1.7.0"
)
MULTILINE_EXPECTED = expected(
    "a castle on a hill\n\nat sunset, golden hour",
    "blurry,\nlow quality, watermark",
    **{
        "Steps": "30",
        "Sampler": "Euler a",
        "CFG scale": "7.5",
        "Seed": "42",
        "Size-1": "768",
        "Size-2": "512",
        "Model hash": "6ce0161689",
        "Model": "v1-5-pruned-emaonly",
        "Version": "v1.7.0",
        "Downcast alphas_cumprod": "True",
    },
)

# 7. No negative prompt, and a prompt that itself contains "Steps:" text: only the last line is the
#    parameters line; the prompt line with "Steps: 5" stays prompt.
STEPS_IN_PROMPT = (
    "photo of a staircase, Steps: 5, Seed: 3, Size: big\n"
    "Steps: 20, Sampler: Euler, CFG scale: 6, Seed: 1234, Size: 512x512, Model: sd_xl_base_1.0"
)
STEPS_IN_PROMPT_EXPECTED = expected(
    "photo of a staircase, Steps: 5, Seed: 3, Size: big",
    "",
    **{
        "Steps": "20",
        "Sampler": "Euler",
        "CFG scale": "6",
        "Seed": "1234",
        "Size-1": "512",
        "Size-2": "512",
        "Model": "sd_xl_base_1.0",
    },
)

# 8. Unicode everywhere (Japanese prompt, model name); v1.8.0 -> no flags.
UNICODE = (
    "猫耳, 少女, 桜の木の下, (笑顔:1.2)\n"
    "Negative prompt: 低品質, ぼやけた\n"
    "Steps: 28, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model: アニメ_v2, Lora hashes: "
    '"ネコ: 0123456789ab", Version: v1.8.0'
)
UNICODE_EXPECTED = expected(
    "猫耳, 少女, 桜の木の下, (笑顔:1.2)",
    "低品質, ぼやけた",
    **{
        "Steps": "28",
        "Sampler": "Euler a",
        "CFG scale": "7",
        "Seed": "123",
        "Size-1": "512",
        "Size-2": "512",
        "Model": "アニメ_v2",
        "Lora hashes": "ネコ: 0123456789ab",
        "Version": "v1.8.0",
        "Emphasis": "Original",
    },
)

# 9. Very old (v1.5.1) infotext: a hypernetwork becomes a prompt tag; Version < 1.6.0 with "[" in the
#    prompt -> "Old prompt editing timelines"; DDIM before 1.6.0 -> "Pad conds v0"; [a:b:N] counts as
#    square-bracket emphasis in A1111's attention parser -> "Emphasis: Original".
OLD_HYPERNET = (
    "a [cat:dog:10] in a garden\n"
    "Steps: 20, Sampler: DDIM, CFG scale: 7, Seed: 5, Size: 512x512, Hypernet: anime_3, Hypernet strength: 0.5, "
    "Version: v1.5.1"
)
OLD_HYPERNET_EXPECTED = expected(
    "a [cat:dog:10] in a garden<hypernet:anime_3:0.5>",
    "",
    **{
        "Steps": "20",
        "Sampler": "DDIM",
        "CFG scale": "7",
        "Seed": "5",
        "Size-1": "512",
        "Size-2": "512",
        "Hypernet": "anime_3",
        "Hypernet strength": "0.5",
        "Version": "v1.5.1",
        "Old prompt editing timelines": "True",
        "Pad conds v0": "True",
        "Downcast alphas_cumprod": "True",
        "Emphasis": "Original",
    },
)

# 10. Forge-style FP8 and a Version no PEP 440 parser reads: FP8 on -> "Cache FP16 weight for LoRA"
#     default False; the odd Version gives no flags; escaped \( \) is no emphasis.
FP8 = (
    r"a \(sign\) saying hello" + "\n"
    "Steps: 25, Sampler: DPM++ 2M SDE Heun, Schedule type: Exponential, CFG scale: 4, Seed: 9, Size: 1024x1024, "
    "FP8 weight: Enable for SDXL, Version: f2.0.1v1.10.1-previous-313-g8a042934"
)
FP8_EXPECTED = expected(
    r"a \(sign\) saying hello",
    "",
    **{
        "Steps": "25",
        "Sampler": "DPM++ 2M SDE Heun",
        "Schedule type": "Exponential",
        "CFG scale": "4",
        "Seed": "9",
        "Size-1": "1024",
        "Size-2": "1024",
        "FP8 weight": "Enable for SDXL",
        "Cache FP16 weight for LoRA": "False",
        "Version": "f2.0.1v1.10.1-previous-313-g8a042934",
    },
)


@pytest.mark.parametrize(
    ("text", "want"),
    [
        pytest.param(ADETAILER, ADETAILER_EXPECTED, id="adetailer-controlnet-lora-ti"),
        pytest.param(HASHES_JSON, HASHES_JSON_EXPECTED, id="sdxl-hires-unquoted-json"),
        pytest.param(OLD_HIRES, OLD_HIRES_EXPECTED, id="old-hires-first-pass-size"),
        pytest.param(CONTROLNET, CONTROLNET_EXPECTED, id="controlnet-schedule-type"),
        pytest.param(HIRES_RESIZE, HIRES_RESIZE_EXPECTED, id="hires-resize"),
        pytest.param(MULTILINE, MULTILINE_EXPECTED, id="multiline"),
        pytest.param(STEPS_IN_PROMPT, STEPS_IN_PROMPT_EXPECTED, id="steps-in-prompt-no-negative"),
        pytest.param(UNICODE, UNICODE_EXPECTED, id="unicode"),
        pytest.param(OLD_HYPERNET, OLD_HYPERNET_EXPECTED, id="old-hypernet-version-flags"),
        pytest.param(FP8, FP8_EXPECTED, id="fp8-forge-version"),
    ],
)
def test_parse_real_world(text: str, want: dict[str, str]) -> None:
    assert infotext.parse(text) == want


def test_every_value_is_a_string() -> None:
    # A1111 mixes ints/bools into its defaults; we promise dict[str, str].
    for text in (ADETAILER, OLD_HIRES, FP8, "", "x"):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in infotext.parse(text).items())


# --- the parameters-line rules ------------------------------------------------------------------------


def test_last_line_with_fewer_than_three_entries_is_prompt() -> None:
    got = infotext.parse("a cat\nSteps: 20, Sampler: Euler")
    assert got["Prompt"] == "a cat\nSteps: 20, Sampler: Euler"
    assert "Steps" not in got and "Sampler" not in got


def test_three_entries_make_a_parameters_line() -> None:
    got = infotext.parse("a cat\nSteps: 20, Sampler: Euler, Seed: 7")
    assert got["Prompt"] == "a cat"
    assert (got["Steps"], got["Sampler"], got["Seed"]) == ("20", "Euler", "7")


def test_parameters_only() -> None:
    got = infotext.parse("Steps: 20, Sampler: Euler, Seed: 7")
    assert got["Prompt"] == "" and got["Negative prompt"] == ""
    assert got["Steps"] == "20"


def test_empty_and_blank_text() -> None:
    for text in ("", "   \n\n  "):
        assert infotext.parse(text) == expected("", "")


def test_negative_prompt_line_without_text_and_repeated_marker() -> None:
    # A1111 drops the empty first negative line (it only adds "\n" once something is there) and
    # strips a second "Negative prompt:" marker too.
    got = infotext.parse("p\nNegative prompt:\nugly\nNegative prompt: bad\nSteps: 1, Seed: 2, CFG scale: 3")
    assert got["Prompt"] == "p"
    assert got["Negative prompt"] == "ugly\nbad"


def test_empty_value_is_dropped_and_default_applies() -> None:
    # A1111 raises internally on an empty value (v[0]) and skips the entry.
    got = infotext.parse("p\nSteps: 20, Clip skip: , RNG: , Seed: 1")
    assert got["Clip skip"] == "1" and got["RNG"] == "GPU"


def test_quoted_value_with_escapes_and_invalid_json() -> None:
    got = infotext.parse('p\nAa: "x, \\"y\\": z", Bb: "not json\\q, C", Dd: "", Ee: 1')
    assert got["Aa"] == 'x, "y": z'
    # invalid JSON escape: the quoted form matches, json.loads fails, the text is kept as written
    assert got["Bb"] == '"not json\\q, C"'
    assert got["Dd"] == ""  # `""` is too short for the quoted form, but then unquoted as JSON
    assert got["Ee"] == "1"


def test_key_must_be_two_characters() -> None:
    got = infotext.parse("p\nA: 1, BB: 2, C-D: 3, E/F: 4")
    assert "A" not in got
    assert (got["BB"], got["C-D"], got["E/F"]) == ("2", "3", "4")


def test_explicit_schedule_type_and_scheduler_suffix() -> None:
    assert infotext.split_sampler_scheduler("DPM++ 2M Karras") == ("DPM++ 2M", "Karras")
    assert infotext.split_sampler_scheduler("DPM++ 2M SDE Exponential") == ("DPM++ 2M SDE", "Exponential")
    assert infotext.split_sampler_scheduler("Euler a") == ("Euler a", None)
    assert infotext.split_sampler_scheduler("DDIM") == ("DDIM", None)
    assert infotext.split_sampler_scheduler("Euler SGMUniform") == ("Euler", "SGM Uniform")
    got = infotext.parse("p\nSteps: 9, Sampler: LMS Karras, Hires sampler: DPM2 a Karras, Seed: 1")
    assert (got["Sampler"], got["Schedule type"]) == ("LMS", "Karras")
    assert (got["Hires sampler"], got["Hires schedule type"]) == ("DPM2 a", "Karras")


def test_first_pass_size_explicit_and_invalid() -> None:
    got = infotext.parse("p\nSteps: 1, Size: 1024x512, First pass size: 512x256")
    assert (got["Size-1"], got["Size-2"], got["Hires resize-1"], got["Hires resize-2"]) == (
        "512",
        "256",
        "1024",
        "512",
    )
    # 0x0 with a 0x0 size: A1111 divides by zero; we keep the sizes as written.
    got = infotext.parse("p\nSteps: 1, Size: 0x0, First pass size: 0x0")
    assert (got["Size-1"], got["Hires resize-1"]) == ("0", "0")


def test_emphasis_default() -> None:
    base = "\nSteps: 1, Seed: 2, CFG scale: 3"
    assert infotext.parse("(a:1.0), b" + base).get("Emphasis") is None  # weight 1 is no emphasis
    assert infotext.parse("[a]" + base)["Emphasis"] == "Original"
    assert infotext.parse("a BREAK b" + base).get("Emphasis") is None
    assert infotext.parse("(a:.)" + base).get("Emphasis") is None  # A1111 raises on this weight
    assert infotext.parse("a" + base + ", Emphasis: No norm")["Emphasis"] == "No norm"


def test_unknown_keys_and_duplicates() -> None:
    got = infotext.parse("p\nSteps: 1, My Extension/opt-1: on, Steps: 2, Seed: 3")
    assert got["My Extension/opt-1"] == "on"
    assert got["Steps"] == "2"  # the later entry wins, like a dict update


def test_parse_is_linear_on_long_lines() -> None:
    # A1111's regex takes minutes on this (quadratic); a crafted PNG must not stall png-info.
    start = time.perf_counter()
    got = infotext.parse("p\n" + "a" * 200_000 + ": 1, b b: 2, cc: 3")
    assert time.perf_counter() - start < 2.0
    assert got["b b"] == "2"
    start = time.perf_counter()
    infotext.parse("(" * 50_000 + "a" * 10 + "[x" * 20_000)
    assert time.perf_counter() - start < 5.0


# --- the scanner is A1111's regex, exactly ------------------------------------------------------------

# A1111's parameter pattern (modules/infotext_utils.py), used here only as the reference.
A1111_PARAM_RE = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
TRICKY = st.text(alphabet=st.sampled_from(list(' \t\n_-/:,"\\aZ9é\u3000x\u00a0\u2028')), max_size=40)


@settings(max_examples=1500, deadline=None)
@given(TRICKY)
@example('k: "a"b, cd: "x\\"y", ef:"",gh: "\\')
@example("ab \tcd: x")
@example('kk: "v"\n')
def test_iter_params_matches_a1111_regex(line: str) -> None:
    assert list(infotext.iter_params(line)) == A1111_PARAM_RE.findall(line)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_iter_params_matches_a1111_regex_any_text(line: str) -> None:
    assert list(infotext.iter_params(line)) == A1111_PARAM_RE.findall(line)


# --- never raises -----------------------------------------------------------------------------------


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.text(),
        st.text(alphabet=st.sampled_from(list('ab:, \n"\\()[]x0123456789-.+BREAK')), max_size=200),
        st.lists(st.text(max_size=30), max_size=8).map("\n".join),
    )
)
@example("(a:.)\nSteps: 1, Seed: 2, CFG scale: 3, First pass size: 0x0, Size: 0x0")
@example("p\nA: 1, Size-1: x, First pass size: 0x0, Size: 5x5, Version: v1.0.0.dev0+garbage")
@example("\ud800\nSteps: \udfff, Seed: 2, CFG scale: 3")
def test_parse_never_raises(text: str) -> None:
    got = infotext.parse(text)
    assert isinstance(got["Prompt"], str) and isinstance(got["Negative prompt"], str)
    assert all(isinstance(v, str) for v in got.values())


# --- format -----------------------------------------------------------------------------------------


def test_format_like_create_infotext() -> None:
    text = infotext.format(
        "a cat",
        "ugly",
        {
            "Steps": 20,
            "Sampler": "Euler a",
            "CFG scale": 7.0,
            "Seed": 1,
            "Size": "512x768",
            "Model hash": None,
            "Lora hashes": "a: 0123, b: 4567",
            "Note": "two\nlines",
            "Tiling": "Tiling",
            "Flag": True,
        },
    )
    assert text == (
        "a cat\nNegative prompt: ugly\n"
        'Steps: 20, Sampler: Euler a, CFG scale: 7.0, Seed: 1, Size: 512x768, Lora hashes: "a: 0123, b: 4567", '
        'Note: "two\\nlines", Tiling, Flag: True'
    )


def test_format_without_negative_or_params() -> None:
    assert infotext.format("a cat", "", {"Steps": 20, "Seed": 1, "CFG scale": 7}) == (
        "a cat\nSteps: 20, Seed: 1, CFG scale: 7"
    )
    assert infotext.format("a cat") == "a cat"
    assert infotext.format("", "neg", {}) == "Negative prompt: neg"


def test_quote_keeps_unicode_and_quotes_only_when_needed() -> None:
    assert infotext.quote("猫") == "猫"
    assert infotext.quote("猫: 1") == '"猫: 1"'
    assert infotext.quote('say "hi", ok') == '"say \\"hi\\", ok"'
    assert infotext.unquote(infotext.quote('say "hi", ok')) == 'say "hi", ok'


# --- round trip -------------------------------------------------------------------------------------

# Keys A1111 treats specially when parsing (they add or move other fields), kept out of random params.
RESERVED_KEYS = {
    "Prompt",
    "Negative prompt",
    "Hypernet",
    "Hypernet strength",
    "Version",
    "Refiner",
    "Emphasis",
}
SPECIAL_KEY_PREFIXES = ("First pass size", "Size", "Hires resize", "Sampler", "Hires sampler")

line_text = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\n"), max_size=30).map(
    str.strip
)
prompts = st.lists(line_text.filter(bool), max_size=3).map("\n".join)
keys = st.from_regex(r"[A-Za-z][A-Za-z0-9 _/-]{1,15}", fullmatch=True).filter(
    lambda k: k not in RESERVED_KEYS and not k.startswith(SPECIAL_KEY_PREFIXES)
)
values = st.one_of(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=30),
    st.integers(),
    st.floats(allow_nan=False),
    st.sampled_from(["Euler a", "a: 0123, b: 4567", "x\ny", '{"a": 1}', "DPM++ 2M", "0.5"]),
)


def a1111_cannot_round_trip(prompt: str, negative: str, params: dict[str, object]) -> str | None:
    """Why A1111's own format -> parse would not give these back (None when it would).

    The format is ambiguous by design, so some inputs cannot survive A1111's writer + reader. The
    main class: a parameters line that the reader does not recognise as one, either because it has
    fewer than 3 entries or because there are no parameters and the prompt's last line looks like a
    parameters line; then the lines are read as prompt text. The other cases are values A1111 writes
    unquoted although its reader changes them: the empty string (dropped), text with leading or
    trailing whitespace (stripped), text in double quotes (read as JSON), "WxH" sizes (split into -1/-2),
    a value equal to its key (written as a bare flag), and prompt lines starting "Negative prompt:".
    """
    written = {k: v for k, v in params.items() if v is not None}
    if 0 < len(written) < 3:
        return "fewer than 3 entries: the parameters line is read as prompt"
    if not written:
        last_line = (f"Negative prompt: {negative}" if negative else prompt).split("\n")[-1]
        if len(A1111_PARAM_RE.findall(last_line)) >= 3:
            return "no parameters and the last prompt line looks like a parameters line"
    if any(line.startswith("Negative prompt:") for line in prompt.split("\n") + negative.split("\n")[1:]):
        return "a prompt line starting with the negative prompt marker"
    for key, value in written.items():
        text = str(value)
        quoted = text != infotext.quote(value)
        if key == value:
            return "a value equal to its key is written as a bare flag"
        if not quoted and (text == "" or text != text.strip()):
            return "unquoted empty or space-padded value"
        if not quoted and len(text) >= 2 and text[0] == '"' and text[-1] == '"':
            return "unquoted value in double quotes is read as JSON"
        if re.match(r"^(\d+)x(\d+)$", text):
            return "a WxH value is split into -1/-2"
    return None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(prompts, prompts, st.dictionaries(keys, st.one_of(st.none(), values), max_size=8))
@example("a, b\nc", "", {"Steps": 20, "Sampler": "Euler a", "CFG scale": 7.5, "Lora hashes": "x: 1, y: 2"})
@example("猫", "犬\n鳥", {"Model": "アニメ", "Seed": -1, "Note": 'say "hi"\nbye', "Empty": None})
def test_round_trip(prompt: str, negative: str, params: dict[str, object]) -> None:
    assume(a1111_cannot_round_trip(prompt, negative, params) is None)
    got = infotext.parse(infotext.format(prompt, negative, params))
    assert got["Prompt"] == prompt
    assert got["Negative prompt"] == negative
    for key, value in params.items():
        if value is None:
            assert key not in got or got[key] == DEFAULTS.get(key)
        else:
            assert got[key] == str(value), key


@pytest.mark.parametrize(
    ("prompt", "negative", "params"),
    [
        ("p", "", {"Steps": 20, "Seed": 1}),  # fewer than 3 entries
        ("aa: 1, bb: 2, cc: 3", "", {}),  # prompt's last line looks like parameters
        ("p", "", {"Steps": 20, "Seed": 1, "Note": " padded"}),
        ("p", "", {"Steps": 20, "Seed": 1, "Note": '"quoted"'}),
        ("p", "", {"Steps": 20, "Seed": 1, "Area": "3x4"}),
    ],
)
def test_round_trip_exceptions_really_are_exceptions(prompt: str, negative: str, params: dict) -> None:
    assert a1111_cannot_round_trip(prompt, negative, params) is not None
    got = infotext.parse(infotext.format(prompt, negative, params))
    assert got["Prompt"] != prompt or any(got.get(k) != str(v) for k, v in params.items())


def test_json_quoted_values_survive_round_trip() -> None:
    params = {"Steps": 1, "Seed": 2, "Data": json.dumps({"a": [1, 2], "b": "c, d"})}
    got = infotext.parse(infotext.format("p", "n", params))
    assert json.loads(got["Data"]) == {"a": [1, 2], "b": "c, d"}

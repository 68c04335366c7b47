"""The bridge between a GenerationRequest and A1111's infotext keys, both ways.

Writing: the keys A1111 writes for the same settings, so other tools read our PNGs. Reading: any A1111
or sfumato infotext (already parsed by `sfumato.infotext.parse`) back into request fields, so
`txt2img --from-png` rebuilds the request and, on the same device, the same pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sfumato import __version__
from sfumato.sampling.samplers import split_sampler_name


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def infotext_params(
    request_fields: Mapping[str, Any],
    *,
    seed: int,
    subseed: int,
    width: int,
    height: int,
    model_name: str | None,
    model_hash: str | None,
    vae_name: str | None = None,
    vae_hash: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Infotext parameters for one image, in A1111's key order."""
    r = request_fields
    extra = dict(extra or {})
    strength = r.get("subseed_strength", 0.0)
    tome = r.get("token_merging_ratio", 0.0)
    tome_hr = (r.get("token_merging_ratio_hr") or tome) if r.get("enable_hr") else 0.0
    resize = (r.get("seed_resize_from_w", 0), r.get("seed_resize_from_h", 0))
    params: dict[str, Any] = {
        "Steps": r["steps"],
        "Sampler": r["sampler_name"],
        "Schedule type": r["scheduler"] if r.get("scheduler", "Automatic") != "Automatic" else None,
        "CFG scale": _number(r["cfg_scale"]),
        "Image CFG scale": _number(v) if (v := extra.pop("Image CFG scale", None)) is not None else None,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model hash": model_hash,
        "Model": model_name,
        "VAE hash": vae_hash,
        "VAE": vae_name,
        "Variation seed": subseed if strength > 0 else None,
        "Variation seed strength": _number(strength) if strength > 0 else None,
        "Seed resize from": f"{resize[0]}x{resize[1]}" if resize[0] > 0 and resize[1] > 0 else None,
        "Denoising strength": _number(v)
        if (v := extra.pop("Denoising strength", None)) is not None
        else None,
        "Eta": _number(r["eta"]) if r.get("eta") is not None else None,
        "Clip skip": r["clip_skip"] if r.get("clip_skip", 1) > 1 else None,
        "Token merging ratio": _number(tome) if tome else None,
        "Token merging ratio hr": _number(tome_hr) if tome_hr else None,  # the pass's own, as A1111
        "Emphasis": r["emphasis"] if r.get("emphasis", "Original") != "Original" else None,
        "Pad conds": True if r.get("pad_conds") else None,
        "NGMS": _number(r["s_min_uncond"]) if r.get("s_min_uncond") else None,
        "NGMS all steps": True if r.get("s_min_uncond") and r.get("s_min_uncond_all") else None,
        "DeepCache interval": r["deepcache_interval"] if r.get("deepcache_interval", 0) > 1 else None,
        "VAE Decoder": r["sd_vae_decode_method"] if r.get("sd_vae_decode_method", "Full") != "Full" else None,
        **extra,
        "Version": f"sfumato {__version__}",
    }
    return {k: v for k, v in params.items() if v is not None}


def ti_hashes(embeddings: Mapping[str, Any]) -> str | None:
    """A1111's "TI hashes" value: `name: shorthash` pairs, names stripped of `:` and `,`."""
    pairs = [
        f"{name.replace(':', '').replace(',', '')}: {e.shorthash}" for name, e in sorted(embeddings.items())
    ]
    return ", ".join(pairs) or None


def _int(value: Any) -> int | None:
    try:
        return int(float(str(value).strip()))
    except ValueError:
        return None


def _float(value: Any) -> float | None:
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def request_fields_from_infotext(parsed: Mapping[str, Any]) -> dict[str, Any]:
    """Request fields from a parsed infotext; keys it cannot read are left out, never guessed."""
    fields: dict[str, Any] = {
        "prompt": parsed.get("Prompt", ""),
        "negative_prompt": parsed.get("Negative prompt", ""),
    }
    if "Sampler" in parsed:
        sampler, schedule = split_sampler_name(str(parsed["Sampler"]))
        fields["sampler_name"] = sampler
        fields["scheduler"] = schedule or str(parsed.get("Schedule type") or "Automatic")
    numeric = {
        "steps": ("Steps", _int),
        "cfg_scale": ("CFG scale", _float),
        "seed": ("Seed", _int),
        "width": ("Size-1", _int),
        "height": ("Size-2", _int),
        "clip_skip": ("Clip skip", _int),
        "eta": ("Eta", _float),
        "seed_resize_from_w": ("Seed resize from-1", _int),
        "seed_resize_from_h": ("Seed resize from-2", _int),
        "denoising_strength": ("Denoising strength", _float),
        "image_cfg_scale": ("Image CFG scale", _float),
        "mask_blur": ("Mask blur", _int),
        "inpaint_full_res_padding": ("Masked area padding", _int),
        "initial_noise_multiplier": ("Noise multiplier", _float),
        "hr_scale": ("Hires upscale", _float),
        "hr_second_pass_steps": ("Hires steps", _int),
        "hr_resize_x": ("Hires resize-1", _int),
        "hr_resize_y": ("Hires resize-2", _int),
        "s_min_uncond": ("NGMS", _float),
        "token_merging_ratio": ("Token merging ratio", _float),
        "token_merging_ratio_hr": ("Token merging ratio hr", _float),
        "deepcache_interval": ("DeepCache interval", _int),
    }
    for field, (key, convert) in numeric.items():
        if key in parsed and (value := convert(parsed[key])) is not None:
            fields[field] = value
    if "Variation seed" in parsed and (strength := _float(parsed.get("Variation seed strength", 0))):
        fields["subseed"] = _int(parsed["Variation seed"])
        fields["subseed_strength"] = strength
    _img2img_choices(parsed, fields)
    _hires_choices(parsed, fields)
    if str(parsed.get("Pad conds", "")).lower() == "true":
        fields["pad_conds"] = True
    if str(parsed.get("NGMS all steps", "")).lower() == "true":
        fields["s_min_uncond_all"] = True
    if parsed.get("VAE Decoder") in ("Full", "TAESD"):
        fields["sd_vae_decode_method"] = parsed["VAE Decoder"]
    if parsed.get("Emphasis") in ("Original", "No norm", "None"):
        fields["emphasis"] = parsed["Emphasis"]
    for field in ("seed_resize_from_w", "seed_resize_from_h"):
        if fields.get(field, 0) < 0:  # A1111 writes -1 for "off"
            fields[field] = 0
    return fields


MASKED_CONTENT_KEYS = {"fill": 0, "original": 1, "latent noise": 2, "latent nothing": 3}


def _img2img_choices(parsed: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """img2img's named choices. Present only in img2img infotexts; a txt2img request ignores them.
    A mask's infotext without "Inpaint area" was painted over the whole picture."""
    if "Mask blur" in parsed:
        fields["inpaint_full_res"] = parsed.get("Inpaint area") == "Only masked"
        fields["inpainting_fill"] = MASKED_CONTENT_KEYS.get(str(parsed.get("Masked content", "original")), 1)
        fields["inpainting_mask_invert"] = int(parsed.get("Mask mode") == "Inpaint not masked")


def _hires_choices(parsed: Mapping[str, Any], fields: dict[str, Any]) -> None:
    """The hires fix is on when the infotext names its upscaler, scale or a resize."""
    on = "Hires upscaler" in parsed or "Hires upscale" in parsed or fields.get("hr_resize_x", 0) > 0
    if not on:
        return
    fields["enable_hr"] = True
    for field, key in (
        ("hr_upscaler", "Hires upscaler"),
        ("hr_sampler_name", "Hires sampler"),
        ("hr_scheduler", "Hires schedule type"),
        ("hr_prompt", "Hires prompt"),
        ("hr_negative_prompt", "Hires negative prompt"),
    ):
        if parsed.get(key) not in (None, "Use same sampler", "Use same scheduler"):
            fields[field] = str(parsed[key])

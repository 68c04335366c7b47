"""Run the shapes-world evaluation on a checkpoint: held-out prompts in, per-attribute accuracy out."""

from __future__ import annotations

import time
from typing import Any

from PIL import Image
from tqdm import tqdm

from sfumato.data.shapes import eval_prompts, render
from sfumato.devices import pick_device, pick_dtype
from sfumato.errors import UserError
from sfumato.eval.shapes import check_image, summarise
from sfumato.models.loader import LoadedModel
from sfumato.models.registry import ModelManager
from sfumato.request import GenerationRequest, build_request
from sfumato.settings import Settings
from sfumato.tasks.common import decode_latents, encode_pixels, image_to_pixels
from sfumato.tasks.txt2img import generate


def evaluate_checkpoint(
    settings: Settings,
    *,
    model: str | None = None,
    count: int = 200,
    seed: int = 0,
    steps: int = 20,
    sampler: str = "DPM++ 2M",
    fields: dict[str, Any] | None = None,
    reconstruct: bool = False,
) -> dict[str, Any]:
    """Generate `count` one-object and `count // 2` two-object held-out prompts at the model's native
    size and score them with the independent checker, at the settings the model recommends
    (`models.recommended`: the embedded model's CFG scale) and A1111's defaults for the rest. `fields`
    are request fields for every image (an approximation's, say, or another CFG scale, sampler or step
    count: they override the arguments), validated before the first image and named in the report.

    `short_prompts` scores `count // 4` of the one-object scenes again, prompted as people often write
    ("a red circle on a white background": no size, no position), on what those prompts ask for.

    With `reconstruct`, each image is instead the prompt's scene rendered by the world's renderer and
    sent through the model's VAE (encode, decode): the ceiling the model's generations can reach."""
    fields = dict(fields or {})
    known = set(GenerationRequest.model_fields) - {"prompt", "seed"}
    if unknown := sorted(set(fields) - known):
        raise UserError(f"unknown request field {unknown[0]!r} for eval", field="set")
    device = pick_device(settings.device)
    manager = ModelManager(settings, device=device, dtype=pick_dtype(device, settings.dtype))
    loaded = manager.load(model)
    settled = manager.recommended_fields(model) | {"steps": steps, "sampler_name": sampler} | fields
    cfg_scale = build_request(**settled).cfg_scale  # validates `fields` before the first image
    prompts = eval_prompts(count, seed=seed, two_objects=False)
    prompts += eval_prompts(count // 2, seed=seed, two_objects=True)
    short = eval_prompts(count // 4, seed=seed, two_objects=False, unnamed=("size", "cell"))
    verdicts, seconds = [], []
    for index, (text, scene) in enumerate(
        tqdm(prompts + short, desc="eval shapes", unit="image", leave=False)
    ):
        start = time.perf_counter()
        if reconstruct:
            image = round_trip(loaded, render(scene, loaded.native_size[0]))
        else:
            request = build_request(prompt=text, seed=seed + index, **settled)
            image = generate(loaded, request).images[0].image
        seconds.append(time.perf_counter() - start)
        verdicts.append((scene, check_image(image, scene)))
    report: dict[str, Any] = summarise(verdicts[: len(prompts)])
    short_report = summarise(verdicts[len(prompts) :])
    report["short_prompts"] = {
        key: short_report[key] for key in ("images", "colour", "shape", "background", "count")
    }
    report.update(
        model=loaded.name,
        native_size=list(loaded.native_size),
        steps=settled["steps"],
        sampler=settled["sampler_name"],
        cfg_scale=cfg_scale,
        fields=fields,
        reconstruct=reconstruct,
        seconds_per_image_median=round(sorted(seconds)[len(seconds) // 2], 3),
    )
    return report


def round_trip(model: LoadedModel, image: Image.Image) -> Image.Image:
    """`image` encoded and decoded by the model's VAE."""
    return decode_latents(model, encode_pixels(model, image_to_pixels(image)))[0]

"""The A1111-compatible HTTP API (`/sdapi/v1/*`): same paths, field names, defaults and responses.

Bodies are pydantic models built on `GenerationRequest`, so an A1111 body validates field by field
(422 naming the field) and unknown fields are ignored. Generation endpoints submit a job to the
persistent queue and wait for it; the job carries the request fully resolved (options, override
settings, seeds), which is what makes a queued job survive a restart unchanged.

Where we differ from A1111, on purpose:
- an omitted `width`/`height` means the model's native size (512 for SD1 checkpoints, as in A1111;
  64 for the embedded default model);
- asking for a feature this build does not have (face restoration, tiling, scripts other than
  img2img's "Poor man's outpainting" and "SD upscale") is a 422 naming the field instead of being silently ignored, so
  a client never gets an image it did not ask for.
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import asdict
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from sfumato import infotext
from sfumato.errors import UserError
from sfumato.models.recommended import RECOMMENDABLE
from sfumato.pnginfo import read_metadata
from sfumato.request import GenerationRequest, Img2ImgRequest, validated
from sfumato.sampling.samplers import SAMPLERS
from sfumato.sampling.schedules import SCHEDULES
from sfumato.server import listings, sd_upscale_script
from sfumato.server.images import decode_image, encode_png
from sfumato.server.options import request_fields
from sfumato.server.outpainting import SCRIPT_TITLE, is_outpainting, outpaint, parse_script_args
from sfumato.server.state import ServerState
from sfumato.tasks.common import resolve_seed
from sfumato.tasks.extras import FILTERS, ResizeTarget, upscale, upscaler_names
from sfumato.tasks.hires import LATENT_UPSCALERS
from sfumato.tasks.txt2img import resolve_sampler

router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"])


class ApiOptions(BaseModel):
    """A1111's API fields beside the generation settings, shared by txt2img and img2img."""

    styles: list[str] = Field(default_factory=list)
    override_settings: dict[str, Any] = Field(default_factory=dict)
    override_settings_restore_afterwards: bool = True
    send_images: bool = True
    save_images: bool = False
    sampler_index: str | None = None
    restore_faces: bool | None = None
    tiling: bool | None = None
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)


class Txt2ImgBody(GenerationRequest, ApiOptions):
    """A1111's `StableDiffusionTxt2ImgProcessingAPI`: the generation request plus the API options."""


class Img2ImgBody(Img2ImgRequest, ApiOptions):
    """A1111's `StableDiffusionImg2ImgProcessingAPI`. The first of `init_images` is used (A1111 too
    paints one init per batch unless a script spreads several); `mask` white = repaint."""

    init_images: list[str] = Field(default_factory=list, description="base64 images")
    mask: str | None = Field(None, description="base64 mask, white = repaint")
    include_init_images: bool = False


class TextToImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNGs, infotext inside")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, infotexts, model name and hash …")


class PNGInfoBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(description="base64 image (a data: URL prefix is accepted)")


class ExtrasOptions(BaseModel):
    """A1111's extras fields shared by the single- and batch-image endpoints."""

    model_config = ConfigDict(extra="ignore")
    resize_mode: Literal[0, 1] = 0
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    upscaling_resize: float = Field(2.0, gt=0.0, le=16.0)
    upscaling_resize_w: int = Field(512, ge=1, le=16384)
    upscaling_resize_h: int = Field(512, ge=1, le=16384)
    upscaling_crop: bool = True
    upscaler_1: str = "None"
    upscaler_2: str = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False


class ExtrasSingleImageBody(ExtrasOptions):
    image: str = Field(description="base64 image")


class FileData(BaseModel):
    data: str = Field(description="base64 image")
    name: str = ""


class ExtrasBatchImagesBody(ExtrasOptions):
    imageList: list[FileData] = Field(description="images to process")  # A1111 spells it so


class PNGInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


def unsupported_features(body: ApiOptions, scripts: tuple[str, ...] = ()) -> None:
    """Refuse, naming the field, features this build cannot honour yet; `scripts` are the script
    titles this endpoint runs (A1111 matches them case-insensitively)."""
    wanted = {
        "restore_faces": bool(body.restore_faces),
        "tiling": bool(body.tiling),
        "alwayson_scripts": bool(body.alwayson_scripts),
    }
    for field, asked in wanted.items():
        if asked:
            raise UserError(f"{field}: not supported by this version of sfumato", field=field)
    name = (body.script_name or "").strip()
    if name and name.lower() not in {title.lower() for title in scripts}:
        offered = f" (it has {', '.join(repr(t) for t in scripts)})" if scripts else ""
        raise UserError(
            f"script_name: {body.script_name!r} is not a script of this endpoint in this version of "
            f"sfumato{offered}",
            field="script_name",
        )


def generation_fields(
    body: Txt2ImgBody | Img2ImgBody,
    state: ServerState,
    kind: type[GenerationRequest] = GenerationRequest,
    forced: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The job's fully resolved request: the model's recommended settings < options <
    override_settings < the body's own fields < `forced` (what a script sets)."""
    overrides = state.options.validated(body.override_settings)
    img2img = issubclass(kind, Img2ImgRequest)
    base = {
        **request_fields(state.options.snapshot(), img2img=img2img),
        **request_fields(overrides, img2img=img2img),
    }
    own = body.model_dump(include=set(kind.model_fields) & body.model_fields_set)
    if "sampler_name" not in own and body.sampler_index:
        own["sampler_name"] = body.sampler_index
    fields = {**base, **own, **(forced or {})}
    # Only files in the model folders: a client naming any path on the machine must not load it.
    if fields.get("model"):
        fields["model"] = str(state.checkpoint_in_folders(fields["model"], "model"))
    if fields.get("vae") and fields["vae"].lower() not in ("automatic", "none"):
        fields["vae"] = str(state.vae_in_folders(fields["vae"], "vae"))
    request = validated(kind, {**state.engine.manager.recommended_fields(fields.get("model")), **fields})
    resolve_sampler(request)  # an unknown sampler fails now, not in the queue
    request.seed = resolve_seed(request.seed)
    request.subseed = resolve_seed(request.subseed)
    if not body.override_settings_restore_afterwards and overrides:
        state.options.update(overrides)
    return request.model_dump(mode="json")


@router.post("/txt2img", response_model=TextToImageResponse)
async def txt2img(body: Txt2ImgBody, request: Request) -> dict[str, Any]:
    state: ServerState = request.app.state.sfumato
    unsupported_features(body)
    generation = await run_in_threadpool(generation_fields, body, state)  # scans folders, may hash
    return await _generate(state, "txt2img", body, {"generation": generation})


def img2img_job_request(body: Img2ImgBody, state: ServerState) -> dict[str, Any]:
    """An img2img job's request: the resolved generation fields, and the init image and mask as PNG
    base64 (they travel in the job, so a queued job survives a restart like a txt2img one). With the
    outpainting script the init image is the grown canvas and the mask its margins."""
    unsupported_features(body, scripts=(SCRIPT_TITLE, sd_upscale_script.SCRIPT_TITLE))
    if not body.init_images:
        raise UserError("init_images: at least one image is needed", field="init_images")
    image, _ = decode_image(body.init_images[0], "init_images.0")
    mask = decode_image(body.mask, "mask")[0] if body.mask else None
    forced: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if is_outpainting(body.script_name):
        if mask is not None:
            raise UserError(f"mask: {SCRIPT_TITLE} paints the new margins and takes no mask", field="mask")
        image, mask, forced = outpaint(image, parse_script_args(body.script_args))
    elif sd_upscale_script.is_sd_upscale(body.script_name):
        if mask is not None:
            raise UserError("mask: SD upscale redraws the whole picture and takes no mask", field="mask")
        names = upscaler_names(state.upscalers)
        extra["sd_upscale"] = asdict(sd_upscale_script.parse_script_args(body.script_args, names))
    generation = generation_fields(body, state, Img2ImgRequest, forced)
    tile = [side for side in (generation.get("width"), generation.get("height")) if side]
    if "sd_upscale" in extra and tile and extra["sd_upscale"]["overlap"] >= min(tile):
        raise UserError(
            f"script_args.1: the tile overlap must be less than the tile size ({min(tile)} px)",
            field="script_args.1",
        )
    inputs = {"init_image": encode_png(image), "mask": encode_png(mask) if mask is not None else None}
    return {"generation": generation, "inputs": inputs, **extra}


@router.post("/img2img", response_model=TextToImageResponse)
async def img2img(body: Img2ImgBody, request: Request) -> dict[str, Any]:
    """img2img, inpainting (`mask`) and outpainting (`script_name: "Poor man's outpainting"`)."""
    state: ServerState = request.app.state.sfumato
    job_request = await run_in_threadpool(img2img_job_request, body, state)  # decodes, may hash
    response = await _generate(state, "img2img", body, job_request)
    if not body.include_init_images:
        response["parameters"]["init_images"] = None
        response["parameters"]["mask"] = None
    return response


async def _generate(
    state: ServerState, kind: str, body: ApiOptions, job_request: dict[str, Any]
) -> dict[str, Any]:
    job_request = {**job_request, "save_images": body.save_images, "styles": body.styles}
    job = await state.run_job(kind, job_request)
    images = await run_in_threadpool(state.job_images, job) if body.send_images else []
    # The body as sent (A1111's echo), except that fields it left to the model's recommendation show
    # the value used, not the request model's default.
    generation = job_request["generation"]
    unset = set(RECOMMENDABLE) - body.model_fields_set
    used = {field: generation[field] for field in unset if field in generation}
    return {
        "images": images,
        "parameters": body.model_dump(mode="json") | used,
        "info": json.dumps(job.info or {}),
    }


def _extras(options: ExtrasOptions, data: str, field: str, state: ServerState) -> tuple[str, str]:
    if options.gfpgan_visibility or options.codeformer_visibility:
        name = "gfpgan_visibility" if options.gfpgan_visibility else "codeformer_visibility"
        raise UserError(f"{name}: face restoration is not supported by this version of sfumato", field=name)
    image, _ = decode_image(data, field)
    target = ResizeTarget(
        scale=options.upscaling_resize,
        width=options.upscaling_resize_w if options.resize_mode == 1 else None,
        height=options.upscaling_resize_h if options.resize_mode == 1 else None,
        crop=options.upscaling_crop,
    )
    result = upscale(
        image,
        target,
        upscaler_1=options.upscaler_1,
        upscaler_2=options.upscaler_2,
        visibility=options.extras_upscaler_2_visibility,
        models=state.upscalers,
    )
    info = f"Postprocess upscaler: {options.upscaler_1}, size: {result.width}x{result.height}"
    return encode_png(result), html.escape(info)


@router.post("/extra-single-image")
def extra_single_image(body: ExtrasSingleImageBody, request: Request) -> dict[str, Any]:
    image, info = _extras(body, body.image, "image", request.app.state.sfumato)
    return {"html_info": info, "image": image}


@router.post("/extra-batch-images")
def extra_batch_images(body: ExtrasBatchImagesBody, request: Request) -> dict[str, Any]:
    state = request.app.state.sfumato
    results = [
        _extras(body, item.data, f"imageList.{i}.data", state) for i, item in enumerate(body.imageList)
    ]
    return {"html_info": "<br>".join(info for _, info in results), "images": [image for image, _ in results]}


@router.post("/png-info", response_model=PNGInfoResponse)
def png_info(body: PNGInfoBody) -> dict[str, Any]:
    _, raw = decode_image(body.image, "image")
    meta = read_metadata(raw)
    text = meta.parameters or ""
    items = {key: value for key, value in meta.other.items()}
    return {"info": text, "items": items, "parameters": infotext.parse(text) if text else {}}


@router.get("/progress")
def progress(request: Request, skip_current_image: bool = False) -> dict[str, Any]:
    state: ServerState = request.app.state.sfumato
    return state.progress(include_image=not skip_current_image)


@router.post("/interrupt")
def interrupt(request: Request) -> dict[str, Any]:
    request.app.state.sfumato.worker.interrupt()
    return {}


@router.post("/skip")
def skip(request: Request) -> dict[str, Any]:
    request.app.state.sfumato.worker.skip()
    return {}


@router.get("/options")
def get_options(request: Request) -> dict[str, Any]:
    return request.app.state.sfumato.current_options()


@router.post("/options")
def set_options(changes: dict[str, Any], request: Request) -> dict[str, Any]:
    request.app.state.sfumato.options.update(changes)
    return {}


@router.get("/cmd-flags")
def cmd_flags(request: Request) -> dict[str, Any]:
    return dict(request.app.state.sfumato.flags)


@router.get("/samplers")
def samplers() -> list[dict[str, Any]]:
    return [
        {"name": s.name, "aliases": list(s.aliases), "options": {k: str(v) for k, v in s.defaults.items()}}
        for s in SAMPLERS
    ]


@router.get("/schedulers")
def schedulers() -> list[dict[str, Any]]:
    return [
        {"name": s.name, "label": s.label, "aliases": list(s.aliases) or None, "default_rho": s.default_rho or -1,
         "need_inner_model": False}
        for s in SCHEDULES
    ]  # fmt: skip


@router.get("/upscalers")
def upscalers(request: Request) -> list[dict[str, Any]]:
    """A1111's list: the built-in filters, then the model files (their scale read from the usual
    "4x-…"/"…_x2" name, as the file is not opened for a listing; 4 when the name does not say)."""
    built_in = [
        {"name": name, "model_name": None, "model_path": None, "model_url": None, "scale": 4}
        for name in FILTERS
    ]
    models = [
        {
            "name": e.name,
            "model_name": e.name,
            "model_path": str(e.path),
            "model_url": None,
            "scale": _named_scale(e.name),
        }
        for e in request.app.state.sfumato.upscalers.entries()
    ]
    return built_in + models


def _named_scale(name: str) -> int:
    match = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:$|[^0-9])", name.lower())
    return int(match.group(1) or match.group(2)) if match else 4


@router.get("/latent-upscale-modes")
def latent_upscale_modes() -> list[dict[str, Any]]:
    """The hires fix's latent-space upscalers (A1111's `shared.latent_upscale_modes`)."""
    return [{"name": name} for name in LATENT_UPSCALERS]


@router.get("/sd-models")
def sd_models(request: Request) -> list[dict[str, Any]]:
    state: ServerState = request.app.state.sfumato
    return listings.sd_models(state.settings, state.hashes, state.facts, state.engine.manager.loaded)


@router.get("/sd-vae")
def sd_vae(request: Request) -> list[dict[str, Any]]:
    return listings.sd_vaes(request.app.state.sfumato.settings)


@router.get("/loras")
def loras(request: Request) -> list[dict[str, Any]]:
    """A1111's `[{name, alias, path, metadata}]` plus sfumato's family, kinds, rank, alpha, hash (the
    short hash of "Lora hashes"), trigger_words and base_model; an unreadable file has a `note`."""
    state: ServerState = request.app.state.sfumato
    return listings.loras(state.settings, state.hashes, state.facts)


@router.get("/hypernetworks")
def hypernetworks(request: Request) -> list[dict[str, Any]]:
    return listings.hypernetworks(request.app.state.sfumato.settings)


@router.get("/embeddings")
def embeddings(request: Request) -> dict[str, Any]:
    state: ServerState = request.app.state.sfumato
    return listings.embeddings(state.settings, state.hashes)


@router.get("/prompt-styles")
def prompt_styles(request: Request) -> list[dict[str, Any]]:
    return listings.prompt_styles(request.app.state.sfumato.settings)


@router.get("/memory")
def memory() -> dict[str, Any]:
    return listings.memory()


@router.get("/scripts")
def scripts() -> dict[str, list[str]]:
    titles = [SCRIPT_TITLE, sd_upscale_script.SCRIPT_TITLE]
    return {"txt2img": [], "img2img": [t.lower() for t in titles]}  # A1111 lists titles in lower case


@router.post("/refresh-checkpoints")
@router.post("/refresh-vae")
@router.post("/refresh-embeddings")
@router.post("/refresh-loras")
def refresh() -> dict[str, Any]:
    """Folders are scanned on every listing, so there is nothing to refresh; kept for clients."""
    return {}


@router.post("/reload-checkpoint")
def reload_checkpoint(request: Request) -> dict[str, Any]:
    request.app.state.sfumato.reload_model()
    return {}


@router.post("/unload-checkpoint")
def unload_checkpoint(request: Request) -> dict[str, Any]:
    request.app.state.sfumato.unload_model()
    return {}

"""GenerationRequest: the one validated contract every way in (CLI, API, UI, infotext) becomes.

Field names are A1111's API names, so an A1111 JSON body validates as it is (unknown fields are ignored
there, as A1111 does). Values are checked here once, with errors naming the field.
"""

from __future__ import annotations

from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sfumato.errors import UserError

MAX_SIDE = 8192
DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"


class GenerationRequest(BaseModel):
    """A text-to-image request; `Img2ImgRequest` extends it."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    subseed: int = Field(-1, ge=-1, le=2**32 - 1)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = Field(0, ge=0, le=MAX_SIDE)
    seed_resize_from_w: int = Field(0, ge=0, le=MAX_SIDE)
    sampler_name: str = DEFAULT_SAMPLER
    scheduler: str = DEFAULT_SCHEDULER
    steps: int = Field(20, ge=1, le=1000)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    eta: float | None = Field(None, ge=0.0, le=10.0)
    width: int | None = Field(None, ge=8, le=MAX_SIDE)
    height: int | None = Field(None, ge=8, le=MAX_SIDE)
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=10000)
    clip_skip: int = Field(1, ge=1, le=12)
    emphasis: Literal["Original", "No norm", "None"] = "Original"  # A1111's emphasis mode
    pad_conds: bool = False  # A1111's "Pad prompt/negative prompt": pad to one length, batch together
    # A1111's "Negative Guidance minimum sigma" (0: off) and "... all steps" (else odd steps only).
    s_min_uncond: float = Field(0.0, ge=0.0, le=1000.0)
    s_min_uncond_all: bool = False
    # A1111's token merging (ToMe): the share of self-attention tokens merged (0: off); `_hr` is the
    # hires pass's (0: the first pass's ratio).
    token_merging_ratio: float = Field(0.0, ge=0.0, le=0.9)
    token_merging_ratio_hr: float = Field(0.0, ge=0.0, le=0.9)
    deepcache_interval: int = Field(0, ge=0, le=1000)  # DeepCache: the full UNet every N-th step; 0/1: off
    # A1111's option: "TAESD" decodes with the tiny TAESD decoder, fast and approximate.
    sd_vae_decode_method: Literal["Full", "TAESD"] = "Full"
    model: str | None = None  # checkpoint name, title, hash or path; None: the default model
    vae: str | None = None  # "Automatic" / None: the checkpoint's own or its x.vae.* file; "None": baked-in
    prediction: Literal["epsilon", "v_prediction"] | None = None  # override for SD2-style ambiguity
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)  # img2img, and txt2img's hires pass
    # Hires fix (A1111's txt2img fields): a second, img2img-like pass at a larger size.
    enable_hr: bool = False
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: str = "Latent"
    hr_second_pass_steps: int = Field(0, ge=0, le=1000)  # 0: as many as the first pass
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)  # both set: resize to this size instead of hr_scale
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_sampler_name: str | None = None  # None / "Use same sampler"
    hr_scheduler: str | None = None
    hr_prompt: str = ""  # "": the first pass's prompt
    hr_negative_prompt: str = ""

    @field_validator("prompt", "negative_prompt", "hr_prompt", "hr_negative_prompt")
    @classmethod
    def _newlines(cls, value: str) -> str:
        """Windows line breaks (CRLF, from a pasted prompt) as "\n": the infotext is "\n"-separated
        lines, each stripped when read (as A1111 does), which would drop the "\r"; to the CLIP
        tokenizer "\r" is whitespace, so the conditioning is the same and the PNG gives the request back."""
        return value.replace("\r\n", "\n")

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            lower, upper = value - value % 8, value - value % 8 + 8
            raise ValueError(f"must be a multiple of 8 (try {lower or 8} or {upper})")
        return value


class Img2ImgRequest(GenerationRequest):
    """img2img and inpainting, with A1111's API field names and API defaults (the CLI sets the web UI's
    defaults instead: masked content "original", inpaint area "whole picture", padding 32). The images
    themselves travel beside the request (`tasks.img2img.Img2ImgInputs`).

    width/height default to the init image's size rounded down to the VAE's multiple."""

    resize_mode: int = Field(0, ge=0, le=3)  # just resize, crop and resize, resize and fill, latent
    initial_noise_multiplier: float = Field(1.0, ge=0.0, le=10.0)
    mask_blur: int | None = Field(None, ge=0, le=256)  # sets both of the next two (A1111's API)
    mask_blur_x: int = Field(4, ge=0, le=256)
    mask_blur_y: int = Field(4, ge=0, le=256)
    inpainting_fill: int = Field(0, ge=0, le=3)  # fill, original, latent noise, latent nothing
    inpaint_full_res: bool = True  # "Only masked"
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    inpainting_mask_weight: float = Field(1.0, ge=0.0, le=1.0)  # A1111's conditioning mask strength
    image_cfg_scale: float | None = Field(None, ge=0.0, le=100.0)  # instruct-pix2pix models

    @property
    def blur(self) -> tuple[int, int]:
        """(x, y) mask blur: `mask_blur` when given, as A1111's API reads it."""
        if self.mask_blur is not None:
            return self.mask_blur, self.mask_blur
        return self.mask_blur_x, self.mask_blur_y


RequestT = TypeVar("RequestT", bound=GenerationRequest)


def build_request(**fields: object) -> GenerationRequest:
    """Validate fields into a request, turning the first validation error into a UserError."""
    return validated(GenerationRequest, fields)


def build_img2img_request(**fields: object) -> Img2ImgRequest:
    return validated(Img2ImgRequest, fields)


def validated(kind: type[RequestT], fields: dict[str, object]) -> RequestT:
    try:
        return kind(**fields)
    except ValidationError as exc:
        raise validation_to_user_error(exc) from exc


def validation_to_user_error(exc: ValidationError) -> UserError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "request"
    message = first["msg"].removeprefix("Value error, ")
    return UserError(f"{field}: {message} (got {first.get('input')!r})", field=field)

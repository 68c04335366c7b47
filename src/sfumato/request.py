"""GenerationRequest: the one validated contract every way in (CLI, API, UI, infotext) becomes.

Field names are A1111's API names, so an A1111 JSON body validates as it is (unknown fields are ignored
there, as A1111 does). Values are checked here once, with errors naming the field.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sfumato.errors import UserError

MAX_SIDE = 8192
DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"


class GenerationRequest(BaseModel):
    """A text-to-image request (img2img and friends extend it in their own issues)."""

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
    model: str | None = None  # checkpoint name, title, hash or path; None: the default model
    vae: str | None = None  # "Automatic" / None: the checkpoint's own or its x.vae.* file; "None": baked-in
    prediction: Literal["epsilon", "v_prediction"] | None = None  # override for SD2-style ambiguity

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        if value is not None and value % 8:
            lower, upper = value - value % 8, value - value % 8 + 8
            raise ValueError(f"must be a multiple of 8 (try {lower or 8} or {upper})")
        return value


def build_request(**fields: object) -> GenerationRequest:
    """Validate fields into a request, turning the first validation error into a UserError."""
    try:
        return GenerationRequest(**fields)
    except ValidationError as exc:
        raise validation_to_user_error(exc) from exc


def validation_to_user_error(exc: ValidationError) -> UserError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "request"
    message = first["msg"].removeprefix("Value error, ")
    return UserError(f"{field}: {message} (got {first.get('input')!r})", field=field)

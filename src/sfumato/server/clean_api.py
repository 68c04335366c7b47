"""Extras "Clean" (object removal) over HTTP: `POST /sfumato/v1/clean`.

A1111 has no such endpoint (Lama-Cleaner and IOPaint are separate programs), so it is sfumato's own,
shaped like the Extras ones: base64 images in, a base64 PNG out, bad input a 422 naming the field.
It runs at once instead of through the job queue, as the Extras endpoints do: OpenCV's methods take a
fraction of a second and a LaMa model one forward pass, not a diffusion model's minutes of steps.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sfumato.errors import UserError
from sfumato.server.images import decode_image, encode_png
from sfumato.tasks.clean import SD_METHOD, clean_image, clean_method_names

router = APIRouter(prefix="/sfumato/v1", tags=["sfumato tools"])


class CleanBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(description="base64 image (a data: URL prefix is accepted)")
    mask: str = Field(description="base64 mask, white = remove; resized to the image if its size differs")
    method: str = Field(
        "telea",
        description='"telea" (fast marching), "ns" (Navier-Stokes) or a model in models/inpaint by name',
    )


class CleanResponse(BaseModel):
    image: str = Field(description="base64 PNG: the image with the masked area filled in")
    notes: list[str] = Field(description="what the user should know (a resized mask …)")


@router.post("/clean", response_model=CleanResponse)
def clean(body: CleanBody, request: Request) -> dict[str, Any]:
    models = request.app.state.sfumato.inpaint_models
    if body.method == SD_METHOD:
        raise UserError(
            "method: 'sd' repaints with the checkpoint: send the picture and mask to /sdapi/v1/img2img "
            "(the img2img tab's Inpaint)",
            field="method",
        )
    image, _ = decode_image(body.image, "image")
    mask, _ = decode_image(body.mask, "mask")
    result, notes = clean_image(image, mask, method=body.method, models=models)
    return {"image": encode_png(result), "notes": notes}


@router.get("/clean/methods")
def clean_methods(request: Request) -> list[str]:
    """OpenCV's methods and the model files in models/inpaint, by name."""
    return [m for m in clean_method_names(request.app.state.sfumato.inpaint_models) if m != SD_METHOD]

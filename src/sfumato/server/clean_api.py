"""Extras "Clean" (object removal) over HTTP: `POST /sfumato/v1/clean`.

A1111 has no such endpoint (Lama-Cleaner and IOPaint are separate programs), so it is sfumato's own,
shaped like the Extras ones: base64 images in, a base64 PNG out, bad input a 422 naming the field.
It runs at once instead of through the job queue, as the Extras endpoints do: the methods are
CPU image operations that take a fraction of a second, not a diffusion model's minutes.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from sfumato.server.images import decode_image, encode_png
from sfumato.tasks.clean import clean_image

router = APIRouter(prefix="/sfumato/v1", tags=["sfumato tools"])


class CleanBody(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: str = Field(description="base64 image (a data: URL prefix is accepted)")
    mask: str = Field(description="base64 mask, white = remove; resized to the image if its size differs")
    method: str = Field("telea", description='"telea" (fast marching) or "ns" (Navier-Stokes)')


class CleanResponse(BaseModel):
    image: str = Field(description="base64 PNG: the image with the masked area filled in")
    notes: list[str] = Field(description="what the user should know (a resized mask …)")


@router.post("/clean", response_model=CleanResponse)
def clean(body: CleanBody) -> dict[str, Any]:
    image, _ = decode_image(body.image, "image")
    mask, _ = decode_image(body.mask, "mask")
    result, notes = clean_image(image, mask, method=body.method)
    return {"image": encode_png(result), "notes": notes}

"""sfumato's own job API (`/sfumato/v1`): submit without waiting, list, get, cancel; and the gallery.

A submitted body is the same as the A1111 endpoint's (validated and resolved the same way), so a
client can move from `/sdapi/v1/txt2img` or `/sdapi/v1/img2img` to the queue by changing the URL,
naming the `kind`, and polling the job.
"""

from __future__ import annotations

import mimetypes
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field, ValidationError

from sfumato.errors import NotFoundError, UserError
from sfumato.server.a1111 import (
    Img2ImgBody,
    Txt2ImgBody,
    generation_fields,
    img2img_job_request,
    unsupported_features,
)
from sfumato.server.gif2gif import Gif2GifBody, gif2gif_job_request
from sfumato.server.state import ServerState

router = APIRouter(prefix="/sfumato/v1", tags=["sfumato jobs"])


BODIES: dict[str, type[Txt2ImgBody] | type[Img2ImgBody]] = {
    "txt2img": Txt2ImgBody,
    "img2img": Img2ImgBody,
    "gif2gif": Gif2GifBody,
}


class JobSubmission(BaseModel):
    kind: Literal["txt2img", "img2img", "gif2gif"] = "txt2img"
    request: dict[str, Any] = Field(
        default_factory=dict,
        description="the body of /sdapi/v1/txt2img or /sdapi/v1/img2img, as `kind` says (gif2gif: "
        "img2img's with `animation` and `animation_format` instead of init_images)",
    )


def _body(submission: JobSubmission) -> Txt2ImgBody | Img2ImgBody:
    """The request validated as its kind's A1111 body; errors are located under `request`."""
    try:
        return BODIES[submission.kind].model_validate(submission.request)
    except ValidationError as exc:
        errors = [{**error, "loc": ("body", "request", *error["loc"])} for error in exc.errors()]
        raise RequestValidationError(errors) from exc


def _state(request: Request) -> ServerState:
    return request.app.state.sfumato


def _job_or_404(state: ServerState, job_id: str):
    job = state.store.get(job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}", field="job_id")
    return job


def _job_request(body: Txt2ImgBody | Img2ImgBody, state: ServerState) -> dict[str, Any]:
    if isinstance(body, Gif2GifBody):
        return gif2gif_job_request(body, state)
    if isinstance(body, Img2ImgBody):
        return img2img_job_request(body, state)
    unsupported_features(body)
    return {"generation": generation_fields(body, state)}


@router.post("/jobs", status_code=202)
def submit_job(submission: JobSubmission, request: Request) -> dict[str, Any]:
    state = _state(request)
    body = _body(submission)
    job_request = _job_request(body, state)
    # Like A1111's UI (not its API): unless the client says, images are saved when `samples_save` is on.
    saving = (
        body.save_images
        if "save_images" in body.model_fields_set
        else state.options.snapshot()["samples_save"]
    )
    job_request.update(save_images=bool(saving), styles=body.styles)
    job = state.submit(submission.kind, job_request)
    return job.public(position=state.store.queue_position(job))


@router.get("/jobs")
def list_jobs(
    request: Request,
    state_filter: str | None = Query(None, alias="state"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0, le=2**31),
) -> list[dict[str, Any]]:
    state = _state(request)
    return [job.public() for job in state.store.list(state=state_filter, limit=limit, offset=offset)]


@router.get("/jobs/{job_id}")
def get_job(job_id: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    job = _job_or_404(state, job_id)
    body = job.public(images=state.store.images_of(job.id), position=state.store.queue_position(job))
    body["info"] = job.info
    return body


@router.post("/jobs/{job_id}/cancel")
def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    state = _state(request)
    _job_or_404(state, job_id)
    if not state.worker.cancel(job_id):
        raise UserError(f"job {job_id} has already finished", field="job_id")
    job = state.store.wait_for(job_id, timeout=30.0)
    assert job is not None
    return job.public()


@router.get("/images")
def gallery(
    request: Request, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=2**31)
) -> list[dict[str, Any]]:
    """Past images, newest first, with their parameters (infotext)."""
    return [record.public() for record in _state(request).store.recent_images(limit=limit, offset=offset)]


@router.get("/jobs/{job_id}/images/{index}")
def image_file(job_id: str, index: int, request: Request) -> FileResponse:
    """A job's image file. The path comes from the job's own record, never from the client."""
    path = _state(request).image_file(job_id, index)
    if not path.is_file():
        raise NotFoundError(f"the image file of job {job_id} image {index} is gone from disk", field="index")
    return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

"""What a worker does with a job: the job's stored request in, images saved and recorded, info out.

The engine owns the device's ModelManager (so consecutive jobs reuse the loaded model) behind a lock
that model switching, reloading and unloading also take; the HTTP layer never touches the model.
A job's request is stored fully resolved (seed, model, options), so running it needs nothing else.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sfumato import infotext
from sfumato.animation_job import Gif2GifJob
from sfumato.app import Img2ImgJob, SavedImage, SdUpscaleJob, Txt2ImgJob, make_manager
from sfumato.imaging.files import frames_from_bytes
from sfumato.models.loader import LoadedModel
from sfumato.output import images_folder
from sfumato.server.images import decode_image
from sfumato.server.jobs import ImageRecord, Job, JobStore
from sfumato.server.preview import LatentPreviewer
from sfumato.settings import Settings
from sfumato.tasks.common import Progress
from sfumato.tasks.img2img_inputs import Img2ImgInputs
from sfumato.tasks.sd_upscale import SdUpscale

SFUMATO_VERSION = "sfumato 0.1.0"


@dataclass
class LiveProgress:
    """The running job as `/sdapi/v1/progress` reports it; written by the worker, read by requests."""

    job_id: str | None = None
    started: float = 0.0
    batches: int = 1
    batch_size: int = 1
    batch_done: int = 0
    step: int = 0
    steps: int = 0
    latents: torch.Tensor | None = None
    model: LoadedModel | None = None
    interrupted: bool = False
    skipped: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self, job_id: str, batches: int, batch_size: int) -> None:
        with self.lock:
            self.job_id, self.started = job_id, time.time()
            self.batches, self.batch_size, self.batch_done, self.step, self.steps = (
                batches,
                batch_size,
                0,
                0,
                0,
            )
            self.latents, self.model, self.interrupted, self.skipped = None, None, False, False

    def stop(self) -> None:
        with self.lock:
            self.job_id, self.latents, self.model = None, None, None

    @property
    def fraction(self) -> float:
        if self.job_id is None or not self.steps:
            return 0.0
        return min(1.0, (self.batch_done + self.step / self.steps) / max(self.batches, 1))


@dataclass
class JobControl:
    """Flags the HTTP layer sets for the running job: interrupt (stop the job) and skip (this batch)."""

    interrupt: threading.Event = field(default_factory=threading.Event)
    skip: threading.Event = field(default_factory=threading.Event)

    def take_skip(self) -> bool:
        if self.skip.is_set():
            self.skip.clear()
            return True
        return False


def job_folder(settings: Settings, job: Job) -> Path:
    """Where a job's images go: the user's outputs folder when they asked to save them (A1111's
    `save_images`), else the server's own result folder (kept so a restart can still return them)."""
    if job.request.get("save_images"):
        return images_folder(settings.outputs, "img2img" if job.kind == "gif2gif" else job.kind)
    return settings.cache_dir / "results" / job.id


class Engine:
    """Runs jobs for one device."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.manager = make_manager(settings)
        self.lock = threading.RLock()
        self.live = LiveProgress()
        self.previewer = LatentPreviewer(self.manager.taesd)

    def run(self, job: Job, store: JobStore, control: JobControl) -> tuple[str, dict[str, Any]]:
        """Run a job to its end; returns (final state, A1111 info). UserErrors propagate."""
        if job.kind not in ("txt2img", "img2img", "gif2gif"):
            raise ValueError(f"unknown job kind {job.kind!r}")
        fields = dict(job.request["generation"])
        saved_before = {record.index for record in store.images_of(job.id)}
        with self.lock:
            task = self._task(job, fields)
            request = task.request
            images = len(task.frames) if isinstance(task, Gif2GifJob) else request.n_iter
            self.live.start(job.id, images, request.batch_size)

            def on_saved(saved: SavedImage) -> None:
                store.add_image(
                    ImageRecord(
                        job_id=job.id,
                        index=saved.index,
                        path=str(saved.path),
                        seed=saved.seed,
                        subseed=saved.subseed,
                        width=saved.image.width,
                        height=saved.image.height,
                        infotext=saved.infotext,
                        created=time.time(),
                    )
                )

            def should_skip() -> bool:
                skipped = control.take_skip()
                if skipped:
                    self.live.skipped = True
                return skipped

            try:
                task.run(
                    should_stop=control.interrupt.is_set,
                    should_skip=should_skip,
                    on_step=self._on_step,
                    on_saved=on_saved,
                    already_saved=saved_before.__contains__,
                )
            finally:
                self.live.stop()
            if isinstance(task, Gif2GifJob) and task.animation is not None:
                first = store.images_of(job.id)[0] if store.images_of(job.id) else None
                store.add_image(
                    ImageRecord(
                        job_id=job.id,
                        index=len(task.frames),
                        path=str(task.animation),
                        seed=request.seed,
                        subseed=request.subseed,
                        width=first.width if first else 0,
                        height=first.height if first else 0,
                        infotext=first.infotext if first else "",
                        created=time.time(),
                    )
                )
        state = "interrupted" if task.interrupted else "done"
        return state, a1111_info(job, store.images_of(job.id))

    def _task(self, job: Job, fields: dict[str, Any]) -> Txt2ImgJob:
        options = {"out_dir": job_folder(self.settings, job), "manager": self.manager}
        if job.kind == "txt2img":
            return Txt2ImgJob(self.settings, fields, **options)
        inputs = job.request["inputs"]
        if job.kind == "gif2gif":
            raw = base64.b64decode(inputs["animation"])
            frames, durations, loop = frames_from_bytes(raw, inputs["suffix"], "animation")
            folder = options["out_dir"] / f"gif2gif-{job.id[:8]}"
            return Gif2GifJob(
                self.settings, fields, frames, durations, loop, folder=folder, name="animation",
                suffix=inputs["suffix"], manager=self.manager,
            )  # fmt: skip
        image, _ = decode_image(inputs["init_image"], "init_images.0")
        mask = decode_image(inputs["mask"], "mask")[0] if inputs.get("mask") else None
        if job.request.get("sd_upscale"):
            script = SdUpscale(**job.request["sd_upscale"])
            return SdUpscaleJob(self.settings, fields, Img2ImgInputs(image, mask), script, **options)
        return Img2ImgJob(self.settings, fields, Img2ImgInputs(image, mask), **options)

    def _on_step(self, progress: Progress) -> None:
        with self.live.lock:
            self.live.batch_done = progress.image_index // max(self.live.batch_size, 1)
            self.live.step, self.live.steps = progress.step, progress.total
            self.live.latents = progress.denoised
            self.live.model = self.manager.loaded

    def preview(self) -> Image.Image | None:
        """The running job's current image, cheaply approximated from its latents."""
        with self.live.lock:
            latents, model = self.live.latents, self.live.model
        if latents is None or model is None:
            return None
        return self.previewer(model, latents)

    def switch_model(self, action: Callable[[], Any]) -> Any:
        """Run a model-changing action (reload, unload) between jobs, never during one."""
        with self.lock:
            return action()


def a1111_info(job: Job, images: list[ImageRecord]) -> dict[str, Any]:
    """The `info` object of A1111's txt2img/img2img responses, from the job and its saved images."""
    generation = job.request["generation"]
    first = infotext.parse(images[0].infotext) if images else {}
    prompt, negative = generation.get("prompt", ""), generation.get("negative_prompt", "")
    return {
        "prompt": prompt,
        "all_prompts": [prompt] * len(images),
        "negative_prompt": negative,
        "all_negative_prompts": [negative] * len(images),
        "seed": images[0].seed if images else generation.get("seed"),
        "all_seeds": [image.seed for image in images],
        "subseed": images[0].subseed if images else generation.get("subseed"),
        "all_subseeds": [image.subseed for image in images],
        "subseed_strength": generation.get("subseed_strength", 0.0),
        "width": images[0].width if images else generation.get("width"),
        "height": images[0].height if images else generation.get("height"),
        "sampler_name": first.get("Sampler", generation.get("sampler_name")),
        "cfg_scale": generation.get("cfg_scale"),
        "steps": generation.get("steps"),
        "batch_size": generation.get("batch_size", 1),
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": first.get("Model"),
        "sd_model_hash": first.get("Model hash"),
        "sd_vae_name": first.get("VAE"),
        "sd_vae_hash": first.get("VAE hash"),
        "seed_resize_from_w": generation.get("seed_resize_from_w", 0),
        "seed_resize_from_h": generation.get("seed_resize_from_h", 0),
        "denoising_strength": None,
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": [image.infotext for image in images],
        "styles": job.request.get("styles", []),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(job.created)),
        "clip_skip": generation.get("clip_skip", 1),
        "is_using_inpainting_conditioning": False,
        "version": SFUMATO_VERSION,
    }

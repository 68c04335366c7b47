"""The server's one state object (no module globals): settings, queue, engine, worker, options."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.concurrency import run_in_threadpool

from sfumato.errors import NotFoundError, UserError
from sfumato.models.hashes import HashCache
from sfumato.models.registry import ModelEntry, list_vaes, resolve_model_path, selectable_checkpoints
from sfumato.server.engine import Engine
from sfumato.server.images import encode_png
from sfumato.server.jobs import Job, JobStore
from sfumato.server.listings import FileFacts, checkpoint_title
from sfumato.server.options import OptionsStore
from sfumato.server.worker import Worker
from sfumato.settings import Settings
from sfumato.upscalers.models import ImageModels


class JobFailed(Exception):
    """A job ended in an internal error (not the user's); the API answers 500 with its message."""


class ServerState:
    def __init__(self, settings: Settings, *, flags: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.flags = flags or {}
        self.store = JobStore(settings.cache_dir / "server.sqlite3")
        self.engine = Engine(settings)
        self.hashes: HashCache = self.engine.manager.hashes
        self.facts = FileFacts()  # what the listings read inside model files, kept while unchanged
        device = self.engine.manager.device
        self.upscalers = ImageModels(settings, "upscalers", device)  # Extras' model upscalers
        self.inpaint_models = ImageModels(settings, "inpaint", device)  # Clean's LaMa-style models
        self.options = OptionsStore(
            settings.cache_dir / "options.json",
            resolve_checkpoint=self._checkpoint_title,
            resolve_vae=self._vae_name,
        )
        self.worker = Worker(self.store, self.engine)
        self._waiters: dict[str, list[Callable[[], None]]] = {}
        self._waiters_lock = threading.Lock()
        self.store.on_finished(self._notify)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        self.worker.stop()
        self.store.close()

    # --- names -----------------------------------------------------------------------------------

    def _entry_in_folders(self, query: str, entries: list[ModelEntry], kind: str, field: str) -> ModelEntry:
        """The entry a name, title, hash or path means, only if it lies in the model folders."""
        path = resolve_model_path(query, entries, kind, self.hashes, field=field).resolve()
        for entry in entries:
            if entry.path.resolve() == path:
                return entry
        raise UserError(
            f"{field}: {query!r} is not in the model folders (the server loads models only from them)",
            field=field,
        )

    def checkpoint_in_folders(self, query: str, field: str = "sd_model_checkpoint") -> Path:
        return self._entry_in_folders(query, selectable_checkpoints(self.settings), "checkpoint", field).path

    def vae_in_folders(self, query: str, field: str = "sd_vae") -> Path:
        return self._entry_in_folders(query, list_vaes(self.settings), "VAE", field).path

    def _checkpoint_title(self, query: str) -> str:
        entries = selectable_checkpoints(self.settings)
        return checkpoint_title(
            self._entry_in_folders(query, entries, "checkpoint", "sd_model_checkpoint"), self.hashes
        )

    def _vae_name(self, query: str) -> str:
        if query.lower() in ("automatic", "none"):
            return query.capitalize()
        return self.vae_in_folders(query).name

    def current_options(self) -> dict[str, Any]:
        """The options with the checkpoint actually in use filled in (A1111 always names one)."""
        options = self.options.snapshot()
        query = options.get("sd_model_checkpoint")
        try:
            path = self.engine.manager.checkpoint_path(query)
        except UserError:
            return options
        entry = next((e for e in selectable_checkpoints(self.settings) if e.path == path), None)
        if entry is not None:
            options["sd_model_checkpoint"] = checkpoint_title(entry, self.hashes)
            options["sd_checkpoint_hash"] = self.hashes.cached_sha256(path) if path.is_file() else None
        return options

    # --- jobs ------------------------------------------------------------------------------------

    def submit(self, kind: str, request: dict[str, Any]) -> Job:
        return self.store.submit(kind, request)

    def _notify(self, job_id: str) -> None:
        """A job finished (called from the worker's thread): wake its async waiters."""
        with self._waiters_lock:
            wakers = self._waiters.pop(job_id, [])
        for wake in wakers:
            wake()

    async def run_job(self, kind: str, request: dict[str, Any]) -> Job:
        """Submit and wait (A1111's synchronous endpoints) without holding a thread, so any number of
        clients can wait at once; a failed job raises as the user's error."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def wake() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        job = await run_in_threadpool(self.store.submit, kind, request)
        with self._waiters_lock:
            self._waiters.setdefault(job.id, []).append(wake)
        current = await run_in_threadpool(self.store.get, job.id)
        if current is None or not current.is_finished:  # it may have finished before we listened
            await done
        with self._waiters_lock:
            self._waiters.pop(job.id, None)
        finished = await run_in_threadpool(self.store.get, job.id)
        assert finished is not None
        if finished.state == "failed":
            if finished.error_field is not None or not (finished.error or "").startswith("internal error"):
                raise UserError(finished.error or "the job failed", field=finished.error_field)
            raise JobFailed(finished.error)
        if finished.state == "cancelled":
            raise UserError("the job was cancelled before it finished", field="job")
        return finished

    def job_images(self, job: Job) -> list[str]:
        """The job's images as A1111 returns them: base64 PNGs with their infotext."""
        encoded = []
        for record in self.store.images_of(job.id):
            with Image.open(record.path) as image:
                encoded.append(encode_png(image, record.infotext))
        return encoded

    def progress(self, *, include_image: bool) -> dict[str, Any]:
        """A1111's progress body: fraction, eta, state, and the current step's preview."""
        live = self.engine.live
        fraction = live.fraction
        elapsed = time.time() - live.started if live.job_id else 0.0
        eta = elapsed / fraction - elapsed if fraction > 0 else 0.0
        preview = self.engine.preview() if include_image and live.job_id else None
        pending = self.store.pending_count()
        return {
            "progress": round(fraction, 4),
            "eta_relative": round(eta, 2),
            "state": {
                "skipped": live.skipped,
                "interrupted": live.interrupted,
                "stopping_generation": False,
                "job": live.job_id or "",
                "job_count": pending,
                "job_timestamp": time.strftime("%Y%m%d%H%M%S", time.localtime(live.started))
                if live.job_id
                else "0",
                "job_no": live.batch_done,
                "sampling_step": live.step,
                "sampling_steps": live.steps,
            },
            "current_image": encode_png(preview) if preview is not None else None,
            "textinfo": None,
            "current_task": live.job_id,
        }

    # --- model -----------------------------------------------------------------------------------

    def reload_model(self) -> None:
        query = self.options.snapshot().get("sd_model_checkpoint")
        self.engine.switch_model(lambda: self.engine.manager.load(query))

    def unload_model(self) -> None:
        self.engine.switch_model(self.engine.manager.unload)

    def image_file(self, job_id: str, index: int) -> Path:
        """The file of a job's image, if recorded (paths come from our own records, never the client)."""
        for record in self.store.images_of(job_id):
            if record.index == index:
                return Path(record.path)
        raise NotFoundError(f"job {job_id} has no image {index}", field="index")

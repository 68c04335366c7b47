"""The persistent job queue and image records: one SQLite file beside the outputs.

Every generation request becomes a row in `jobs` before anything runs, so a crash (even `kill -9`)
loses nothing that was accepted: on the next start, jobs that were running go back to the queue, and
each image a job had already saved stays recorded in `images` under its (job, index) key, so the rerun
skips it instead of saving it twice. Seeds are resolved before a job is stored, so a rerun makes the
same pixels.

SQLite (in WAL mode) is the queue engine here because it is in the standard library, survives crashes
by design and needs no service; the worker only depends on `JobStore`'s methods, which is the seam a
Redis- or Ray-backed store would replace when serving from several machines.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

JobState = Literal["queued", "running", "done", "failed", "interrupted", "cancelled"]
FINISHED: frozenset[str] = frozenset({"done", "failed", "interrupted", "cancelled"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    kind TEXT NOT NULL,
    request TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    error_field TEXT,
    info TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs (id),
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    seed INTEGER NOT NULL,
    subseed INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    infotext TEXT NOT NULL,
    created REAL NOT NULL,
    UNIQUE (job_id, idx)
);
"""


@dataclass(frozen=True)
class ImageRecord:
    """One saved image of a job: where it is and how it was made."""

    job_id: str
    index: int
    path: str
    seed: int
    subseed: int
    width: int
    height: int
    infotext: str
    created: float

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Job:
    """A job row: its request (JSON-ready), state and outcome."""

    id: str
    seq: int
    kind: str
    request: dict[str, Any]
    state: str
    created: float
    started: float | None
    finished: float | None
    attempts: int
    error: str | None
    error_field: str | None
    info: dict[str, Any] | None

    @property
    def is_finished(self) -> bool:
        return self.state in FINISHED

    def public_request(self) -> dict[str, Any]:
        """The request without its images' base64 (an img2img job's init image and mask): a listing or
        a progress poll should not carry megabytes; only whether each image is there is shown."""
        inputs = self.request.get("inputs")
        if not isinstance(inputs, dict):
            return self.request
        return {**self.request, "inputs": {name: value is not None for name, value in inputs.items()}}

    def public(self, images: list[ImageRecord] | None = None, position: int | None = None) -> dict[str, Any]:
        """The job as the job API shows it."""
        body: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "request": self.public_request(),
            "created": self.created,
            "started": self.started,
            "finished": self.finished,
            "attempts": self.attempts,
            "error": self.error,
            "error_field": self.error_field,
        }
        if position is not None:
            body["queue_position"] = position
        if images is not None:
            body["images"] = [image.public() for image in images]
        return body


def _job(row: sqlite3.Row) -> Job:
    values = {f.name: row[f.name] for f in dataclasses.fields(Job)}
    values["request"] = json.loads(values["request"])
    values["info"] = json.loads(values["info"]) if values["info"] else None
    return Job(**values)


def _image(row: sqlite3.Row) -> ImageRecord:
    """The `images` row's columns are the record's fields (`idx` holds `index`, a reserved word)."""
    return ImageRecord(
        **{f.name: row["idx" if f.name == "index" else f.name] for f in dataclasses.fields(ImageRecord)}
    )


class JobStore:
    """Jobs and images in one SQLite database, safe to use from the server's threads.

    `wait_for` lets a thread block until a job finishes (every state change notifies one condition
    variable, cheap at the rates one device runs jobs at); `on_finished` listeners let asyncio code
    wait without holding a thread.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._connection.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._listeners: list[Callable[[str], None]] = []
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.executescript(SCHEMA)
        self.requeue_unfinished()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
            self._changed.notify_all()

    def on_finished(self, listener: Callable[[str], None]) -> None:
        """Call `listener(job_id)` (from the finishing thread) whenever a job reaches a final state."""
        self._listeners.append(listener)

    def _finished(self, job_id: str) -> None:
        for listener in self._listeners:
            listener(job_id)

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def requeue_unfinished(self) -> int:
        """Jobs left `running` by a crash go back to the queue (their saved images stay recorded)."""
        with self._transaction() as db:
            return db.execute("UPDATE jobs SET state = 'queued' WHERE state = 'running'").rowcount

    def submit(self, kind: str, request: dict[str, Any]) -> Job:
        job_id = uuid.uuid4().hex
        with self._transaction() as db:
            db.execute(
                "INSERT INTO jobs (id, kind, request, state, created) VALUES (?, ?, ?, 'queued', ?)",
                (job_id, kind, json.dumps(request), time.time()),
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            row = self._connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list(self, *, state: str | None = None, limit: int = 100, offset: int = 0) -> list[Job]:
        """Newest first."""
        query, args = "SELECT * FROM jobs", []
        if state:
            query += " WHERE state = ?"
            args.append(state)
        query += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        with self._lock:
            rows = self._connection.execute(query, [*args, limit, offset]).fetchall()
        return [_job(r) for r in rows]

    def queue_position(self, job: Job) -> int | None:
        """0 for the running job, 1 for the next one …; None once finished."""
        if job.is_finished:
            return None
        if job.state == "running":
            return 0
        with self._lock:
            ahead = self._connection.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq < ?", (job.seq,)
            ).fetchone()[0]
            running = self._connection.execute(
                "SELECT COUNT(*) FROM jobs WHERE state = 'running' AND id != ?", (job.id,)
            ).fetchone()[0]
        return int(ahead) + int(running) + 1

    def pending_count(self) -> int:
        with self._lock:
            return int(
                self._connection.execute(
                    "SELECT COUNT(*) FROM jobs WHERE state IN ('queued', 'running')"
                ).fetchone()[0]
            )

    def claim_next(self) -> Job | None:
        """Mark the oldest queued job running and return it (FIFO)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET state = 'running', started = ?, attempts = attempts + 1 WHERE id = ?",
                (time.time(), row["id"]),
            )
        return self.get(row["id"])

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        error: str | None = None,
        error_field: str | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET state = ?, finished = ?, error = ?, error_field = ?, info = ? WHERE id = ?",
                (state, time.time(), error, error_field, json.dumps(info) if info else None, job_id),
            )
        self._finished(job_id)

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job; False if it is not queued (running jobs are interrupted by the worker)."""
        with self._transaction() as db:
            cancelled = (
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ? WHERE id = ? AND state = 'queued'",
                    (time.time(), job_id),
                ).rowcount
                == 1
            )
        if cancelled:
            self._finished(job_id)
        return cancelled

    def add_image(self, record: ImageRecord) -> None:
        with self._transaction() as db:
            db.execute(
                "INSERT INTO images (job_id, idx, path, seed, subseed, width, height, infotext, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.job_id,
                    record.index,
                    record.path,
                    record.seed,
                    record.subseed,
                    record.width,
                    record.height,
                    record.infotext,
                    record.created,
                ),
            )

    def images_of(self, job_id: str) -> list[ImageRecord]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT * FROM images WHERE job_id = ? ORDER BY idx", (job_id,)
            ).fetchall()
        return [_image(r) for r in rows]

    def recent_images(self, *, limit: int = 100, offset: int = 0) -> list[ImageRecord]:
        with self._lock:
            rows = self._connection.execute(
                "SELECT * FROM images ORDER BY id DESC LIMIT ? OFFSET ?", (limit, offset)
            ).fetchall()
        return [_image(r) for r in rows]

    def wait_for(self, job_id: str, timeout: float | None = None) -> Job | None:
        """Block until the job has finished (or `timeout` seconds passed); the job as it then is."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while True:
                job = self.get(job_id)
                if job is None or job.is_finished:
                    return job
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return job
                self._changed.wait(timeout=remaining if remaining is not None else 5.0)

    def wait_for_work(self, timeout: float) -> None:
        """Block until something changes (a job was submitted) or `timeout` passes."""
        with self._changed:
            self._changed.wait(timeout=timeout)

"""One worker per device: takes queued jobs in FIFO order from the store and runs them on the engine.

It is a thread of the server process (the engine's model stays in this process's memory); a job's
failure is recorded on the job (a UserError's message and field as the client will see them, anything
else as an internal error with its traceback in the server log) and never stops the worker.
"""

from __future__ import annotations

import logging
import threading

from sfumato.errors import UserError
from sfumato.server.engine import Engine, JobControl
from sfumato.server.jobs import JobStore

log = logging.getLogger("sfumato.server")


class Worker:
    def __init__(self, store: JobStore, engine: Engine) -> None:
        self.store = store
        self.engine = engine
        self.control = JobControl()
        self.current_job: str | None = None
        self._cancelled: set[str] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="sfumato-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current job's current step (the job goes back to the queue on restart)."""
        self._stopping.set()
        self.control.interrupt.set()
        self._thread.join(timeout)

    def interrupt(self, job_id: str | None = None) -> bool:
        """Interrupt the running job (only if it is `job_id`, when given); False if nothing ran."""
        current = self.current_job
        if current is None or (job_id is not None and job_id != current):
            return False
        self.engine.live.interrupted = True
        self.control.interrupt.set()
        return True

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job, or stop the running one and mark it cancelled; False if finished."""
        if self.store.cancel(job_id):
            return True
        self._cancelled.add(job_id)
        if self.interrupt(job_id):
            return True
        self._cancelled.discard(job_id)
        return False

    def skip(self) -> bool:
        if self.current_job is None:
            return False
        self.control.skip.set()
        return True

    def _loop(self) -> None:
        while not self._stopping.is_set():
            job = self.store.claim_next()
            if job is None:
                self.store.wait_for_work(timeout=1.0)
                continue
            self.control = JobControl()
            self.current_job = job.id
            try:
                state, info = self.engine.run(job, self.store, self.control)
                if self._stopping.is_set() and state == "interrupted":
                    continue  # shutting down: left 'running', so the next start requeues it
                if job.id in self._cancelled:
                    state = "cancelled"
                self.store.finish(job.id, state, info=info)  # type: ignore[arg-type]
            except UserError as exc:
                self.store.finish(job.id, "failed", error=str(exc), error_field=exc.field)
            except Exception as exc:
                log.exception("job %s failed", job.id)
                self.store.finish(job.id, "failed", error=f"internal error: {type(exc).__name__}: {exc}")
            finally:
                self.current_job = None
                self._cancelled.discard(job.id)

"""Live previews: an approximate image of a running job's latents, every few seconds.

The diffusion loops hand the worker their latents after each step, lazily (``run_chain``'s
``preview``, ``pipelines.diffusion.preview``). ``PreviewWriter`` takes one at most every
``interval_s``, decodes it with the tiny TAESD decoder of the model's family (a few milliseconds,
against a full VAE decode's hundreds), writes a small JPEG to the attempt's
``outputs/<job>/<attempt>/preview.jpg`` and notes ``{attempt, step}`` in the job's row, fenced by
worker and attempt like progress. The status record then links it (``preview.url``, served by
``GET /api/job/preview``) until the images are made, when the row's note is cleared and the object
deleted (``finish``); a crashed attempt's preview goes with its other objects (``service.gc``).

A preview must never cost the job: the first comes one interval into it (a shorter job shows
none); a later one only while previews have taken at most ``budget`` (3%) of the job's time so far;
none at all when the family has no preview model installed, nor after any error (logged once; the
job goes on). On this 2-core CPU a TAESD decode of a 512² image takes about 1.5 s, so a full-size
SD 1.5 job there (about 20 s a step) shows one every minute or so; on a GPU it is milliseconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.diffusion.preview import render_preview
from service.jobs.store import ClaimedJob, JobStore
from service.storage import ObjectStore, preview_key

log = logging.getLogger(__name__)

#: The most of a job's time its previews may take.
PREVIEW_BUDGET = 0.03


class PreviewWriter:
    """``run_chain``'s ``preview`` callback for one attempt of one job."""

    def __init__(
        self,
        job: ClaimedJob,
        worker_id: str,
        jobs: JobStore,
        store: ObjectStore,
        models_path: Path,
        sessions: Any,
        *,
        interval_s: float,
        max_side: int,
        budget: float = PREVIEW_BUDGET,
    ) -> None:
        self.job = job
        self.worker_id = worker_id
        self.jobs = jobs
        self.store = store
        self.models_path = models_path
        self.sessions = sessions
        self.interval_s = interval_s
        self.max_side = max_side
        self.budget = budget
        self.key = preview_key(job.name, job.attempt)
        #: Previews stored, and the seconds they took (decode, encode, upload, row note).
        self.shown = 0
        self.spent_s = 0.0
        self._started = time.monotonic()
        # The first comes one interval into the job: a job shorter than that needs none.
        self._last = self._started
        self._stopped = False

    def __call__(self, step: int, family: str, latents: Callable[[], np.ndarray]) -> None:
        now = time.monotonic()
        if self._stopped or now - self._last < self.interval_s:
            return
        if self.spent_s > self.budget * (now - self._started):
            return
        self._last = now
        try:
            self._show(step, family, latents)
        except Exception as err:  # a preview is a nicety: the job goes on without
            self._stopped = True
            log.warning(
                "live preview failed; no more for this job",
                extra={
                    "job": self.job.name,
                    "attempt": self.job.attempt,
                    "error": f"{type(err).__name__}: {err}",
                },
            )
        finally:
            self.spent_s += time.monotonic() - now

    def finish(self) -> None:
        """The images are made: the preview is no longer shown, and its object goes."""
        if not self.shown:
            return
        try:
            self.jobs.record_preview(self.job.id, self.worker_id, self.job.attempt, None)
            self.store.delete(self.key)
        except Exception as err:  # left for the collector (service.gc) and hidden once the job ends
            log.warning("could not remove a live preview", extra={"job": self.job.name, "error": str(err)})

    def _show(self, step: int, family: str, latents: Callable[[], np.ndarray]) -> None:
        jpeg = render_preview(self.models_path, self.sessions, family, latents(), self.max_side)
        if jpeg is None:
            self._stopped = True  # no preview model for this family here
            return
        self.store.put_bytes(self.key, jpeg, "image/jpeg")
        if not self.jobs.record_preview(self.job.id, self.worker_id, self.job.attempt, step):
            self._stopped = True  # fenced: the lease thread stops the job at its next check
            return
        self.shown += 1

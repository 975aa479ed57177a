"""The bad-input policy shared by every task.

Every fault is either *skipped and counted* (the counts travel with the batches from the DataLoader workers to the
main process, are logged per epoch and printed at the end of a run) or raised as a :class:`DataError` whose message is
one sentence naming the file, line or key and the fix. Nothing is dropped silently.

Skipped kinds (the key is what appears in the logs as ``data/skipped_<kind>``):

======================  ===============================================================
``empty``               empty or whitespace-only text
``undecodable``         a line that is not valid UTF-8
``malformed``           a line with the wrong number of fields / invalid JSON
``bad_label``           a label outside the declared classes
``too_long``            a sequence over ``max_length`` when ``overlength: skip``
``truncated``           a sequence cut to ``max_length`` when ``overlength: truncate`` (kept, counted)
``bad_video``           a video file that cannot be decoded
``short_clip``          a clip with fewer frames than requested when ``short_clips: skip``
======================  ===============================================================
"""

from __future__ import annotations

import logging
import threading
from collections import Counter

log = logging.getLogger("pipeline.data")

#: Every kind of skipped input; logged as data/skipped_<kind> every epoch (zeros included, so DDP ranks agree).
KINDS = ("empty", "undecodable", "malformed", "bad_label", "too_long", "truncated", "bad_video", "short_clip")

#: How many individual faults of one kind are written to the log (per worker) before only counting.
LOG_FIRST = 3


class DataError(Exception):
    """A data problem the user must fix; the message is one sentence naming the file/line/key and the fix."""


class FaultCounter:
    """Counts skipped inputs per kind and logs the first few of each with their location."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self._lock = (
            threading.Lock()
        )  # a worker's read-ahead thread counts while its batches report snapshots

    def skip(self, kind: str, where: str, detail: str = "") -> None:
        with self._lock:
            self.counts[kind] += 1
            n = self.counts[kind]
        if n <= LOG_FIRST:
            log.warning("input %s at %s%s (counted)", kind, where, f" ({detail})" if detail else "")
        elif n == LOG_FIRST + 1:
            log.warning("more %s inputs; only counting them from now on", kind)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)

    def __getstate__(self) -> dict:
        return {"counts": self.snapshot()}

    def __setstate__(self, state: dict) -> None:
        self.__init__()
        self.counts.update(state["counts"])


def merge_counts(per_worker: dict[int, dict[str, int]]) -> dict[str, int]:
    """Sum the latest cumulative counts reported by each worker."""
    total: Counter[str] = Counter()
    for counts in per_worker.values():
        total.update(counts)
    return dict(total)


def worker_error_message(exc: BaseException) -> str | None:
    """The user-facing sentence of a DataError, also when PyTorch re-raised it from a DataLoader worker.

    PyTorch re-raises worker exceptions as ``DataError("Caught DataError in DataLoader worker ... Original
    Traceback ...")``; the sentence we wrote is the text after the last ``DataError: ``.
    """
    if not isinstance(exc, DataError):
        return None
    text = str(exc)
    marker = "DataError: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return text

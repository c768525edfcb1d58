"""The local backend: trials in a thread pool on this machine, each its own process group.

Threads are enough: a trial's work is its child process; the thread only waits for it. The pool
reuses the driver's resolved source and tracker (one git checkout, one store connection for the
whole sweep), and a cancel is one event every running trial watches.
"""
from __future__ import annotations

import threading
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from projectrun import tracking, trial
from projectrun.schedulers import Setup, TrialOutcome, TrialTask

if TYPE_CHECKING:
    from projectrun.sweepplan import Backend


class LocalScheduler:
    name = "local"
    same_host = True

    def __init__(self, backend: Backend, setup: Setup) -> None:
        self._setup = setup
        self._pool = ThreadPoolExecutor(max_workers=max(1, setup.jobs))
        self._cancel = threading.Event()
        self._pending: dict[Future[TrialOutcome], TrialTask] = {}

    def submit(self, task: TrialTask) -> None:
        future = self._pool.submit(trial.run_trial, task, self._cancel,
                                   source=self._setup.source, tracker=self._setup.tracker)
        self._pending[future] = task

    def in_flight(self) -> int:
        return len(self._pending)

    def completed(self, timeout: float) -> list[tuple[TrialTask, TrialOutcome]]:
        if not self._pending:
            return []
        done, _ = wait(self._pending, timeout=timeout, return_when=FIRST_COMPLETED)
        finished = [(f, self._pending.pop(f)) for f in done]
        return [(task, _outcome(f, task)) for f, task in finished]

    def cancel(self) -> None:
        self._cancel.set()

    def close(self) -> None:
        self._cancel.set()
        self._pool.shutdown(wait=True)


def _outcome(future: Future[TrialOutcome], task: TrialTask) -> TrialOutcome:
    """A crash in the trial thread (a bug) still ends its run: the driver marks it FAILED."""
    error = future.exception()
    if error is None:
        return future.result()
    return TrialOutcome(tracking.FAILED, task.run_id,
                        f"internal error: {type(error).__name__}: {error}", lost=True)

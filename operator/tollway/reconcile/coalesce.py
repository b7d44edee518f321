"""One reconcile per object at a time; the requests that arrive meanwhile collapse into one re-run."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

Key = tuple[str, str, str]
Step = Callable[[bool], bool]


class Coalescer:
    """Objects being reconciled now, those asked for again meanwhile, and (with threads) those waiting.

    Watch events (of a resource and of its children) and the resync arrive on several threads; one reconcile
    per object runs at a time, and the requests that arrive during it collapse into a single re-run on the
    latest state.

    With `threads`, a request is queued and run by one of that many threads of the Coalescer's own, so that
    the watch event's handler returns at once: kopf then holds nothing for it (at a thousand new models, the
    handler calls waiting for a thread were most of the operator's memory). A request for an object that is
    queued already takes the queued one's place (its body is the newer), so the queue holds an object once.
    Without threads, `run` runs the request on the caller's thread.
    """

    def __init__(self, threads: int = 0) -> None:
        self._busy: set[Key] = set()
        self._again: set[Key] = set()
        self._queued: dict[Key, Step] = {}
        self._order: queue.SimpleQueue[Key] = queue.SimpleQueue()
        self._guard = threading.Lock()
        self._threaded = threads > 0
        self.stopping = threading.Event()
        """Set when the operator stops: queued requests are dropped and a running one is not run again
        (every reconcile is level-based: the next start converges what this one left)."""
        for index in range(threads):
            threading.Thread(target=self._serve, name=f"tollway-reconcile-{index}", daemon=True).start()

    def run(self, key: Key, step: Step) -> None:
        """Run `step(first)` for `key` unless it runs already (then it runs once more after, on fresh state).

        `step` returns False when there is nothing left to converge (the object is gone).
        """
        if self.stopping.is_set():
            return
        if not self._threaded:
            self._run(key, step)
            return
        with self._guard:
            waiting = key in self._queued
            self._queued[key] = step
        if not waiting:
            self._order.put(key)

    def _serve(self) -> None:
        while not self.stopping.is_set():
            key = self._order.get()
            with self._guard:
                step = self._queued.pop(key)
            try:
                self._run(key, step)
            except Exception:  # a thread of the pool must outlive any one reconcile
                logging.getLogger(__name__).exception(
                    "reconcile of %s %s/%s failed; its next event or the resync retries", *key
                )

    def _run(self, key: Key, step: Step) -> None:
        if self.stopping.is_set():
            return
        with self._guard:
            if key in self._busy:
                self._again.add(key)
                return
            self._busy.add(key)
        try:
            first = True
            while not self.stopping.is_set() and step(first):
                first = False
                with self._guard:
                    if key not in self._again:
                        # in the same hold of the guard: no request can slip in between
                        self._busy.discard(key)
                        return
                    self._again.discard(key)
        finally:
            with self._guard:
                if key in self._busy:  # left by an exception, or by the object's deletion
                    self._busy.discard(key)
                    self._again.discard(key)

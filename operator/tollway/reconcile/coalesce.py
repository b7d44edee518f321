"""One reconcile per object at a time; the requests that arrive meanwhile collapse into one re-run."""

from __future__ import annotations

import threading
from collections.abc import Callable

Key = tuple[str, str, str]


class Coalescer:
    """Objects being reconciled now, and those asked for again meanwhile.

    Watch events (of a resource and of its children) and the resync arrive on several threads; one reconcile
    per object runs at a time, and the requests that arrive during it collapse into a single re-run on the
    latest state.
    """

    def __init__(self) -> None:
        self._busy: set[Key] = set()
        self._again: set[Key] = set()
        self._guard = threading.Lock()
        self.stopping = threading.Event()
        """Set when the operator stops: the reconciles queued behind kopf's threads then return at once
        (the process waits for each of them before it exits), and a running one is not run again."""

    def run(self, key: Key, step: Callable[[bool], bool]) -> None:
        """Run `step(first)` for `key` unless it runs already (then it runs once more after, on fresh state).

        `step` returns False when there is nothing left to converge (the object is gone).
        """
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

"""The burst floors that hold now (`translate.floor`): the `Burst` loop sets them, and a model's reconcile
renders its own as its autoscaler's minimum."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from tollway.translate.floor import Floor

Key = tuple[str, str]
"""(namespace, ModelDeployment name)"""


class Floors:
    """The floors that hold now, by model; the loop sets them, a model's reconcile reads its own. Their
    times are `monotonic`'s."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.monotonic = monotonic
        self._held: dict[Key, Floor] = {}
        self._lock = threading.Lock()

    def hold(self, key: Key, floor: Floor) -> None:
        with self._lock:
            self._held[key] = floor

    def replicas(self, key: Key) -> int:
        """The replicas held for the model now; 0 when no floor holds."""
        with self._lock:
            floor = self._held.get(key)
        return floor.replicas if floor is not None and floor.until > self.monotonic() else 0

    def lapse(self) -> list[Key]:
        """Forget the floors that have lapsed: the models whose autoscaler's minimum goes back."""
        now = self.monotonic()
        with self._lock:
            gone = [key for key, floor in self._held.items() if floor.until <= now]
            for key in gone:
                del self._held[key]
        return gone

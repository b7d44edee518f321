"""Which of several operator replicas serves: kopf's peering rule, for the work kopf does not pause itself."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any


def outranked(peers: Mapping[str, Mapping[str, Any]], priority: int, now: datetime) -> bool:
    """Whether a live peer (seen within its lifetime) has a higher priority than `priority`: kopf then
    pauses this replica, and so must everything else that writes (the resync loop).

    `peers` is a kopf peering object's status: identity → {priority, lastseen (ISO 8601), lifetime (s)}.
    """
    for info in peers.values():
        seen = datetime.fromisoformat(str(info["lastseen"]))
        alive = seen + timedelta(seconds=int(info.get("lifetime", 60))) > now
        if alive and int(info.get("priority", 0)) > priority:
            return True
    return False

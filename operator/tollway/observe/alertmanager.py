"""Telling Alertmanager of the alerts only the operator knows of (a suspended key), as Prometheus does."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 3


def post_alerts(url: str, alerts: list[dict[str, Any]]) -> str:
    """POST the alerts to Alertmanager's API (v2); what went wrong, or "" when it took them."""
    request = urllib.request.Request(
        f"{url.rstrip('/')}/api/v2/alerts",
        data=json.dumps(alerts).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
            answer.read()
    except Exception as error:
        return f"{type(error).__name__}: {str(error)[:200]}"
    return ""

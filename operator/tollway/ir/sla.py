"""A tier's SLA in the terms of the rules that measure it and of the reports that settle it."""

from __future__ import annotations

from dataclasses import dataclass

from tollway.api.sla import MINUTES_PER_WEEK


@dataclass(frozen=True)
class WeeklyWindow:
    start_minute: int
    """Minute of the week in UTC, 0 being Sunday 00:00 (PromQL's day_of_week() counts from Sunday)."""
    minutes: int


@dataclass(frozen=True)
class OneOffWindow:
    start: int
    """Unix seconds."""
    end: int


@dataclass(frozen=True)
class Credit:
    below: str
    """Availability percentage."""
    percent: str


@dataclass(frozen=True)
class Sla:
    availability: str
    """Target, percent of counted requests that do not fail."""
    latency_ms: int | None = None
    latency_percent: str = "99"
    """Share of counted requests (percent) that must answer within `latency_ms`."""
    weekly: tuple[WeeklyWindow, ...] = ()
    one_off: tuple[OneOffWindow, ...] = ()
    credits: tuple[Credit, ...] = ()
    """Strictly descending thresholds."""

    def in_maintenance(self, moment: int) -> bool:
        """Whether the unix second `moment` is in a maintenance window (the rules ask the same in PromQL)."""
        minute_of_week = (moment // 60 + 4 * 24 * 60) % MINUTES_PER_WEEK  # 1970-01-01 was a Thursday
        return any(
            (minute_of_week - window.start_minute) % MINUTES_PER_WEEK < window.minutes
            for window in self.weekly
        ) or any(window.start <= moment < window.end for window in self.one_off)

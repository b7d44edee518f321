"""A real Prometheus on a backfilled history: counters written as blocks by `promtool tsdb create-blocks-from
openmetrics`, then per-minute recording rules evaluated over them by `promtool tsdb create-blocks-from rules`
(against that Prometheus, as it would have recorded them), then Prometheus again with both. Nothing here is
timed: the figures are those of the blocks, whatever the machine's load."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, redirect_stdout
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from tollway.cli import main

from testbed.dataplane import prometheus
from testbed.processes import free_port


def promtool(*args: str) -> None:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: hack/setup installs Debian's prometheus"
    done = subprocess.run([binary, *args], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


def openmetrics(samples: Mapping[str, Sequence[tuple[datetime, int]]]) -> str:
    """Counters as OpenMetrics text, one series after another: each series (`name{labels}`) adds its
    increments, one per moment; a sample holds what was counted before it."""
    lines = []
    for name, steps in sorted(samples.items()):
        total = 0
        for moment, step in steps:
            lines.append(f"{name} {total} {int(moment.timestamp())}")
            total += step
    return "\n".join([*lines, "# EOF", ""])


def per_minute_rules(groups: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The groups' per-minute recording rules (`…:increase1m`: those that read raw series only), the groups
    without any left out."""
    kept = [
        {
            **group,
            "rules": [rule for rule in group["rules"] if rule.get("record", "").endswith(":increase1m")],
        }
        for group in groups
    ]
    return [group for group in kept if group["rules"]]


@contextmanager
def backfilled_prometheus(
    workdir: Path, history: str, groups: Sequence[Mapping[str, Any]], span: tuple[datetime, datetime]
) -> Iterator[str]:
    """The URL of a Prometheus holding `history` (OpenMetrics text) and the per-minute rules of `groups`
    recorded over `span`; stopped on leaving. Fails, never skips, when Prometheus or promtool cannot run."""
    tsdb = workdir / "tsdb"
    (workdir / "history.om").write_text(history)
    promtool("tsdb", "create-blocks-from", "openmetrics", str(workdir / "history.om"), str(tsdb))
    (workdir / "rules.yaml").write_text(yaml.safe_dump({"groups": per_minute_rules(groups)}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    raw = prometheus(workdir, port, [], [], tsdb=tsdb)
    try:
        promtool(
            "tsdb",
            "create-blocks-from",
            "rules",
            f"--url={url}",
            f"--start={int(span[0].timestamp())}",
            f"--end={int(span[1].timestamp())}",
            f"--output-dir={workdir / 'recorded'}",
            str(workdir / "rules.yaml"),
        )
    finally:
        raw.stop()
    for block in (workdir / "recorded").iterdir():
        block.rename(tsdb / block.name)
    served = prometheus(workdir, port, [], [], tsdb=tsdb)
    try:
        yield url
    finally:
        served.stop()


def report(
    command: str, url: str, documents: Sequence[Mapping[str, Any]], workdir: Path, *options: str
) -> str:
    """What `tollway COMMAND` (sla-report, cost-report) prints for November 2026 from `documents`."""
    manifests = workdir / f"{command}.yaml"
    manifests.write_text(yaml.safe_dump_all(documents))
    printed = io.StringIO()
    with redirect_stdout(printed):
        code = main([command, "--prometheus", url, "-f", str(manifests), "--period", "2026-11", *options])
    assert code == 0
    return printed.getvalue()

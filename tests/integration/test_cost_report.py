"""`tollway cost-report` on a real Prometheus holding a month of history (November 2026), backfilled as
test_sla_report.py does (testbed.backfill): Triton's series of model `chat`'s pods and the gateway's token
counters per model and tier, and the per-minute replica-hours rule recorded over them.

Pod `a` serves on November 3 and 10, pod `b` on the 10th only: 72 replica-hours of one GPU at 3.00 and its
node at 0.60, 259.20 USD. A pod's series stays current for Prometheus's 5-minute lookback after its last
sample, and the token counters' increase is extrapolated a little, hence the tolerances. Nothing is timed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tollway.render.monitoring import rule_groups
from tollway.translate import translate_all

from builders import api_tier, model_deployment
from testbed import backfill

MONTH = (datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC))
SAMPLE_SECONDS = 30
CHAT = model_deployment(
    "chat", **{"spec.cost": {"gpuHourPrice": "3.00", "nodeHourPrice": "0.60", "outputTokenWeight": "4"}}
)
PRO = api_tier("pro", **{"spec.pricing": {"inputPer1kTokens": "0.05", "outputPer1kTokens": "0.2"}})
FREE = api_tier("free", **{"spec.pricing": {"inputPer1kTokens": "0", "outputPer1kTokens": "0"}})


def day(number: int) -> list[datetime]:
    """A day's scrapes, every 30 s."""
    start = datetime(2026, 11, number, tzinfo=UTC)
    return [start + timedelta(seconds=SAMPLE_SECONDS * index) for index in range(86400 // SAMPLE_SECONDS)]


def openmetrics() -> str:
    """Each 30 s: pro sends 500 input and 125 output tokens on the 3rd and the 10th, free 500 input tokens
    on the 10th; each pod's Triton counts a request."""
    triton = 'nv_inference_request_success{{namespace="ai",model="chat",version="1",instance="{pod}"}}'
    tokens = 'envoy_tollway_model_{side}_tokens{{namespace="ai",model="chat",version="1",tier="{tier}"}}'
    samples = {
        triton.format(pod="a"): [(moment, 1) for moment in day(3) + day(10)],
        triton.format(pod="b"): [(moment, 1) for moment in day(10)],
        tokens.format(side="input", tier="pro"): [(moment, 500) for moment in day(3) + day(10)],
        tokens.format(side="output", tier="pro"): [(moment, 125) for moment in day(3) + day(10)],
        tokens.format(side="input", tier="free"): [(moment, 500) for moment in day(10)],
    }
    return backfill.openmetrics(samples)


@pytest.fixture(scope="module")
def prometheus_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    result = next(result for document, result in translate_all([CHAT], MONTH[0]).resources)
    assert result.ir is not None
    workdir = tmp_path_factory.mktemp("cost-report")
    with backfill.backfilled_prometheus(workdir, openmetrics(), rule_groups(result.ir), MONTH) as url:
        yield url


def cost_report(url: str, workdir: Path, *options: str) -> str:
    return backfill.report("cost-report", url, [CHAT, PRO, FREE], workdir, *options)


def test_the_month_prices_the_gpu_hours_and_shares_them_over_the_tiers_tokens(
    prometheus_url: str, tmp_path: Path
) -> None:
    """pro: 2.88M input and 0.72M output tokens, 5.76M weighted (an output token weighs 4); free: 1.44M
    input tokens. pro bears 80 % of the 259.20 (207.36) and pays 144 + 144: a margin of 80.64 (28 %); free
    bears 51.84 and pays nothing. The model: 288 of revenue, 28.80 of margin (10 %)."""
    rows = {row["tier"]: row for row in json.loads(cost_report(prometheus_url, tmp_path, "--format", "json"))}
    assert set(rows) == {"*", "pro", "free"}
    model, pro, free = rows["*"], rows["pro"], rows["free"]
    assert {row["currency"] for row in rows.values()} == {"USD"}
    assert float(model["gpu_hours"]) == pytest.approx(72, rel=0.01)
    assert float(model["serving_cost"]) == pytest.approx(259.2, rel=0.01)
    assert int(pro["input_tokens"]) == pytest.approx(2_880_000, rel=1e-3)
    assert int(pro["output_tokens"]) == pytest.approx(720_000, rel=1e-3)
    assert int(free["input_tokens"]) == pytest.approx(1_440_000, rel=1e-3)
    assert float(pro["revenue"]) == pytest.approx(288, rel=1e-3)
    assert float(pro["serving_cost"]) == pytest.approx(207.36, rel=0.01)
    assert float(pro["margin_percent"]) == pytest.approx(28, abs=1)
    assert (free["revenue"], free["margin_percent"]) == ("0", "")
    assert float(free["margin"]) == pytest.approx(-51.84, rel=0.01)
    assert float(model["margin"]) == pytest.approx(28.8, abs=3)
    assert float(model["margin_percent"]) == pytest.approx(10, abs=1)


def test_the_report_prints_a_table_and_csv(prometheus_url: str, tmp_path: Path) -> None:
    table = cost_report(prometheus_url, tmp_path).splitlines()
    assert table[0].split()[:5] == ["period", "namespace", "model", "tier", "replica_hours"]
    assert [line.split()[3] for line in table[1:]] == ["*", "free", "pro"]
    csv = cost_report(prometheus_url, tmp_path, "--format", "csv").splitlines()
    assert csv[0].startswith("period,namespace,model,tier,replica_hours,gpu_hours,input_tokens")
    assert csv[3].startswith("2026-11,ai,chat,pro,")

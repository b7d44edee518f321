"""Serving cost: its plan, the tiers whose margins are computed, the report's rows and status.cost (pure
functions)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from tollway.api import ApiTier, ModelDeployment
from tollway.api.parse import parse
from tollway.ir.state import CostCounts, MetricsState
from tollway.translate import translate_all
from tollway.translate.cost import plan_cost, report_rows
from tollway.translate.model_deployment import live_cost

from builders import api_tier, model_deployment

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
COST = {"gpuHourPrice": "2.50", "nodeHourPrice": "0.40"}


def costed(**changes: Any) -> ModelDeployment:
    return parse(ModelDeployment, model_deployment("chat", **{"spec.cost": COST, **changes}))


def tier(name: str, **pricing: str) -> ApiTier:
    return parse(ApiTier, api_tier(name, **{"spec.pricing": pricing}))


def test_a_replica_hour_costs_its_gpus_and_its_node_and_a_cpu_only_one_its_node() -> None:
    cost = plan_cost(costed(**{"spec.triton.gpus": 2}))
    assert cost is not None
    assert (cost.replica_hour_price, cost.gpus, cost.currency, cost.output_token_weight) == (
        "5.4",
        2,
        "USD",
        "4",
    )
    cpu_only = plan_cost(costed(**{"spec.triton.gpus": 0}))
    assert cpu_only is not None and (cpu_only.replica_hour_price, cpu_only.gpus) == ("0.4", 0)
    assert plan_cost(parse(ModelDeployment, model_deployment("chat"))) is None


def test_the_report_shares_the_serving_cost_by_weighted_tokens_and_prices_each_tiers_revenue() -> None:
    """100 replica-hours at 2.90 (one GPU): 290. pro used 1M input and 250k output tokens (2M weighted), free
    1M input only (1M weighted): two thirds and one third of the cost. pro pays 0.2 and 0.8 per 1k, 400; free
    pays nothing; an unknown tier's revenue is blank, and so is the model's then."""
    model = costed()
    cost = plan_cost(model)
    assert cost is not None
    counts = CostCounts(
        replica_hours=100,
        input_tokens={"pro": 1_000_000, "free": 1_000_000},
        output_tokens={"pro": 250_000},
    )
    tiers = {"pro": tier("pro", inputPer1kTokens="0.2", outputPer1kTokens="0.8"), "free": tier("free")}
    rows = report_rows(model, cost, tiers, "2026-11", counts)
    columns = ("tier", "gpu_hours", "serving_cost", "revenue", "margin", "margin_percent")
    assert [tuple(row[column] for column in columns) for row in rows] == [
        ("*", "100", "290", "400", "110", "27.5"),
        ("free", "33.333", "96.666667", "0", "-96.666667", ""),
        ("pro", "66.667", "193.333333", "400", "206.666667", "51.667"),
    ]
    assert [row["input_tokens"] for row in rows] == ["2000000", "1000000", "1000000"]
    unpriced = report_rows(model, cost, {"pro": tiers["pro"]}, "2026-11", counts)
    assert [(row["tier"], row["revenue"], row["margin"]) for row in unpriced][:2] == [
        ("*", "", ""),
        ("free", "", ""),
    ]


def test_a_tier_priced_in_another_currency_gets_no_margin_and_says_why() -> None:
    chat = model_deployment("chat", **{"spec.cost": {**COST, "currency": "EUR"}})
    pro = api_tier("pro", **{"spec.models": ["chat"]})
    translation = translate_all([chat, pro], NOW)
    gateway = translation.gateways["ai"].plan.gateway
    assert gateway is not None and gateway.tiers[0].margin_models == ()
    status = next(
        result.status for document, result in translation.resources if document["kind"] == "ApiTier"
    )
    degraded = next(item for item in status["conditions"] if item["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "CurrencyMismatch")
    assert (
        "spec.pricing.currency: USD differs from model chat's spec.cost.currency EUR" in degraded["message"]
    )


def test_status_cost_holds_the_figures_in_the_specs_currency_and_keeps_them_when_prometheus_is_away() -> None:
    model = costed(**{"spec.cost.currency": "EUR"})
    read = MetricsState(reachable=True, cost={"cost_per_hour": 5.8, "input_per1k_tokens": 0.000125})
    figures = live_cost(model, read, None, NOW)
    assert figures == {
        "cost_per_hour": "5.8",
        "input_per1k_tokens": "0.000125",
        "currency": "EUR",
        "observed_at": "2026-12-01T12:00:00Z",
    }
    assert live_cost(model, MetricsState(reachable=False, error="refused"), figures, NOW) == figures
    assert live_cost(parse(ModelDeployment, model_deployment("chat")), read, None, NOW) is None

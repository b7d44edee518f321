"""Serving cost: the spec in the rules' terms, which tiers get a margin on which model, and a period's cost
and margins per model and tier. One module for the rules' prices, the status and `tollway cost-report`, so
that all three price a replica-hour and share it over the tokens alike."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal

from tollway.api import ApiTier, ModelDeployment
from tollway.api.base import decimal
from tollway.ir.cost import ServingCost
from tollway.ir.gateway import Model
from tollway.ir.state import CostCounts
from tollway.translate.sla import FIGURE, MONEY, PERCENT, WHOLE_TIER, decimal_text, usage_cost


def plan_cost(resource: ModelDeployment) -> ServingCost | None:
    cost = resource.spec.cost
    if cost is None:
        return None
    gpus = resource.spec.triton.gpus
    price = gpus * decimal(cost.gpu_hour_price) + decimal(cost.node_hour_price)
    return ServingCost(
        currency=cost.currency,
        replica_hour_price=decimal_text(price),
        gpus=gpus,
        output_token_weight=cost.output_token_weight,
    )


def margin_models(
    tier: ApiTier, allowed: Sequence[str], served: Sequence[Model]
) -> tuple[tuple[str, ...], list[str]]:
    """The models (of `allowed`, by name) a tier's margin is computed on: those with a cost in the tier's
    currency; and a problem per model whose cost is in another, since no rate converts them."""
    currency = tier.spec.pricing.currency
    costed = {model.name: model.cost_currency for model in served if model.cost_currency is not None}
    names = sorted({name for name in allowed if name in costed})
    problems = [
        f"spec.pricing.currency: {currency} differs from model {name}'s spec.cost.currency "
        f"{costed[name]}: no margin is computed on it"
        for name in names
        if costed[name] != currency
    ]
    return tuple(name for name in names if costed[name] == currency), problems


def report_rows(
    resource: ModelDeployment,
    cost: ServingCost,
    tiers: Mapping[str, ApiTier],
    period: str,
    counts: CostCounts,
) -> list[dict[str, str]]:
    """`tollway cost-report`'s rows of one model (`cost`: its planned cost): the model as a whole, then each
    tier that used it. The serving cost, idle time included, is shared among the tiers by their weighted
    tokens (an output token weighing `output_token_weight` input tokens), as the rules share it. Revenue is
    each tier's tokens at its prices; it and the margin are left blank for a tier not in `tiers` or priced in
    another currency (and then for the model as a whole too)."""
    weight = decimal(cost.output_token_weight)
    used = sorted(set(counts.input_tokens) | set(counts.output_tokens))
    tokens = {
        tier: (counts.input_tokens.get(tier, 0.0), counts.output_tokens.get(tier, 0.0)) for tier in used
    }
    weighted = {
        tier: Decimal(str(input_tokens)) + weight * Decimal(str(output_tokens))
        for tier, (input_tokens, output_tokens) in tokens.items()
    }
    total = sum(weighted.values(), Decimal(0))
    revenues = {tier: _revenue(tiers.get(tier), cost.currency, *tokens[tier]) for tier in used}
    known = [revenue for revenue in revenues.values() if revenue is not None]
    whole = (
        WHOLE_TIER,
        Decimal(1),
        (sum(pair[0] for pair in tokens.values()), sum(pair[1] for pair in tokens.values())),
        sum(known, Decimal(0)) if len(known) == len(revenues) else None,
    )
    shares = [
        (tier, weighted[tier] / total if total else Decimal(0), tokens[tier], revenues[tier]) for tier in used
    ]
    replica_hours = Decimal(str(counts.replica_hours))
    rows = []
    for tier, share, (input_tokens, output_tokens), revenue in [whole, *shares]:
        spent = replica_hours * share * decimal(cost.replica_hour_price)
        margin = None if revenue is None else revenue - spent
        rows.append(
            {
                "period": period,
                "namespace": resource.metadata.namespace,
                "model": resource.model_name,
                "tier": tier,
                "replica_hours": decimal_text((replica_hours * share).quantize(FIGURE)),
                "gpu_hours": decimal_text((replica_hours * share * cost.gpus).quantize(FIGURE)),
                "input_tokens": str(round(input_tokens)),
                "output_tokens": str(round(output_tokens)),
                "serving_cost": _money(spent),
                "revenue": _money(revenue),
                "margin": _money(margin),
                "margin_percent": ""
                if margin is None or not revenue
                else decimal_text((PERCENT * margin / revenue).quantize(FIGURE)),
                "currency": cost.currency,
            }
        )
    return rows


def _revenue(
    tier: ApiTier | None, currency: str, input_tokens: float, output_tokens: float
) -> Decimal | None:
    """A tier's tokens at its prices; None for a tier unknown, or priced in another currency."""
    if tier is None or tier.spec.pricing.currency != currency:
        return None
    return usage_cost(tier.spec.pricing, input_tokens, output_tokens)


def _money(value: Decimal | None) -> str:
    return "" if value is None else decimal_text(value.quantize(MONEY))

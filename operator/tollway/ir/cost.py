"""A model's serving cost in the terms of the rules that record it and of the report that adds it up."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServingCost:
    currency: str
    replica_hour_price: str
    """What one replica costs per hour: its GPUs at the GPU-hour price and its share of the node."""
    gpus: int
    """GPUs per replica."""
    output_token_weight: str
    """What one output token costs in input tokens, when the cost is shared out over them."""

"""What serving a model costs: the price of the GPUs and nodes its replicas hold, which the rules turn into a
cost per 1,000 input and output tokens and each tier's margin on it."""

from __future__ import annotations

from pydantic import Field

from tollway.api.base import Currency, DecimalString, Rule, TollwayModel, decimal


class Cost(TollwayModel):
    """The hourly prices of what each replica holds. The serving cost per hour is the Triton replicas
    (counted from Triton's own metrics) x (`triton.gpus` x `gpuHourPrice` + `nodeHourPrice`); per token, it
    is shared out over the tokens the gateway counted for the model, an output token weighing
    `outputTokenWeight` input tokens."""

    rules = (
        Rule(
            field=".outputTokenWeight",
            message="outputTokenWeight must be above 0",
            cel="double(self.outputTokenWeight) > 0.0",
            holds=lambda cost: decimal(cost.output_token_weight) > 0,
        ),
    )

    currency: Currency = "USD"
    """ISO 4217; a tier priced in another currency gets no margin on this model (its status says so)."""
    gpu_hour_price: DecimalString = "0"
    """The price of one GPU for an hour (nvidia.com/gpu: `triton.gpus` per replica)."""
    node_hour_price: DecimalString = "0"
    """The price per hour of the rest of what each replica holds (its share of the node: CPU, memory); a
    CPU-only model (`triton.gpus: 0`) costs only this."""
    output_token_weight: DecimalString = "4"
    """How many input tokens one output token costs: a prompt is read in one parallel pass, while each
    output token takes a pass of its own (decode), so output costs several times more GPU time; hosted APIs
    price output at 3 to 5 times input. Cost per input token = cost per second / (input tokens per second +
    weight x output tokens per second); an output token costs `weight` times that."""


class CostStatus(TollwayModel):
    """What serving the model costs now, from Prometheus; the last figures stay, with their time, when
    Prometheus is away."""

    cost_per_hour: DecimalString | None = None
    """The replicas running now at the spec's prices."""
    input_per1k_tokens: DecimalString | None = Field(default=None, alias="inputPer1kTokens")
    """Over the last hour: unset without traffic."""
    output_per1k_tokens: DecimalString | None = Field(default=None, alias="outputPer1kTokens")
    currency: Currency = "USD"
    observed_at: str | None = Field(default=None, json_schema_extra={"format": "date-time"})

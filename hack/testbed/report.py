"""The demo's report (hack/demo.py): the traffic through the gateway and what Prometheus and the operator
made of it, as a `Report` built from measurements. `text` is what the demo prints; `judge` says whether
everything behaved as the resources say (exit 0) or what did not (exit 1). Both are pure functions of the
report, so a unit test can feed them made-up measurements."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from testbed.client import Reply, percentile
from testbed.triton import usage

RATE_HEADERS = ("x-ratelimit-", "retry-after")
DEPRECATION_HEADERS = ("deprecation", "sunset", "link")


@dataclass(frozen=True)
class SentRequest:
    """One request of the demo's traffic, and its reply."""

    consumer: str
    model: str
    """As the client named it: chat, chat:stable …"""
    minute: int
    """The calendar minute it was sent in: the ratelimit service's window."""
    reply: Reply


@dataclass(frozen=True)
class ConsumerTraffic:
    """What one consumer sent and received, and what its tier allows."""

    name: str
    tier: str
    requests_per_minute: int | None
    sent_per_window: tuple[int, ...]
    """Requests sent in each calendar minute."""
    allowed: int
    limited: int
    input_tokens: int
    output_tokens: int
    currency: str
    cost: Decimal
    unexpected: tuple[SentRequest, ...]
    """Requests neither allowed (200) nor limited (429)."""

    @property
    def sent(self) -> int:
        return sum(self.sent_per_window)

    @property
    def expected_allowed(self) -> int:
        # Sent one after another, well under every token limit: only requests per minute limit them.
        return sum(min(count, self.requests_per_minute or count) for count in self.sent_per_window)

    def usage(self) -> dict[tuple[str, str], int]:
        """What the gateway should have counted for this consumer: (kind, consumer) → total."""
        return {
            ("requests", self.name): self.allowed,
            ("input", self.name): self.input_tokens,
            ("output", self.name): self.output_tokens,
        }


def consumer_traffic(
    name: str, tier: str, tier_spec: Mapping[str, Any], requests: Iterable[SentRequest]
) -> ConsumerTraffic:
    """One consumer's share of `requests`, priced and limited by its tier's spec."""
    mine = [request for request in requests if request.consumer == name]
    allowed = [usage(request.reply) for request in mine if request.reply.status == 200]
    input_tokens = sum(counted["prompt_tokens"] for counted in allowed)
    output_tokens = sum(counted["completion_tokens"] for counted in allowed)
    pricing = tier_spec.get("pricing") or {}
    cost = (
        input_tokens * Decimal(pricing.get("inputPer1kTokens", "0"))
        + output_tokens * Decimal(pricing.get("outputPer1kTokens", "0"))
    ) / 1000
    return ConsumerTraffic(
        name=name,
        tier=tier,
        requests_per_minute=(tier_spec.get("limits") or {}).get("requestsPerMinute"),
        sent_per_window=tuple(Counter(request.minute for request in mine).values()),
        allowed=len(allowed),
        limited=sum(1 for request in mine if request.reply.status == 429),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        currency=pricing.get("currency", ""),
        cost=cost,
        unexpected=tuple(request for request in mine if request.reply.status not in (200, 429)),
    )


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p99_ms: float
    count: int


def latency(requests: Iterable[SentRequest]) -> Latency | None:
    """Of the allowed requests, as the clients timed them; None when none was allowed."""
    milliseconds = [request.reply.seconds * 1000 for request in requests if request.reply.status == 200]
    if not milliseconds:
        return None
    return Latency(percentile(milliseconds, 0.5), percentile(milliseconds, 0.99), len(milliseconds))


@dataclass(frozen=True)
class Sample:
    """A reply shown for the headers whose names begin with one of `prefixes`."""

    title: str
    prefixes: tuple[str, ...]
    reply: Reply | None
    """None: no such request was sent."""

    def shown(self) -> dict[str, str]:
        headers = sorted(self.reply.headers.items()) if self.reply else []
        return {name: value for name, value in headers if name.startswith(self.prefixes)}


def samples(requests: list[SentRequest]) -> tuple[Sample, ...]:
    """The rate-limit headers of an allowed and of a limited request; the deprecation headers of an old
    version."""

    def first(match: Callable[[SentRequest], bool]) -> Reply | None:
        return next((request.reply for request in requests if match(request)), None)

    return (
        Sample(
            "A sample response (bob → chat)",
            RATE_HEADERS,
            first(lambda request: request.consumer == "bob" and request.model == "chat"),
        ),
        Sample(
            "A limited request (alice → chat)",
            RATE_HEADERS,
            first(lambda request: request.reply.status == 429),
        ),
        Sample(
            "A deprecated version (bob → chat:stable = version 2)",
            DEPRECATION_HEADERS,
            first(lambda request: request.model == "chat:stable"),
        ),
    )


@dataclass(frozen=True)
class Condition:
    resource: str
    """KIND/NAME"""
    type: str
    status: str
    reason: str
    message: str


def unwelcome_conditions(resources: Iterable[Mapping[str, Any]]) -> tuple[Condition, ...]:
    """The Ready=False and Degraded=True conditions in the resources' status."""
    found = []
    for item in resources:
        for condition in item["status"]["conditions"]:
            unwelcome = "False" if condition["type"] == "Ready" else "True"
            if condition["type"] in ("Ready", "Degraded") and condition["status"] == unwelcome:
                found.append(
                    Condition(
                        resource=f"{item['kind']}/{item['metadata']['name']}",
                        type=condition["type"],
                        status=unwelcome,
                        reason=condition["reason"],
                        message=condition["message"],
                    )
                )
    return tuple(found)


@dataclass(frozen=True)
class StreamedAnswer:
    """One chat answer streamed through the gateway to the official OpenAI SDK, as the client saw it."""

    consumer: str
    asked: str
    """The `model` the client asked for."""
    served: str
    """The response's `model`: what served it."""
    text: str
    ttft_ms: float
    total_ms: float
    chunks: int
    prompt_tokens: int
    completion_tokens: int
    request_id: str = ""
    """The answer's x-request-id, which the gateway made: what feedback on it names."""
    cache: str = ""
    """What the model's answer cache said of it (x-tollway-cache: hit, miss, skip, off; "" without one)."""
    repeat: StreamedAnswer | None = None
    """The same question asked again."""

    def usage(self) -> dict[tuple[str, str], int]:
        found = {
            ("requests", self.consumer): 1,
            ("input", self.consumer): self.prompt_tokens,
            ("output", self.consumer): self.completion_tokens,
        }
        for key, total in (self.repeat.usage() if self.repeat else {}).items():
            found[key] += total
        return found


@dataclass(frozen=True)
class EmbeddingAnswer:
    """Embeddings asked for through the gateway with the official OpenAI SDK."""

    consumer: str
    asked: str
    served: str
    vectors: int
    dimensions: int
    prompt_tokens: int

    def usage(self) -> dict[tuple[str, str], int]:
        return {("requests", self.consumer): 1, ("input", self.consumer): self.prompt_tokens}


@dataclass(frozen=True)
class Quality:
    """The streaming consumer's rating of its answer (POST /v1/feedback) and what the gateway did with it,
    and the capacity of each model its tier may use (GET /v1/capacity)."""

    rated: str
    """The request id the rating names."""
    feedback_status: int
    feedback_recorded: bool
    """The rating reached the sample sink (the OpenTelemetry Collector) naming that request."""
    samples: int
    """Quality samples the sink holds (each model's spec.monitoring.sampleRate of its requests)."""
    capacity: tuple[str, ...]
    """'MODEL: STATE' per model, as the gateway answered from the document the operator published."""


@dataclass(frozen=True)
class Report:
    envoy_replicas: int
    traffic: tuple[ConsumerTraffic, ...]
    latency: Latency | None
    samples: tuple[Sample, ...]
    gateway_counters: dict[tuple[str, str], int]
    """The gateway's usage counters in Prometheus: (requests|input|output, consumer) → total."""
    every_model_has_p99: bool
    """Whether the operator wrote every ModelDeployment's P99, read from Prometheus, into its status."""
    resource_table: str
    """`kubectl get md,tier` as it printed."""
    conditions: tuple[Condition, ...]
    streamed: StreamedAnswer | None = None
    embedded: EmbeddingAnswer | None = None
    gateway_ttft_ms: float | None = None
    """The streamed answer's time to first token as the gateway measured it (its histogram in Prometheus)."""
    quality: Quality | None = None


def client_usage(
    traffic: Iterable[ConsumerTraffic], *answers: StreamedAnswer | EmbeddingAnswer | None
) -> dict[tuple[str, str], int]:
    """What the gateway should have counted, by what the clients received (the KServe traffic and the OpenAI
    SDK's `answers`): (kind, consumer) → total."""
    found = {key: total for consumer in traffic for key, total in consumer.usage().items()}
    for answer in answers:
        for key, total in (answer.usage() if answer else {}).items():
            found[key] = found.get(key, 0) + total
    return found


def _streamed_lines(answer: StreamedAnswer) -> list[str]:
    return [
        "",
        f"Streamed through the OpenAI SDK (chat.completions, stream=True) as {answer.consumer}: "
        f'model "{answer.asked}" served by {answer.served}',
        f"  first token after {answer.ttft_ms:.1f} ms, the last after {answer.total_ms:.1f} ms, "
        f"{answer.chunks} chunks; usage {answer.prompt_tokens} prompt + {answer.completion_tokens} "
        "completion tokens",
        f"  {answer.text.strip()[:100]!r}",
        *(
            [
                f"  asked again: the model's answer cache said {answer.repeat.cache} (the first time: "
                f"{answer.cache}); the whole answer after {answer.repeat.total_ms:.1f} ms, the same text: "
                f"{answer.repeat.text == answer.text}"
            ]
            if answer.repeat
            else []
        ),
    ]


def text(report: Report) -> str:
    """The report as the demo prints it."""
    replicas = f"{report.envoy_replicas} Envoy replicas, one ratelimit service on Redis"
    columns = f"{'consumer':<9} {'tier':<11} {'sent':>5} {'allowed':>8} {'limited':>8} {'in tok':>7}"
    lines = [
        "",
        f"Traffic through the gateway ({replicas}):",
        f"  {columns} {'out tok':>8} {'cost':>14}   expected",
    ]
    for row in report.traffic:
        lines.append(
            f"  {row.name:<9} {row.tier:<11} {row.sent:>5} {row.allowed:>8} {row.limited:>8}"
            f" {row.input_tokens:>7} {row.output_tokens:>8} {row.currency:>4} {row.cost:>9.6f}"
            f"   {row.expected_allowed} allowed ({row.requests_per_minute}/min)"
        )
    if measured := report.latency:
        lines += [
            "",
            "Latency through the gateway (allowed requests, as the clients saw it): "
            f"P50 {measured.p50_ms:.1f} ms, P99 {measured.p99_ms:.1f} ms, n={measured.count}",
        ]
    for sample in report.samples:
        if sample.reply is None:
            continue
        lines += ["", f"{sample.title}: HTTP {sample.reply.status}"]
        lines += [f"  {name}: {value}" for name, value in sample.shown().items()]
        if sample.reply.status != 200:
            lines.append(f"  body: {sample.reply.body.decode(errors='replace')[:200]}")
    if report.streamed is not None:
        lines += _streamed_lines(report.streamed)
        ttft = "none" if report.gateway_ttft_ms is None else f"{report.gateway_ttft_ms:.1f} ms"
        lines.append(f"  its time to first token by the gateway's histogram in Prometheus: {ttft}")
    if (embedded := report.embedded) is not None:
        lines += [
            "",
            f'Embeddings through the OpenAI SDK as {embedded.consumer}: model "{embedded.asked}" served by '
            f"{embedded.served}, {embedded.vectors} vectors of {embedded.dimensions}, "
            f"usage {embedded.prompt_tokens} prompt tokens",
        ]
    if (quality := report.quality) is not None:
        recorded = "reached the sample sink" if quality.feedback_recorded else "never reached the sample sink"
        lines += [
            "",
            f"Feedback on the streamed answer (request {quality.rated}): HTTP {quality.feedback_status}, "
            f"{recorded}; quality samples recorded: {quality.samples}",
            f"Capacity, as its tier may read it (GET /v1/capacity): {'; '.join(quality.capacity)}",
        ]
    agree = report.gateway_counters == client_usage(report.traffic, report.streamed, report.embedded)
    lines += [
        "",
        "The gateway's usage counters in Prometheus (read by the cost and usage-spike rules): "
        + (
            "requests and tokens per consumer equal what the clients received."
            if agree
            else "they differ from what the clients received."
        ),
        "",
        report.resource_table,
        "What the operator says (its pods run on the test bed's simulated nodes, which run no container: the",
        "data path above ran beside them, on loopback, from the same resources):",
    ]
    lines += [
        f"  {condition.resource} {condition.type}={condition.status} {condition.reason}: {condition.message}"
        for condition in report.conditions
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    reasons: tuple[str, ...]
    """What did not behave as the resources say; none when everything did."""

    @property
    def exit_code(self) -> int:
        return 1 if self.reasons else 0

    def text(self, seconds: float) -> str:
        """The demo's last words, after `seconds`."""
        if not self.reasons:
            return f"\nEverything behaved as configured ({seconds:.0f}s)."
        heading = f"\nFAILED after {seconds:.0f}s; what did not behave as configured:"
        return "\n".join([heading, *(f"  - {reason}" for reason in self.reasons)])


def judge(report: Report) -> Verdict:
    """Whether the gateway limited, counted and labelled the traffic as the resources say, and the operator
    read every model's P99 from Prometheus."""
    reasons = []
    for row in report.traffic:
        if (row.allowed, row.limited) != (row.expected_allowed, row.sent - row.expected_allowed):
            reasons.append(
                f"{row.name}: {row.allowed} allowed, {row.limited} limited; expected {row.expected_allowed}"
            )
        reasons += [
            f"{row.name} → {request.model}: HTTP {request.reply.status} {request.reply.body[:200]!r}"
            for request in row.unexpected
        ]
    for sample in report.samples:
        if sample.reply is None:
            reasons.append(f"no reply for: {sample.title}")
        elif not sample.shown():
            reasons.append(f"{sample.title}: none of the headers {', '.join(sample.prefixes)}")
    answer = report.streamed
    if answer is not None and not (answer.text and answer.chunks > 1 and answer.ttft_ms < answer.total_ms):
        reasons.append(f"the streamed answer came whole or empty: {answer}")
    if answer is not None and report.gateway_ttft_ms is None:
        reasons.append("the gateway's TTFT histogram of the streamed model never reached Prometheus")
    quality = report.quality
    if quality is not None and (quality.feedback_status, quality.feedback_recorded) != (202, True):
        reasons.append(f"the rating of the streamed answer was not recorded: {quality}")
    if quality is not None and not quality.capacity:
        reasons.append("the gateway said nothing of any model's capacity")
    seen = client_usage(report.traffic, answer, report.embedded)
    if report.gateway_counters != seen:
        reasons.append(f"usage counters {report.gateway_counters} != what clients saw {seen}")
    if not report.every_model_has_p99:
        reasons.append("the operator did not write every model's P99 from Prometheus into its status")
    return Verdict(tuple(reasons))

"""The demo's report (testbed.report) on made-up measurements: what it prints, and how it judges the run."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed.client import Reply, percentile
from testbed.report import (
    Quality,
    Report,
    SentRequest,
    consumer_traffic,
    judge,
    latency,
    samples,
    text,
    unwelcome_conditions,
)

ROOT = Path(__file__).resolve().parents[2]
#: The report as the README shows it.
README_TABLE = """
Traffic through the gateway (2 Envoy replicas, one ratelimit service on Redis):
  consumer  tier         sent  allowed  limited  in tok  out tok           cost   expected
  alice     free           26       20        6     160      320  USD  0.000000   20 allowed (20/min)
  bob       pro            30       30        0     240      480  USD  0.000840   30 allowed (600/min)
  carol     enterprise     30       30        0     240      480  USD  0.000672   30 allowed (6000/min)

Latency"""
CONDITIONS = """\
What the operator says (its pods run on the test bed's simulated nodes, which run no container: the
data path above ran beside them, on loopback, from the same resources):
  ModelDeployment/chat Ready=False NoReplicas: 0 of 1 replicas ready"""
TIERS = {
    document["metadata"]["name"]: document["spec"]
    for document in yaml.safe_load_all((ROOT / "examples" / "20-tiers.yaml").read_text())
    if document and document["kind"] == "ApiTier"
}
CONSUMERS = {"alice": "free", "bob": "pro", "carol": "enterprise"}
MINUTE = 29_000_000
RESOURCE_TABLE = (
    "NAME                                READY   REPLICAS   P99     QUEUE   AGE\n"
    "modeldeployment.tollway.dev/chat    False   0          3.858   0       23s\n"
)
NOT_READY = {
    "kind": "ModelDeployment",
    "metadata": {"name": "chat"},
    "status": {
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "NoReplicas", "message": "0 of 1 replicas ready"},
            {"type": "Degraded", "status": "False", "reason": "AsExpected", "message": ""},
        ]
    },
}


def allowed(limit: int, remaining: int, seconds: float = 0.01, **headers: str) -> Reply:
    """An answer of the echo model (8 prompt tokens, 16 completion tokens) with the gateway's headers."""
    usage = json.dumps({"prompt_tokens": 8, "completion_tokens": 16})
    body = {"outputs": [{"name": "OUTPUT", "data": [1.0] * 8}, {"name": "USAGE", "data": [usage]}]}
    rate = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(remaining)}
    return Reply(
        200, {"content-type": "application/json", **rate, **headers}, json.dumps(body).encode(), seconds
    )


def limited(limit: int) -> Reply:
    headers = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": "0", "retry-after": "42"}
    return Reply(429, headers, b'{"error":{"code":429}}', 0.002)


def the_demos_traffic() -> list[SentRequest]:
    """What the demo sends, answered as the resources say: free's 26 requests meet its 20 per minute."""
    sent = [SentRequest("alice", "chat", MINUTE, allowed(20, 19 - index)) for index in range(20)]
    sent += [SentRequest("alice", "chat", MINUTE, limited(20)) for _ in range(6)]
    sent += [SentRequest("bob", "chat", MINUTE, allowed(600, 599 - index)) for index in range(20)]
    deprecated = {"deprecation": "@1790812800", "sunset": "Fri, 15 Jan 2027 00:00:00 GMT"}
    sent += [SentRequest("bob", "chat:stable", MINUTE, allowed(600, 579, **deprecated)) for _ in range(10)]
    sent += [
        SentRequest("carol", model, MINUTE, allowed(6000, 5999)) for model in ["chat", "text-embed"] * 15
    ]
    return sent


def report_of(sent: list[SentRequest], **changes: Any) -> Report:
    traffic = tuple(consumer_traffic(name, tier, TIERS[tier], sent) for name, tier in CONSUMERS.items())
    counters = {
        (kind, row.name): total for row in traffic for kind, total in row_usage(row.name, sent).items()
    }
    report = Report(
        envoy_replicas=2,
        traffic=traffic,
        latency=latency(sent),
        samples=samples(sent),
        gateway_counters=counters,
        every_model_has_p99=True,
        resource_table=RESOURCE_TABLE,
        conditions=unwelcome_conditions([NOT_READY]),
    )
    return replace(report, **changes)


def row_usage(consumer: str, sent: list[SentRequest]) -> dict[str, int]:
    """What the gateway's counters hold when they agree with the clients."""
    served = [request for request in sent if request.consumer == consumer and request.reply.status == 200]
    return {"requests": len(served), "input": 8 * len(served), "output": 16 * len(served)}


def test_a_run_that_behaved_prints_the_readmes_report_and_passes() -> None:
    report = report_of(the_demos_traffic())
    printed = text(report)
    assert README_TABLE in printed
    assert "\nLatency through the gateway (allowed requests, as the clients saw it): P50 10.0 ms," in printed
    assert "\nA sample response (bob → chat): HTTP 200\n  x-ratelimit-limit: 600\n" in printed
    assert "\nA limited request (alice → chat): HTTP 429\n  retry-after: 42\n" in printed
    assert '  body: {"error":{"code":429}}\n' in printed
    deprecated = (
        "A deprecated version (bob → chat:stable = version 2): HTTP 200\n  deprecation: @1790812800\n"
    )
    assert deprecated in printed and "  sunset: Fri, 15 Jan 2027 00:00:00 GMT\n" in printed
    assert "requests and tokens per consumer equal what the clients received.\n\nNAME " in printed
    assert printed.endswith(f"\n\n{RESOURCE_TABLE}\n{CONDITIONS}")
    verdict = judge(report)
    assert verdict.reasons == () and verdict.exit_code == 0
    assert verdict.text(35.2) == "\nEverything behaved as configured (35s)."


def test_a_burst_split_over_two_minutes_is_limited_per_minute() -> None:
    sent = [replace(request, minute=MINUTE + index % 2) for index, request in enumerate(the_demos_traffic())]
    sent = [
        replace(request, reply=allowed(20, 0)) if request.consumer == "alice" else request for request in sent
    ]
    report = report_of(sent)
    alice = report.traffic[0]
    assert (alice.sent_per_window, alice.expected_allowed) == ((13, 13), 26)
    # Within its limit in either minute; only the sample of a limited request is missing then.
    assert judge(report).reasons == ("no reply for: A limited request (alice → chat)",)


def test_what_did_not_behave_is_each_a_reason_and_exit_1() -> None:
    sent = the_demos_traffic()
    sent = [
        replace(request, reply=allowed(20, 0)) if request.consumer == "alice" else request for request in sent
    ]
    sent[-1] = replace(sent[-1], reply=Reply(503, {}, b"upstream connect error", 0.001))
    report = report_of(
        [request for request in sent if request.model != "chat:stable"],
        gateway_counters={("requests", "alice"): 3},
        every_model_has_p99=False,
    )
    verdict = judge(report)
    assert verdict.reasons == (
        "alice: 26 allowed, 0 limited; expected 20",
        "carol: 29 allowed, 0 limited; expected 30",
        "carol → text-embed: HTTP 503 b'upstream connect error'",
        "no reply for: A limited request (alice → chat)",
        "no reply for: A deprecated version (bob → chat:stable = version 2)",
        f"usage counters {{('requests', 'alice'): 3}} != what clients saw {client_view(report)}",
        "the operator did not write every model's P99 from Prometheus into its status",
    )
    assert verdict.exit_code == 1
    assert verdict.text(61).splitlines()[1:3] == [
        "FAILED after 61s; what did not behave as configured:",
        "  - alice: 26 allowed, 0 limited; expected 20",
    ]
    assert "they differ from what the clients received." in text(report)


def client_view(report: Report) -> dict[tuple[str, str], int]:
    return {key: total for row in report.traffic for key, total in row.usage().items()}


def test_a_reply_without_the_headers_it_is_shown_for_is_a_reason() -> None:
    sent = the_demos_traffic()
    bare = replace(sent[26], reply=replace(sent[26].reply, headers={"content-type": "application/json"}))
    verdict = judge(report_of([bare, *sent]))
    assert verdict.reasons == (
        "A sample response (bob → chat): none of the headers x-ratelimit-, retry-after",
    )


def test_no_allowed_request_prints_no_latency() -> None:
    sent = [replace(request, reply=limited(20)) for request in the_demos_traffic()]
    assert latency(sent) is None
    assert "Latency" not in text(report_of(sent))


@pytest.mark.parametrize(
    ("count", "share", "expected"),
    [(100, 0.99, 99), (100, 0.5, 50), (80, 0.99, 80), (4, 0.5, 2), (1, 0.99, 1), (3, 0.0, 1)],
)
def test_percentile_is_the_nearest_rank(count: int, share: float, expected: float) -> None:
    values = [float(value) for value in range(count, 0, -1)]  # order does not matter
    assert percentile(values, share) == expected


def test_a_rating_that_never_reached_the_sink_is_a_reason_and_capacity_is_printed() -> None:
    recorded = Quality(
        rated="6f1c",
        feedback_status=202,
        feedback_recorded=True,
        samples=1,
        capacity=("chat: unavailable", "text-embed: unavailable"),
    )
    report = report_of(the_demos_traffic(), quality=recorded)
    assert judge(report).reasons == ()
    printed = text(report)
    assert (
        "\nFeedback on the streamed answer (request 6f1c): HTTP 202, reached the sample sink; "
        "quality samples recorded: 1\n"
        "Capacity, as its tier may read it (GET /v1/capacity): chat: unavailable; text-embed: unavailable\n"
    ) in printed
    unrecorded = replace(recorded, feedback_recorded=False, capacity=())
    assert judge(report_of(the_demos_traffic(), quality=unrecorded)).reasons == (
        f"the rating of the streamed answer was not recorded: {unrecorded}",
        "the gateway said nothing of any model's capacity",
    )

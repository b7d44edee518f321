"""The hold (hold.lua) under LuaJIT, driven through a fake Envoy handle, with its data rendered from
resources: a request routed to a model that scales to zero waits while the model has no ready replica, and is
turned away with Retry-After beyond the hold's time or count. The waits themselves (Envoy's internal listener,
the circuit breaker) are on the real data path in tests/integration/test_scale_from_zero.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from lua_gateway import Handle, HoldProgram, lua_text

from tollway.api import ApiTier, ModelDeployment
from tollway.api.parse import parse
from tollway.render.envoy import hold_data, lua_data
from tollway.translate.gateway import plan_gateway

from builders import api_tier, model_deployment

NOW = datetime(2026, 12, 1, tzinfo=UTC)
WAKES = {"minReplicas": 0, "maxReplicas": 2, "scaleFromZero": {"holdSeconds": 10, "wakeSeconds": 30}}
GRPC_READY = lua_text(b"\0\0\0\0\2\x08\x01")
GRPC_NOT_READY = lua_text(b"\0\0\0\0\0")
WAITED = (204, "")
OVERFLOW = (503, "upstream connect error", {"x-envoy-overloaded": "true"})
NO_HOST = (503, "no healthy upstream")


def data(**autoscaling: Any) -> dict[str, Any]:
    model = model_deployment(
        **{"spec.autoscaling": autoscaling or WAKES, "spec.model.openai": {"kind": "completion"}}
    )
    gold = api_tier("gold", **{"spec.limits": {"concurrentRequests": 2}})
    plan = plan_gateway(
        "ai",
        tiers=[parse(ApiTier, api_tier()), parse(ApiTier, gold)],
        models=[parse(ModelDeployment, model)],
        secrets=[],
        now=NOW,
    )
    assert plan.gateway is not None
    return hold_data(plan.gateway)


def answers(*replies: tuple[Any, ...]) -> Callable[[str, dict[str, str], str], tuple[Any, ...]]:
    """The calls' answers in turn (the last one from then on)."""
    queue = list(replies)
    return lambda *_: queue.pop(0) if len(queue) > 1 else queue[0]


def called(handle: Handle) -> list[tuple[str, str]]:
    return [(cluster, headers[":path"]) for cluster, headers, _, _ in handle.calls]


def test_only_a_model_that_scales_to_zero_has_a_hold() -> None:
    assert data(minReplicas=1, maxReplicas=2) == {"models": {}, "clusters": {}}
    rendered = data()
    assert rendered["models"] == {
        "chat": {
            "holds": {"pro": "hold|chat|pro", "gold": "hold|chat|gold"},
            "hold_ms": 10_000,
            "wake_seconds": 30,
        }
    }
    # every cluster its requests may be routed to, a tier's own included, checked in its own protocol
    assert rendered["clusters"] == {
        f"triton-{protocol}|chat{tier}": {"model": "chat", "protocol": protocol}
        for protocol in ("http", "grpc", "openai")
        for tier in ("", "|gold")
    }


def test_a_request_to_another_cluster_is_left_alone() -> None:
    handle = HoldProgram(data()).request("triton-http|embed", answers(NO_HOST), [0])
    assert handle.calls == [] and handle.reply is None


def test_a_ready_model_is_asked_once_every_two_seconds_per_worker() -> None:
    program = HoldProgram(data())
    first = program.request("triton-http|chat", answers((200, "")), [1000])
    assert called(first) == [("triton-http|chat", "/v2/health/ready")] and first.reply is None
    assert "held_ms" not in first.tollway
    soon = program.request("triton-http|chat", answers(NO_HOST), [2999])
    assert soon.calls == [] and soon.reply is None  # believed ready: no call
    later = program.request("triton-http|chat|gold", answers((200, "")), [3000])
    assert called(later) == [("triton-http|chat|gold", "/v2/health/ready")]  # each cluster its own
    expired = program.request("triton-http|chat", answers((200, "")), [3000])
    assert len(expired.calls) == 1


def test_a_request_waits_a_second_at_a_time_until_its_cluster_has_a_ready_replica() -> None:
    program = HoldProgram(data())
    handle = program.request(
        "triton-openai|chat",
        answers(NO_HOST, WAITED, (503, '{"ready": false}'), WAITED, (200, "")),
        [0, 0, 0, 1000, 1000, 2000, 2000, 2000],
    )
    assert handle.reply is None
    assert called(handle) == [
        ("triton-openai|chat", "/healthz"),
        ("hold|chat|pro", "/"),
        ("triton-openai|chat", "/healthz"),
        ("hold|chat|pro", "/"),
        ("triton-openai|chat", "/healthz"),
    ]
    assert handle.tollway["held_ms"] == "2000"


@pytest.mark.parametrize(("ready_body", "passes"), [(GRPC_READY, True), (GRPC_NOT_READY, False), ("", False)])
def test_grpc_is_ready_only_when_triton_says_ready_true(ready_body: str, passes: bool) -> None:
    handle = HoldProgram(data()).request("triton-grpc|chat", answers((200, ready_body), OVERFLOW), [0])
    cluster, headers, body, _ = handle.calls[0]
    assert (cluster, headers[":path"], body) == (
        "triton-grpc|chat",
        "/inference.GRPCInferenceService/ServerReady",
        lua_text(b"\0\0\0\0\0"),
    )
    assert headers["content-type"] == "application/grpc"
    assert (handle.reply is None) is passes


def test_beyond_the_hold_time_the_request_is_told_when_to_come_back() -> None:
    program = HoldProgram(data())
    # not ready at 0, 1, ... 10 s: the hold (10 s) is over at the check of 10 s
    clock = [0, *(at for second in range(11) for at in (second * 1000, second * 1000))]
    handle = program.request("triton-http|chat", answers(NO_HOST, WAITED), clock)
    assert handle.reply is not None and handle.reply.status == 503
    assert handle.reply.headers == {"retry-after": "20"}  # 30 s expected, 10 gone
    assert "no replica was ready in time" in handle.reply.body
    assert sum(1 for cluster, _ in called(handle) if cluster == "hold|chat|pro") == 10


def test_beyond_the_count_the_request_is_turned_away_at_once() -> None:
    program = HoldProgram(data())
    waking = program.request(
        "triton-http|chat", answers(NO_HOST, WAITED, NO_HOST, OVERFLOW), [5000, 5000, 5000, 6000, 6000, 7000]
    )
    assert waking.reply is not None and waking.reply.headers == {"retry-after": "28"}  # 2 s gone
    # the next request, 4 s into this worker's wait for the model: the count is still full
    full = program.request("triton-http|chat", answers(NO_HOST, OVERFLOW), [9000])
    assert full.reply is not None and full.reply.status == 503
    assert full.reply.headers == {"retry-after": "26"}
    assert "as many of your tier's requests as it holds are waiting" in full.reply.body
    # once a request finds it ready, the wake is over: a later one counts from its own wait again
    program.request("triton-http|chat", answers((200, "")), [20000])
    after = program.request("triton-http|chat", answers(NO_HOST, OVERFLOW), [30000])
    assert after.reply is not None and after.reply.headers == {"retry-after": "30"}


def test_each_tier_waits_in_a_room_of_its_own() -> None:
    """maxHeldRequests is per tier: one tier's callers filling the hold leave another tier's room alone."""
    program = HoldProgram(data())
    pro = program.request("triton-http|chat", answers(NO_HOST, OVERFLOW), [0])
    assert called(pro) == [("triton-http|chat", "/v2/health/ready"), ("hold|chat|pro", "/")]
    assert pro.reply is not None and "as many of your tier's requests as it holds" in pro.reply.body
    gold = program.request(
        "triton-http|chat|gold",
        answers(NO_HOST, WAITED, (200, "")),
        [0, 0, 0, 1000, 1000, 1000],
        metadata={"model": "chat", "inference": "1", "tier": "gold"},
    )
    assert ("hold|chat|gold", "/") in called(gold) and gold.reply is None
    # a tier the hold does not know (none can get here: the tier's check that it may call the model comes
    # first) is turned away, never held where another tier's room would count it
    stranger = program.request(
        "triton-http|chat", answers(NO_HOST), [0], metadata={"model": "chat", "inference": "1", "tier": "x"}
    )
    assert stranger.reply is not None and "the hold keeps no room for its tier" in stranger.reply.body
    assert called(stranger) == [("triton-http|chat", "/v2/health/ready")]


def test_a_cluster_envoy_does_not_have_yet_is_waited_for_not_failed() -> None:
    """Listeners and clusters reload from two files: for a moment a listener may route to a cluster Envoy
    does not have yet, and Envoy raises an error for a call to it. The request waits a second and asks
    again."""
    replies: list[tuple[Any, ...] | Exception] = [
        RuntimeError("http call cluster invalid. Must be configured"),  # not there yet
        WAITED,
        (200, ""),  # there now, and ready
    ]

    def reload_race(*_: Any) -> tuple[Any, ...]:
        reply = replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    gold = HoldProgram(data()).request(
        "triton-http|chat|gold",
        reload_race,
        [0, 0, 0, 1000, 1000, 1000],
        metadata={"model": "chat", "inference": "1", "tier": "gold"},
    )
    assert gold.reply is None and gold.tollway["held_ms"] == "1000"
    assert called(gold) == [
        ("triton-http|chat|gold", "/v2/health/ready"),
        ("hold|chat|gold", "/"),
        ("triton-http|chat|gold", "/v2/health/ready"),
    ]
    assert len(gold.errors) == 1 and "cluster invalid" in gold.errors[0]


def test_only_inference_by_a_known_caller_is_held() -> None:
    """A readiness or metadata request (no limit counts it) and gRPC's server methods (asked without a
    credential) are never held: they neither wake the model nor take room from those who pay for it."""
    handle = HoldProgram(data()).request(
        "triton-http|chat", answers(NO_HOST), [0], metadata={"model": "chat"}
    )
    assert handle.calls == [] and handle.reply is None


@pytest.mark.parametrize(
    ("cluster", "answer", "answered_at"),
    [
        ("triton-http|chat|gold", OVERFLOW, 0),
        ("triton-http|chat", (504, "upstream request timeout"), 1000),
        # over gRPC Envoy answers a call that ran out of time with a 200 and a grpc-status: the time tells
        ("triton-grpc|chat", (200, "", {"grpc-status": "14"}), 1000),
    ],
)
def test_a_model_with_a_replica_that_cannot_answer_now_is_not_taken_for_asleep(
    cluster: str, answer: tuple[Any, ...], answered_at: int
) -> None:
    """The cluster at its limit (a tier's own, sized per replica) or a check that ran out of time: the
    request goes on as to any model, unheld and uncounted in the wake signal."""
    handle = HoldProgram(data()).request(cluster, answers(answer, WAITED), [0, 0, answered_at])
    assert [called_cluster for called_cluster, _ in called(handle)] == [cluster] and handle.reply is None
    assert "held_ms" not in handle.tollway


def test_a_held_stream_counts_its_time_to_first_token_from_the_end_of_its_hold() -> None:
    handle = HoldProgram(data()).request(
        "triton-openai|chat",
        answers(NO_HOST, WAITED, (200, "")),
        [0, 0, 0, 1000, 1000, 1000],
        metadata={"model": "chat", "inference": "1", "tier": "pro", "start_ms": "0"},
    )
    assert handle.reply is None
    assert (handle.tollway["held_ms"], handle.tollway["start_ms"]) == ("1000", "1000")


def test_a_late_wake_asks_clients_back_in_no_less_than_five_seconds() -> None:
    handle = HoldProgram(data()).request("triton-http|chat", answers(NO_HOST, OVERFLOW), [0, 0, 0, 29_500])
    assert handle.reply is not None and handle.reply.headers == {"retry-after": "5"}
    # or, for a model that wakes in less, its whole wake
    quick = {**WAKES, "scaleFromZero": {"wakeSeconds": 3}}
    handle = HoldProgram(data(**quick)).request(
        "triton-http|chat", answers(NO_HOST, OVERFLOW), [0, 0, 0, 9_000]
    )
    assert handle.reply is not None and handle.reply.headers == {"retry-after": "3"}


def test_a_wake_this_worker_last_saw_long_ago_was_another_one() -> None:
    """A worker that saw the model waking and never saw it ready (other workers did) does not count a new
    wake from the old one: its Retry-After is the whole wake again."""
    program = HoldProgram(data())
    program.request("triton-http|chat", answers(NO_HOST, OVERFLOW), [0])
    later = program.request("triton-http|chat", answers(NO_HOST, OVERFLOW), [600_000])
    assert later.reply is not None and later.reply.headers == {"retry-after": "30"}


def test_grpc_server_methods_go_to_a_model_that_never_sleeps() -> None:
    """ServerLive, ServerReady and ServerMetadata are asked without a credential: sent to a sleeping model
    they would find the server down, and anyone could wake it."""
    sleeper = model_deployment(name="asleep", **{"spec.autoscaling": WAKES})
    plan = plan_gateway(
        "ai",
        tiers=[parse(ApiTier, api_tier())],
        models=[parse(ModelDeployment, sleeper), parse(ModelDeployment, model_deployment(name="awake"))],
        secrets=[],
        now=NOW,
    )
    assert plan.gateway is not None
    assert lua_data(plan.gateway)["server_cluster"] == "triton-grpc|awake"
    # where every model sleeps, the first (its server answers once it is up)
    alone = plan_gateway(
        "ai",
        tiers=[parse(ApiTier, api_tier())],
        models=[parse(ModelDeployment, sleeper)],
        secrets=[],
        now=NOW,
    )
    assert alone.gateway is not None and lua_data(alone.gateway)["server_cluster"] == "triton-grpc|asleep"


def test_a_wait_that_fails_otherwise_is_not_reported_as_a_full_hold() -> None:
    handle = HoldProgram(data()).request("triton-http|chat", answers(NO_HOST, (503, "overloaded")), [0])
    assert handle.reply is not None and handle.reply.status == 503
    assert handle.reply.headers == {"retry-after": "30"}
    assert "the gateway could not hold it (status 503)" in handle.reply.body

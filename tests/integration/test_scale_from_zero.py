"""Scale from zero on the real control plane and data path (hack/testbed/wake.py): the HPA Tollway renders
for a model with minReplicas 0 takes it to zero when idle; a request for it then waits in the gateway, which
counts it; the real HPA loop (kube-controller-manager, prometheus-adapter on Tollway's rules, Prometheus)
wakes the model on that count; the held requests are answered once a replica is ready. Beyond the hold's
count a request is answered 503 with Retry-After at once, while another tier's requests still find room. The
pod is kwok's (ready at once) and its Triton the test bed's, started when the pod is ready: the model's load
time is Triton's own."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy
import pytest
from tritonclient import grpc as triton_grpc

from testbed import client, dataplane
from testbed.kube import Cluster, eventually
from testbed.triton import outputs
from testbed.wake import HOLD, KEY, MODEL, OTHER_TIER, TIER, Wake, WakeBed, at_zero, bed, wake

NAMESPACE = f"wake-{os.getpid()}"
HELD = 2  # the hold's count (HOLD["maxHeldRequests"]) for one tier and gateway replica
EXTRA = 3


@dataclass(frozen=True)
class Woken:
    test_bed: WakeBed
    timings: Wake
    held: list[client.Reply]
    extra: list[client.Reply]
    other: list[client.Reply]
    """Of the other tier, sent with `extra`."""


@pytest.fixture(scope="module")
def woken(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Woken]:
    """The model taken to zero by its HPA, then woken by requests held in the gateway."""
    with bed(cluster, tmp_path_factory.mktemp("wake"), NAMESPACE) as test_bed:
        at_zero(test_bed)
        timings, held, extra, other = wake(test_bed, HELD, EXTRA, other=1)
        print(
            f"\nfirst request to first answer {timings.first_answer:.1f} s:"
            f" HPA scaled at {timings.scaled:.1f} s, pod ready at {timings.pod_ready:.1f} s,"
            f" model loaded in {timings.model_load:.1f} s;"
            f" without the model's load {timings.without_model_load:.1f} s"
        )
        yield Woken(test_bed, timings, held, extra, other)


def test_held_requests_are_answered_once_the_model_wakes(woken: Woken) -> None:
    assert [reply.status for reply in woken.held] == [200] * HELD
    # each its own answer: the echo model's OUTPUT is INPUT (four times the request's value)
    assert sorted(outputs(reply)["OUTPUT"][0] for reply in woken.held) == [1.0, 2.0]
    # woken by the gateway's count (the pods report nothing at zero), and answered within the hold
    assert 0 < woken.timings.scaled < woken.timings.first_answer < HOLD["holdSeconds"]


def test_beyond_the_holds_count_a_request_is_told_when_to_come_back(woken: Woken) -> None:
    refused = [reply for reply in woken.extra if reply.status == 503]
    # A request arriving while a held one checks the model between its waits finds room and is held: at
    # least one of the three sent while two were held is turned away, and none is lost.
    assert refused, [reply.status for reply in woken.extra]
    assert all(reply.status in (200, 503) for reply in woken.extra)
    for reply in refused:
        assert 1 <= int(reply.headers["retry-after"]) <= HOLD["wakeSeconds"]
        assert f"model {MODEL} is starting" in reply.json()["error"]["message"]


def test_one_tier_filling_the_hold_leaves_another_tiers_room(woken: Woken) -> None:
    """Sent while tier pro's room was full (its extra requests turned away): held in its own tier's room,
    then answered."""
    assert any(reply.status == 503 for reply in woken.extra)  # pro's room was full
    assert [reply.status for reply in woken.other] == [200]
    held_in = dataplane.summed(
        woken.test_bed.gateway.stats(),
        "envoy_cluster_upstream_rq_total",
        envoy_cluster_name=f"hold|{MODEL}|{OTHER_TIER}",
    )
    assert held_in >= 1


def test_held_requests_are_metered_like_any_other(woken: Woken) -> None:
    served = sum(1 for reply in [*woken.held, *woken.extra] if reply.status == 200)

    def counted() -> float | None:
        stats = woken.test_bed.gateway.stats()
        found = dataplane.summed(stats, "envoy_tollway_usage_requests", tier=TIER)
        return found if found == served else None

    eventually(counted, timeout=30)


def test_the_model_goes_back_to_zero_when_idle_again(woken: Woken) -> None:
    seconds = at_zero(woken.test_bed)
    print(f"\nback at zero {seconds:.0f} s after the wake")
    assert woken.test_bed.replicas() == 0


def test_a_readiness_request_to_the_sleeping_model_is_answered_at_once_and_wakes_nothing(
    woken: Woken,
) -> None:
    """Only inference that counts against a tier's limits is held: a readiness poll hears at once that the
    model is not ready (held, it would wait for a wake or the hold's 90 s), so it takes no room in the hold
    and neither wakes the model nor keeps it awake."""
    assert woken.test_bed.replicas() == 0  # back at zero (the test before)
    reply = client.request(
        f"http://127.0.0.1:{woken.test_bed.gateway.ports[0]}/v2/models/{MODEL}/ready",
        headers={"authorization": f"Bearer {KEY}"},
        timeout=30,
    )
    assert reply.status == 503 and reply.seconds < 5, (reply.status, reply.seconds)
    assert "retry-after" not in reply.headers  # Envoy's own answer for a cluster without a host


def test_a_grpc_request_is_held_and_answered_once_the_model_wakes_again(woken: Woken) -> None:
    """Over gRPC the hold asks Triton's ServerReady (its own framing, through Envoy): a wrong reading of the
    answer would hold the request to the end of the hold and refuse it."""
    assert woken.test_bed.replicas() == 0  # back at zero (the tests before)
    grpc = triton_grpc.InferenceServerClient(f"127.0.0.1:{woken.test_bed.gateway.ports[0]}")
    data = triton_grpc.InferInput("INPUT", [1, 4], "FP32")
    data.set_data_from_numpy(numpy.full((1, 4), 3.0, dtype="float32"))
    result = grpc.infer(MODEL, [data], headers={"authorization": f"Bearer {KEY}"}, client_timeout=120)
    assert result.as_numpy("OUTPUT").tolist() == [[3.0] * 4]
    assert woken.test_bed.replicas() >= 1  # it woke for this request

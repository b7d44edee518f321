"""The gateway's data path under steady load while an Envoy replica, the ratelimit service and Redis are
each SIGKILLed and started again (testbed.gatewayfaults; bench/gateway_faults.py measures the same for
figures): what the gateway does during each outage, and that the limits count exactly once it is over.

During an outage of the ratelimit service or of Redis each tier gets what its `limits.failOpen` chose (the
rendered rate-limit filters: failure_mode_deny is `not failOpen`): a fail-open tier is served without
limits, a fail-closed tier is refused with 500. Limits are counted in Redis, which writes every count to
its append-only file, so neither restart loses one: a consumer over its limit before the kill is still over
it after the restart. (Requests a fail-open tier was served during the outage were counted nowhere.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from testbed.gateway import Bed
from testbed.gatewayfaults import (
    CLOSED,
    COUNTED,
    LIMIT,
    Consumers,
    Load,
    count,
    exact,
    fault_bed,
    kill,
    restart,
    room_in_window,
    steady_load,
    until_exact,
)
from testbed.kube import eventually


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with fault_bed(tmp_path_factory.mktemp("gateway-faults")) as test_bed:
        yield test_bed


@pytest.fixture(scope="module")
def counted() -> Consumers:
    return Consumers(COUNTED)


@pytest.fixture(scope="module")
def closed() -> Consumers:
    return Consumers(CLOSED)


@pytest.fixture
def load(gateway: Bed) -> Iterator[Load]:
    with steady_load(gateway) as running:
        eventually(lambda: running.seen("open", 200, 0) and running.seen("closed", 200, 0), timeout=30)
        yield running


def test_an_envoy_replica_killed_under_load(gateway: Bed, load: Load, counted: Consumers) -> None:
    killed = time.monotonic()
    kill(gateway, "envoy")

    def outage_seen() -> bool:
        since = load.between(killed, 1e18)
        return any(s.replica == 1 and s.status == 0 for s in since) and any(s.replica == 0 for s in since)

    eventually(outage_seen, timeout=30)
    restart(gateway, "envoy")
    restarted = time.monotonic()
    eventually(lambda: any(s.replica == 1 and s.status == 200 for s in load.between(restarted, 1e18)))
    during = load.between(killed, restarted)
    # The other replica served every request meanwhile; the killed one's clients got no answer, not an error.
    assert {s.status for s in during if s.replica == 0} == {200}
    assert {s.status for s in during if s.replica == 1} <= {0, 200}
    room_in_window(10)
    assert exact(count(gateway, counted.take(), LIMIT + 3))  # across both replicas, the restarted one too


@pytest.mark.parametrize("component", ["ratelimit", "redis"])
def test_limits_killed_under_load(
    gateway: Bed, load: Load, counted: Consumers, closed: Consumers, component: str
) -> None:
    room_in_window(40)  # the consumers over their limit before the kill are asked again in the same window
    over_open, over_closed = counted.take(), closed.take()
    assert exact(count(gateway, over_open, LIMIT + 1)) and exact(count(gateway, over_closed, LIMIT + 1))
    killed = time.monotonic()
    kill(gateway, component)
    eventually(lambda: load.seen("closed", 500, killed), timeout=30)
    # During the outage: the fail-open tier is served without limits, the fail-closed tier is refused with
    # 500 (the load's consumers, under their limits, see both). A consumer already over its limit in this
    # window: with the ratelimit service down, nobody knows it (the open tier serves it); with Redis down,
    # the service still does, from its cache of over-limit keys (refused, whichever the tier chose).
    if component == "ratelimit":
        assert count(gateway, over_open, 2) == [200, 200]
        assert count(gateway, over_closed, 2) == [500, 500]
    else:
        assert count(gateway, over_open, 2) == [429, 429]
        assert count(gateway, over_closed, 2) == [429, 429]
    restart(gateway, component)
    eventually(lambda: load.seen("closed", 200, time.monotonic() - 0.5), timeout=30)
    _, tried = until_exact(gateway, counted, timeout=30)
    during = load.between(killed, time.monotonic())
    assert {s.status for s in during if s.tier == "open"} == {200}
    assert {s.status for s in during if s.tier == "closed"} <= {200, 500}
    after_open, after_closed = count(gateway, over_open, 2), count(gateway, over_closed, 2)
    # The counters outlive either restart: nobody over a limit gets in again.
    assert (after_open, after_closed) == ([429, 429], [429, 429]), tried
    room_in_window(10)
    assert exact(count(gateway, counted.take(), LIMIT + 3))
    assert exact(count(gateway, closed.take(), LIMIT + 3))

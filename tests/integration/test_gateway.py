"""The gateway on the real data path: Triton, Redis, the ratelimit service and two Envoy replicas, all
running on what `tollway gateway-config` wrote from the manifests in `manifests()`.

Limits are fixed windows of a calendar minute (the ratelimit service's), so each test that counts uses a
consumer of its own and, where it needs room, starts at the top of a fresh minute.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import numpy
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2
from tritonclient.utils import InferenceServerException

from testbed.client import Reply
from testbed.dataplane import fresh_window, summed
from testbed.gateway import (
    AUDIENCE,
    ISSUER,
    NAMESPACE,
    Bed,
    bed,
    echo_model,
    recorder_model,
    secret,
    tier,
    tiny_model,
)
from testbed.kube import eventually
from testbed.triton import infer_body, outputs, usage

CONSUMERS = (
    "alice",
    "bob",
    "tina",
    "tpm64",
    "carol",
    "bulk",
    "dave",
    "erin",
    "gina-old",
    "gina-new",
    "olga",
    "bigbody",
    "rita",
    "uma",
    "vic",
    "sara",
    "wes",
    "xena",
    "fay",
    "svc.a",
    "svc.b",
)
KEYS = {name: f"tw-test-{name}-key" for name in CONSUMERS}


def manifests(
    test_bed: Bed, gina_old_expires: str = "2099-01-01T00:00:00Z", free_rpm: int = 5
) -> list[dict[str, Any]]:
    return [
        echo_model(),
        tiny_model(),
        recorder_model(),
        tier("free", 3, {"requestsPerMinute": free_rpm}, ["echo"]),
        tier("metered", 2, {"tokensPerMinute": 600}, ["*"]),
        tier("metered64", 2, {"tokensPerMinute": 2000}, ["echo"]),
        tier(
            "pro",
            1,
            {},
            ["*"],
            auth={
                "apiKeys": {"secretSelector": {"matchLabels": {"tollway.dev/tier": "pro"}}},
                "jwt": {
                    "issuer": ISSUER,
                    "jwksUri": test_bed.jwks_uri,
                    "audiences": [AUDIENCE],
                    "requiredScopes": ["inference"],
                },
            },
        ),
        tier("bulk", 5, {}, ["echo"]),
        tier("big", 5, {"tokensPerMinute": 10_000_000}, ["echo"]),
        tier("closed", 3, {"requestsPerMinute": 1000, "failOpen": False}, ["echo"]),
        tier("capped", 3, {"concurrentRequests": 2}, ["echo"]),
        tier(
            "gold",
            1,
            {},
            ["echo"],
            auth={"mtls": {"caSecretRef": {"name": "gold-ca"}}},
        ),
        tier(
            "partners",
            2,
            {},
            ["echo"],
            auth={
                "mtls": {
                    "caSecretRef": {"name": "partner-ca"},
                    "allowedSubjectAltNames": ["spiffe://partners.test/*"],
                }
            },
        ),
        secret("alice", "free", KEYS["alice"]),
        secret("rita", "free", KEYS["rita"]),  # watches reloads (the free tier's limit), apart from alice
        secret("bob", "metered", KEYS["bob"]),
        secret("tina", "metered", KEYS["tina"]),
        secret("olga", "metered", KEYS["olga"]),
        secret("uma", "metered", KEYS["uma"]),
        secret("vic", "metered", KEYS["vic"]),
        secret("sara", "free", KEYS["sara"]),  # stalls uploads once over her limit
        secret("wes", "metered", KEYS["wes"]),
        secret("xena", "metered", KEYS["xena"]),  # leaves before her answer
        secret("fay", "free", KEYS["fay"]),  # never over her limit: asks while the limits are down
        secret("svc.a", "metered", KEYS["svc.a"]),  # consumers whose names hold dots
        secret("svc.b", "metered", KEYS["svc.b"]),
        secret("tpm64", "metered64", KEYS["tpm64"]),
        secret("carol", "pro", KEYS["carol"]),
        secret("bulk", "bulk", KEYS["bulk"]),
        secret("dave", "closed", KEYS["dave"]),
        secret("bigbody", "big", KEYS["bigbody"]),
        secret("erin", "capped", KEYS["erin"]),
        secret(
            "gina-old",
            "pro",
            KEYS["gina-old"],
            labels={"tollway.dev/consumer": "gina"},
            annotations={"tollway.dev/expires-at": gina_old_expires},
        ),
        secret("gina-new", "pro", KEYS["gina-new"], labels={"tollway.dev/consumer": "gina"}),
        *(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "stringData": data,
            }
            for name, data in (
                (
                    "partner-ca",
                    {"ca.crt": test_bed.certs.partner_ca_pem, "ca.crl": test_bed.certs.partner_crl_pem},
                ),
                ("gold-ca", {"ca.crt": test_bed.certs.gold_ca_pem}),
            )
        ),
    ]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    with bed(tmp_path_factory.mktemp("gateway"), manifests) as test_bed:
        yield test_bed


def infer(gateway: Bed, path: str, key: str, replica: int = 0, **parameters: Any) -> Reply:
    return gateway.call(path, key=key, body=infer_body(**parameters), replica=replica)


# Routes and versions


@pytest.mark.parametrize(
    ("path", "factor"),
    [
        ("/v1/models/echo/infer", 3.0),
        ("/v1/models/echo:latest/infer", 3.0),
        ("/v1/models/echo:stable/infer", 2.0),
        ("/v1/models/echo/versions/2/infer", 2.0),
        ("/v2/models/echo/versions/3/infer", 3.0),
    ],
)
def test_routes_reach_the_version_they_name(gateway: Bed, path: str, factor: float) -> None:
    reply = infer(gateway, path, KEYS["carol"])
    assert reply.status == 200, reply.body
    assert outputs(reply)["OUTPUT"] == [factor] * 4


def test_tritonclient_works_through_the_gateway_unchanged(gateway: Bed) -> None:
    client = triton_http.InferenceServerClient(f"localhost:{gateway.ports[1]}")
    auth = {"authorization": f"Bearer {KEYS['carol']}"}
    assert client.is_server_ready()
    assert client.is_model_ready("echo", headers=auth)
    assert client.get_model_metadata("echo", headers=auth)["versions"] == ["3"]
    data = triton_http.InferInput("INPUT", [1, 3], "FP32")
    data.set_data_from_numpy(numpy.ones((1, 3), dtype="float32"))
    result = client.infer("echo", [data], model_version="2", headers=auth)
    assert result.as_numpy("OUTPUT").tolist() == [[2.0, 2.0, 2.0]]
    result = client.infer("echo:stable", [data], headers=auth)
    assert result.as_numpy("OUTPUT").tolist() == [[2.0, 2.0, 2.0]]


def test_grpc_is_routed_by_the_model_name_it_carries(gateway: Bed) -> None:
    client = triton_grpc.InferenceServerClient(f"localhost:{gateway.ports[0]}")
    auth = {"authorization": f"Bearer {KEYS['carol']}"}
    assert client.is_server_ready()
    assert client.is_model_ready("echo", headers=auth)
    data = triton_grpc.InferInput("INPUT", [1, 2], "FP32")
    data.set_data_from_numpy(numpy.ones((1, 2), dtype="float32"))
    for name, version, factor in (("echo", "", 3.0), ("echo", "2", 2.0), ("echo:stable", "", 2.0)):
        result = client.infer(name, [data], model_version=version, headers=auth)
        assert result.as_numpy("OUTPUT").tolist() == [[factor, factor]], (name, version)
    with pytest.raises(InferenceServerException) as refused:
        client.infer("echo", [data])
    assert refused.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as forbidden:
        client.infer("echo:stable", [data], headers={"authorization": f"Bearer {KEYS['bulk']}"})
    assert forbidden.value.status() == "StatusCode.PERMISSION_DENIED"
    with pytest.raises(InferenceServerException) as gone:
        client.infer("echo", [data], model_version="1", headers=auth)
    assert "switched off" in gone.value.message()


def test_a_deprecated_version_announces_its_sunset(gateway: Bed) -> None:
    reply = infer(gateway, "/v1/models/echo:stable/infer", KEYS["carol"])
    assert reply.status == 200
    assert reply.headers["deprecation"] == "@1767225600"  # 2026-01-01T00:00:00Z
    assert reply.headers["sunset"] == "Thu, 01 Jan 2099 00:00:00 GMT"
    assert reply.headers["link"] == '<https://docs.test/migrate>; rel="deprecation"'
    current = infer(gateway, "/v1/models/echo/infer", KEYS["carol"])
    assert "deprecation" not in current.headers and "sunset" not in current.headers


def test_a_version_past_its_sunset_is_gone(gateway: Bed) -> None:
    reply = infer(gateway, "/v1/models/echo/versions/1/infer", KEYS["carol"])
    assert reply.status == 410
    assert reply.headers["content-type"] == "application/json"
    assert reply.json() == {
        "error": {
            "code": 410,
            "type": "not_found_error",
            "message": "this model version was switched off on 2026-01-01",
        }
    }


def test_an_unknown_route_is_404_json(gateway: Bed) -> None:
    reply = gateway.call("/v1/models/nope/infer", key=KEYS["carol"], body={})
    assert reply.status == 404 and reply.json()["error"]["code"] == 404


# Authentication


def test_no_credential_is_401_with_a_json_error(gateway: Bed) -> None:
    reply = gateway.call("/v1/models/echo/infer", body=infer_body())
    assert reply.status == 401
    assert reply.headers["www-authenticate"] == 'Bearer realm="tollway"'
    assert reply.json()["error"] == {
        "code": 401,
        "type": "authentication_error",  # the OpenAI API's error object, as on every error
        "message": "missing credential: send Authorization: Bearer KEY or x-api-key: KEY",
    }
    assert gateway.call("/v1/models/echo/infer", key="tw-wrong", body=infer_body()).status == 401


def test_x_api_key_header_works_too(gateway: Bed) -> None:
    reply = gateway.call("/v1/models/echo/infer", body=infer_body(), headers={"x-api-key": KEYS["carol"]})
    assert reply.status == 200


def test_a_model_the_tier_may_not_use_is_403(gateway: Bed) -> None:
    reply = infer(gateway, "/v1/models/echo:stable/infer", KEYS["bulk"])  # bulk may use echo's latest only
    assert reply.status == 403
    assert reply.json()["error"]["message"] == "tier bulk may not use echo version 2"
    assert infer(gateway, "/v1/models/echo/versions/3/infer", KEYS["bulk"]).status == 200
    assert gateway.call("/v1/models/recorder/infer", key=KEYS["bulk"], body={}).status == 403


def test_the_key_never_reaches_the_model_and_the_tier_priority_does(gateway: Bed) -> None:
    gateway.recorded.clear()
    reply = gateway.call(
        "/v1/models/recorder/infer",
        key=KEYS["carol"],
        body={"inputs": [], "parameters": {"priority": 9, "x": 1}},
        headers={"tollway-admin-key": "guess", "triton-grpc-protocol-tollway-admin-key": "guess"},
    )
    assert reply.status == 200, reply.body
    path, headers, body = gateway.recorded[-1]
    assert path == "/v2/models/recorder/versions/1/infer"
    removed = {
        "authorization",
        "x-api-key",
        "x-tollway-cluster",
        "tollway-admin-key",  # only the operator sends Triton's admin key
        "triton-grpc-protocol-tollway-admin-key",
    }
    assert not removed & set(headers)
    assert KEYS["carol"].encode() not in body
    # pro's priority (1, the first level) replaces the client's own value; the other parameters pass as sent.
    assert body == b'{"inputs": [], "parameters": {"priority":1,"x": 1}}'
    gateway.call(
        "/v1/models/recorder/infer", key=KEYS["carol"], body={"inputs": []}, headers={"x-api-key": "spoof"}
    )
    assert gateway.recorded[-1][2] == b'{"parameters":{"priority":1},"inputs": []}'


def reloaded(gateway: Bed, free_rpm: int) -> None:
    """Wait until replica 0 serves the configuration with this free-tier limit (rita's headers show it)."""
    deadline = time.monotonic() + 15
    while infer(gateway, "/v1/models/echo/infer", KEYS["rita"]).headers.get("x-ratelimit-limit") != str(
        free_rpm
    ):
        assert time.monotonic() < deadline, "Envoy did not reload its configuration"
        time.sleep(0.2)


def restore(gateway: Bed) -> None:
    """Back to the module's configuration, on both replicas, before the next test."""
    gateway.configure(manifests(gateway))
    reloaded(gateway, free_rpm=5)
    time.sleep(0.5)  # replica 1 reads the same files within a moment


def test_an_expired_key_stops_working_and_its_successor_works(gateway: Bed) -> None:
    """The gateway refuses a key by its own clock once the key's expiry passes, while the key is still in
    its configuration: rendered as of a minute before the expiry, so however long the reload takes."""
    assert infer(gateway, "/v1/models/echo/infer", KEYS["gina-old"]).status == 200  # until 2099, so far
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    gateway.configure(
        manifests(gateway, gina_old_expires=expires.strftime("%Y-%m-%dT%H:%M:%SZ"), free_rpm=9),
        now=expires - timedelta(minutes=1),
    )
    reloaded(gateway, free_rpm=9)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds() + 1))
    expired = infer(gateway, "/v1/models/echo/infer", KEYS["gina-old"])
    assert expired.status == 401 and expired.json()["error"]["message"] == "API key expired"
    assert infer(gateway, "/v1/models/echo/infer", KEYS["gina-new"]).status == 200
    restore(gateway)


def test_jwt_with_the_required_scope_authenticates_the_claimed_consumer(gateway: Bed) -> None:
    good = gateway.certs.token(scope="inference other")
    assert gateway.call("/v1/models/echo/infer", key=good, body=infer_body()).status == 200
    bad = {
        "scope": gateway.certs.token(scope="other"),
        "audience": gateway.certs.token(scope="inference", aud="someone-else"),
        "expired": gateway.certs.token(scope="inference", exp=int(time.time()) - 600),
        "no expiry": gateway.certs.token(scope="inference", exp=None),  # would never expire
        "valid for two days": gateway.certs.token(scope="inference", exp=int(time.time()) + 2 * 86400),
        "a list for the consumer": gateway.certs.token(scope="inference", sub=["svc-a", "svc-b"]),
        "an object for the consumer": gateway.certs.token(scope="inference", sub={"id": "svc-a"}),
        "signature": good[:-8] + ("AAAAAAAA" if not good.endswith("AAAAAAAA") else "BBBBBBBB"),
    }
    statuses = {
        name: gateway.call("/v1/models/echo/infer", key=token, body=infer_body()).status
        for name, token in bad.items()
    }
    assert statuses == dict.fromkeys(bad, 401)


def _client_context(gateway: Bed, client: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(gateway.certs.ca))
    context.load_cert_chain(*gateway.certs.clients[client])
    return context


GOLD, PARTNERS = 0, 1  # mTLS tiers get ports in name order


def test_mtls_admits_an_allowed_san_and_refuses_another(gateway: Bed) -> None:
    acme = _client_context(gateway, "acme")
    reply = gateway.call("/v1/models/echo/infer", body=infer_body(), context=acme, mtls_tier=PARTNERS)
    assert reply.status == 200, reply.body
    stranger = _client_context(gateway, "stranger")
    refused = gateway.call("/v1/models/echo/infer", body=infer_body(), context=stranger, mtls_tier=PARTNERS)
    assert refused.status == 401
    assert refused.json()["error"]["message"] == "client certificate not allowed for tier partners"


def test_a_certificate_the_tiers_crl_revokes_is_refused(gateway: Bed) -> None:
    revoked = _client_context(gateway, "revoked")  # partners' CA signed it, its SAN is allowed
    with pytest.raises(OSError):  # TLS 1.3 reports the refusal at the first read, as an alert
        gateway.call("/v1/models/echo/infer", body=infer_body(), context=revoked, mtls_tier=PARTNERS)


def test_a_tier_trusts_only_its_own_ca(gateway: Bed) -> None:
    impostor = _client_context(gateway, "impostor")  # gold's CA, a SAN partners would allow
    assert (
        gateway.call("/v1/models/echo/infer", body=infer_body(), context=impostor, mtls_tier=GOLD).status
        == 200
    )
    # The handshake fails: partners' listener does not know gold's CA.
    with pytest.raises(OSError):
        gateway.call("/v1/models/echo/infer", body=infer_body(), context=impostor, mtls_tier=PARTNERS)
    acme = _client_context(gateway, "acme")
    with pytest.raises(OSError):
        gateway.call("/v1/models/echo/infer", body=infer_body(), context=acme, mtls_tier=GOLD)


# Limits


def test_requests_per_minute_count_exactly_across_two_envoy_replicas(gateway: Bed) -> None:
    fresh_window()
    replies = [
        infer(gateway, "/v1/models/echo/infer", KEYS["alice"], replica=index % 2) for index in range(8)
    ]
    assert [reply.status for reply in replies] == [200] * 5 + [429] * 3
    assert [reply.headers["x-ratelimit-limit"] for reply in replies] == ["5"] * 8
    assert [reply.headers["x-ratelimit-remaining"] for reply in replies[:5]] == ["4", "3", "2", "1", "0"]
    limited = replies[5]
    assert limited.json() == {
        "error": {"code": 429, "type": "rate_limit_error", "message": "rate limit exceeded"}
    }
    reset = int(limited.headers["x-ratelimit-reset"])
    assert 0 < reset <= 60 and limited.headers["retry-after"] == str(reset)


def test_token_headers_count_reservations_and_what_the_model_used(gateway: Bed) -> None:
    fresh_window(30)
    charged_before = reserved_tokens(gateway, "bob") or 0
    first = infer(gateway, "/v1/models/echo/infer", KEYS["bob"], values=4, max_tokens=5)
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "600"
    reserved = math.ceil(len(_sent_bytes(values=4, max_tokens=5)) / 4) + 5
    assert usage(first) == {
        "prompt_tokens": 4,
        "completion_tokens": 5,
    }  # under the reservation: no settlement
    assert int(first.headers["x-ratelimit-remaining-tokens"]) == 600 - reserved
    # No max_tokens: the model's defaultMaxTokens (4) is reserved, and the model uses more than reserved.
    second = infer(gateway, "/v1/models/echo/infer", KEYS["bob"], replica=1, values=300)
    used = usage(second)
    assert used == {"prompt_tokens": 300, "completion_tokens": 300}
    second_reserved = math.ceil(len(_sent_bytes(values=300)) / 4) + 4
    extra = 600 - second_reserved
    assert extra > 0
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == max(
        0, 600 - reserved - second_reserved - extra
    )
    # The excess is charged when the second request's stream ends, after its answer reached the client:
    # once the ratelimit service shows it, the third request must find the limit spent.
    charged = charged_before + reserved + second_reserved + extra
    eventually(lambda: reserved_tokens(gateway, "bob") == charged, timeout=30)
    third = infer(gateway, "/v1/models/echo/infer", KEYS["bob"], values=4, max_tokens=5)
    assert third.status == 429
    assert "retry-after" in third.headers
    assert third.headers["x-ratelimit-remaining-tokens"] == "0"


def _sent_bytes(values: int = 4, **parameters: Any) -> bytes:
    """The body as the client sends it (what the gateway's prompt estimate reads)."""
    return json.dumps(infer_body(values, **parameters)).encode()


def test_a_reservation_the_limit_could_never_hold_is_refused(gateway: Bed) -> None:
    reply = infer(gateway, "/v1/models/echo/infer", KEYS["tina"], max_tokens=100_000)
    assert reply.status == 429
    assert reply.json()["error"]["message"].endswith("more than the tier's limit of 600")


@pytest.mark.parametrize("max_tokens", ['"4000"', "4e3", "4000.5", "-1"])
def test_max_tokens_the_gateway_cannot_read_exactly_is_refused(gateway: Bed, max_tokens: str) -> None:
    raw = b'{"inputs": [], "parameters": {"max_tokens": %s}}' % max_tokens.encode()
    reply = gateway.call("/v1/models/echo/infer", key=KEYS["tina"], raw=raw)
    assert reply.status == 400
    assert reply.json()["error"]["message"] == "parameters.max_tokens must be a whole number"
    escaped = b'{"inputs": [], "parameters": {"max_tok\\u0065ns": 4000}}'
    assert gateway.call("/v1/models/echo/infer", key=KEYS["tina"], raw=escaped).status == 400


# Refusals before the body: a client that is unknown, over a request limit or declares too large a body is
# answered on its headers, and the gateway never buffers what it sends after them.

DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024  # spec.model.maxRequestBytes of the echo model (the default)


def stalled_upload(port: int, key: str | None, length: int, sent_bytes: int) -> tuple[socket.socket, int]:
    """An upload that declares `length` bytes, sends its headers and what of `sent_bytes` the kernel takes at
    once, then stops; its open socket and the status it was answered with."""
    credential = f"authorization: Bearer {key}\r\n" if key else ""
    head = (
        f"POST /v1/models/echo/infer HTTP/1.1\r\nhost: localhost:{port}\r\n{credential}"
        f"content-type: application/json\r\ncontent-length: {length}\r\n\r\n"
    )
    connection = socket.create_connection(("127.0.0.1", port), timeout=10)
    connection.sendall(head.encode())
    connection.setblocking(False)
    with contextlib.suppress(OSError):  # the gateway may have answered and closed the connection already
        connection.send(b" " * sent_bytes)
    connection.settimeout(10)
    status_line = connection.recv(4096).split(b"\r\n", 1)[0]
    return connection, int(status_line.split()[1])


def over_requests_per_minute(gateway: Bed, key: str) -> None:
    """Spend what is left of `key`'s requests this minute (its tier's limit may have been reloaded: ask until
    refused), with time to spare in the minute."""
    fresh_window(30)
    statuses = [infer(gateway, "/v1/models/echo/infer", key).status for _ in range(100)]
    assert statuses[-1] == 429 and set(statuses) <= {200, 429}


def envoy_allocated_bytes(gateway: Bed) -> int:
    url = f"http://127.0.0.1:{gateway.replicas[0].admin}/stats?filter=^server.memory_allocated$"
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.read().decode().split(":")[1])


def test_a_caller_who_is_unknown_over_a_limit_or_too_large_is_answered_before_sending_a_body(
    gateway: Bed,
) -> None:
    port = gateway.ports[0]
    assert stalled_upload(port, None, 1000, 0)[1] == 401
    assert stalled_upload(port, KEYS["carol"], DEFAULT_MAX_REQUEST_BYTES + 1, 0)[1] == 413
    over_requests_per_minute(gateway, KEYS["sara"])
    assert stalled_upload(port, KEYS["sara"], 1000, 0)[1] == 429


def test_envoys_memory_stays_flat_under_many_stalled_uploads_it_refused(gateway: Bed) -> None:
    over_requests_per_minute(gateway, KEYS["sara"])
    before = envoy_allocated_bytes(gateway)
    held = [
        stalled_upload(gateway.ports[0], key, DEFAULT_MAX_REQUEST_BYTES, 1024 * 1024)
        for key in [KEYS["sara"], None] * 16
    ]
    grown = envoy_allocated_bytes(gateway) - before
    for connection, _ in held:
        connection.close()
    assert [status for _, status in held] == [429, 401] * 16
    # Buffered, the 32 uploads would hold what the kernel passed on of their 32 MiB.
    assert grown < 4 * 1024 * 1024, f"Envoy's heap grew by {grown} bytes"


def test_requests_other_than_inference_carry_small_bodies_at_most(gateway: Bed) -> None:
    ready = gateway.call("/v2/models/echo/ready", key=KEYS["carol"], raw=b"{}")
    assert (ready.status, ready.json()["error"]["message"]) == (400, "this request takes no body")
    channel = grpc.insecure_channel(f"localhost:{gateway.ports[0]}")
    live = channel.unary_unary(
        "/inference.GRPCInferenceService/ServerLive",
        request_serializer=lambda raw: raw,
        response_deserializer=lambda raw: raw,
    )
    assert live(b"") is not None  # an empty request is answered, without a credential
    with pytest.raises(grpc.RpcError):  # unauthenticated bytes beyond the small limit never reach Triton
        live(b"\x7a\x80\x80\x04" + b"x" * 65536)  # an unknown field of 64 KiB


def test_a_client_that_never_finishes_its_headers_is_let_go(gateway: Bed) -> None:
    connection = socket.create_connection(("127.0.0.1", gateway.ports[0]), timeout=30)
    connection.sendall(b"POST /v1/models/echo/infer HTTP/1.1\r\nhost: localhost\r\n")  # and no more
    started = time.monotonic()
    answer = connection.recv(4096)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert time.monotonic() - started < 25  # request_headers_timeout: 10 s


# Bodies that Triton and the gateway could read two ways (issue #12): each is refused before it reaches the
# model, so no client reserves for less than it asks for or sets its own priority.
AMBIGUOUS_BODIES = {
    "an escaped parameters key first": (
        b'{"p\\u0061rameters": {"priority": 1, "max_tokens": 5000}, "parameters": {}, "inputs": []}',
        "escape sequences are not accepted in the keys of the request",
    ),
    "two parameters objects": (
        b'{"inputs": [], "parameters": {}, "parameters": {"max_tokens": 5000}}',
        "parameters appears twice in the request",
    ),
    "two max_tokens": (
        b'{"inputs": [], "parameters": {"max_tokens": 1, "max_tokens": 5000}}',
        "max_tokens appears twice in parameters",
    ),
    "parameters that are no object": (
        b'{"inputs": [], "parameters": null}',
        "parameters must be a JSON object",
    ),
    "a second JSON value after the first": (
        b'{"inputs": []} {"parameters": {"max_tokens": 5000}}',
        "the request body holds more than one JSON value",
    ),
}


@pytest.mark.parametrize(("raw", "why"), AMBIGUOUS_BODIES.values(), ids=list(AMBIGUOUS_BODIES))
def test_bodies_two_readers_could_read_differently_are_refused(gateway: Bed, raw: bytes, why: str) -> None:
    gateway.recorded.clear()
    reply = gateway.call("/v1/models/recorder/infer", key=KEYS["carol"], raw=raw)
    assert (reply.status, reply.json()["error"]["message"]) == (400, why)
    assert gateway.recorded == []


def test_a_binary_body_must_declare_a_json_length_within_it(gateway: Bed) -> None:
    gateway.recorded.clear()
    header = b'{"inputs": [], "parameters": {"max_tokens": 5}}'
    for declared, status in (("x", 400), (str(len(header) + 100), 400), (str(len(header)), 200)):
        reply = gateway.call(
            "/v1/models/recorder/infer",
            key=KEYS["carol"],
            raw=header + b"\x00" * 16,
            headers={"inference-header-content-length": declared},
        )
        assert reply.status == status, (declared, reply.body)
    assert len(gateway.recorded) == 1
    _, headers, body = gateway.recorded[0]
    rewritten = b'{"inputs": [], "parameters": {"priority":1,"max_tokens": 5}}'
    assert body == rewritten + b"\x00" * 16
    assert headers["inference-header-content-length"] == str(len(rewritten))


def test_a_grpc_max_tokens_with_several_oneof_members_is_refused(gateway: Bed) -> None:
    """int64_param 1 then double_param 1e9: protobuf reads the double, so no reading by the gateway could be
    the backend's; refused before it reaches Triton."""
    parameter = service_pb2.InferParameter(int64_param=1).SerializeToString()
    parameter += service_pb2.InferParameter(double_param=1e9).SerializeToString()
    request = service_pb2.ModelInferRequest(model_name="echo").SerializeToString()
    entry = b"\x0a\x0amax_tokens" + b"\x12" + bytes([len(parameter)]) + parameter
    request += b"\x22" + bytes([len(entry)]) + entry
    assert service_pb2.ModelInferRequest.FromString(request).parameters["max_tokens"].double_param == 1e9
    with grpc.insecure_channel(f"localhost:{gateway.ports[0]}") as channel:
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as refused:
            infer(request, metadata=(("authorization", f"Bearer {KEYS['carol']}"),), timeout=10)
    assert "parameters.max_tokens must hold exactly one value" in (refused.value.details() or "")


def test_compressed_bodies_are_refused_and_replies_come_plain(gateway: Bed) -> None:
    gzipped = gateway.call(
        "/v1/models/echo/infer", key=KEYS["carol"], raw=b"\x1f\x8b", headers={"content-encoding": "gzip"}
    )
    assert gzipped.status == 415
    gateway.recorded.clear()
    gateway.call("/v1/models/recorder/infer", key=KEYS["carol"], body={}, headers={"accept-encoding": "gzip"})
    assert "accept-encoding" not in gateway.recorded[-1][1]


def test_large_bodies_pass_both_ways_and_are_metered(gateway: Bed) -> None:
    reply = infer(gateway, "/v1/models/echo/infer", KEYS["bigbody"], values=300_000, max_tokens=1)
    assert reply.status == 200, reply.body[:200]
    assert len(reply.body) > 1_000_000 and usage(reply) == {"prompt_tokens": 300_000, "completion_tokens": 1}


def test_token_limit_does_not_overshoot_under_64_concurrent_clients(gateway: Bed) -> None:
    fresh_window(40)
    admitted: list[int] = []
    refused = []
    lock = threading.Lock()

    def client(index: int) -> None:
        for _ in range(10):
            reply = infer(
                gateway, "/v1/models/echo/infer", KEYS["tpm64"], replica=index % 2, values=8, max_tokens=8
            )
            with lock:
                if reply.status == 200:
                    admitted.append(sum(usage(reply).values()))
                else:
                    refused.append(reply.status)
                    return

    with ThreadPoolExecutor(64) as pool:
        list(pool.map(client, range(64)))
    reservation = math.ceil(len(_sent_bytes(values=8, max_tokens=8)) / 4) + 8
    assert set(refused) == {429}
    assert len(refused) == 64, "every client ends on the limit"
    assert sum(admitted) <= 2000 + reservation, f"{sum(admitted)} tokens admitted past a 2000 TPM limit"
    assert len(admitted) * reservation <= 2000  # what was charged fits the limit
    assert len(admitted) >= 2000 // reservation - 1


def test_a_full_triton_queue_answers_with_the_estimated_wait(gateway: Bed) -> None:
    """tiny has room for one queued request; six that each take 1.5 s, sent at once, overflow it however the
    machine schedules them (how many Triton refuses depends on when each arrives, so only one is asserted)."""
    with ThreadPoolExecutor(6) as pool:
        replies = list(
            pool.map(
                lambda _: infer(gateway, "/v1/models/tiny/infer", KEYS["carol"], sleep_ms=1500), range(6)
            )
        )
    refused = [reply for reply in replies if reply.status == 503]
    assert refused and {reply.status for reply in replies} == {200, 503}
    assert {reply.headers["retry-after"] for reply in refused} == {"10"}  # 7.3 s estimated, rounded up


def in_flight(gateway: Bed, cluster: str) -> float:
    """The requests Envoy has in flight to `cluster`, over the replicas (its own gauge)."""
    return summed(gateway.stats(), "envoy_cluster_upstream_rq_active", envoy_cluster_name=cluster)


def test_concurrent_requests_are_capped_per_replica(gateway: Bed) -> None:
    # capped: 2 in flight per model across 2 replicas, so 1 per replica. The second request goes once Envoy
    # counts the first in flight (it takes 5 s in the model), so that the two overlap however loaded the
    # machine is.
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(infer, gateway, "/v1/models/echo/infer", KEYS["erin"], sleep_ms=5000)
        eventually(lambda: in_flight(gateway, "triton-http|echo|capped") == 1 or None, timeout=10)
        limited = infer(gateway, "/v1/models/echo/infer", KEYS["erin"])
        assert limited.status == 429, limited.body
        assert first.result().status == 200
    assert limited.json()["error"]["message"] == "concurrent request limit of the tier reached"
    assert "retry-after" in limited.headers
    with ThreadPoolExecutor(2) as pool:
        spread = list(
            pool.map(
                lambda index: infer(
                    gateway, "/v1/models/echo/infer", KEYS["erin"], replica=index, sleep_ms=800
                ),
                range(2),
            )
        )
    assert [reply.status for reply in spread] == [200, 200]


def test_a_higher_priority_tier_overtakes_a_saturated_queue(gateway: Bed) -> None:
    finished: dict[str, float] = {}
    lock = threading.Lock()

    def call(name: str, key: str) -> None:
        reply = infer(gateway, "/v1/models/echo/infer", key, sleep_ms=250)
        assert reply.status == 200, reply.body
        with lock:
            finished[name] = time.monotonic()

    with ThreadPoolExecutor(12) as pool:
        low = [pool.submit(call, f"bulk-{index}", KEYS["bulk"]) for index in range(10)]
        time.sleep(0.6)  # the queue holds bulk requests now; one runs at a time (250 ms each)
        high = pool.submit(call, "carol", KEYS["carol"])
        for future in [*low, high]:
            future.result()
    overtaken = [name for name, at in finished.items() if name.startswith("bulk") and at > finished["carol"]]
    assert len(overtaken) >= 5, f"carol (priority 1) finished after {10 - len(overtaken)} of 10 bulk requests"


# Reloads and failures


def test_a_tier_edit_takes_effect_live_without_a_restart_or_a_failed_request(gateway: Bed) -> None:
    pids = [envoy.popen.pid for envoy in gateway.envoys]
    stop = threading.Event()
    failures: list[int] = []
    served = [0]

    def load(replica: int) -> None:
        while not stop.is_set():
            reply = infer(gateway, "/v1/models/echo/infer", KEYS["carol"], replica=replica)
            if reply.status != 200:
                failures.append(reply.status)
            served[0] += 1

    threads = [threading.Thread(target=load, args=(index % 2,)) for index in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1)
        gateway.configure(manifests(gateway, free_rpm=77))
        reloaded(gateway, free_rpm=77)
        time.sleep(1)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert (
        infer(gateway, "/v1/models/echo/infer", KEYS["alice"], replica=1).headers["x-ratelimit-limit"] == "77"
    )
    assert failures == [] and served[0] > 20
    assert [envoy.popen.pid for envoy in gateway.envoys] == pids and all(
        envoy.popen.poll() is None for envoy in gateway.envoys
    )
    restore(gateway)


@pytest.mark.parametrize("component", ["redis", "ratelimit"])
def test_limits_down_fail_open_or_closed_as_each_tier_chose(gateway: Bed, component: str) -> None:
    gateway.processes[component].stop()
    try:
        assert infer(gateway, "/v1/models/echo/infer", KEYS["fay"]).status == 200  # free: fail open
        closed = infer(gateway, "/v1/models/echo/infer", KEYS["dave"])  # closed: failOpen false
        assert closed.status == 500 and closed.json()["error"]["code"] == 500
        assert infer(gateway, "/v1/models/echo/infer", KEYS["carol"]).status == 200  # unlimited: no call
    finally:
        getattr(gateway, f"start_{component}")()
    deadline = time.monotonic() + 20
    while infer(gateway, "/v1/models/echo/infer", KEYS["dave"]).status != 200:
        assert time.monotonic() < deadline, "the closed tier did not recover after Redis came back"
        time.sleep(0.5)


def test_envoy_exports_the_statistics_the_gateway_rules_read(gateway: Bed) -> None:
    url = f"http://127.0.0.1:{gateway.metrics_ports[0]}/stats/prometheus"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    replies = [line for line in text.splitlines() if line.startswith("envoy_http_downstream_rq_xx{")]
    assert any(
        'envoy_http_conn_manager_prefix="gateway"' in line and 'envoy_response_code_class="4"' in line
        for line in replies
    )
    with pytest.raises(urllib.error.HTTPError):  # nothing else of the admin interface is reachable
        urllib.request.urlopen(
            f"http://127.0.0.1:{gateway.metrics_ports[0]}/quitquitquit", data=b"", timeout=5
        )


USAGE_LINE = re.compile(r"^envoy_tollway_(usage_\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def usage_counters(gateway: Bed) -> dict[tuple[str, str, str], float]:
    """The usage counters of every Envoy replica, summed as Prometheus rules sum them: by (kind, tier,
    consumer), each label value unescaped."""
    found: dict[tuple[str, str, str], float] = {}
    for port in gateway.metrics_ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=5) as response:
            lines = response.read().decode().splitlines()
        for line in lines:
            if (matched := USAGE_LINE.match(line)) is None:
                continue
            kind, labels, value = matched.groups()
            named = {name: re.sub(r"\\(.)", r"\1", text) for name, text in LABEL.findall(labels)}
            key = (kind, named["tier"], named["consumer"])
            found[key] = found.get(key, 0.0) + float(value)
    return found


def usage_of(gateway: Bed, consumer: str, requests: int, tier: str = "metered") -> dict[str, float]:
    """One consumer's usage counters in `tier` by kind, once `requests` of its requests are counted (Envoy
    counts a request as it logs it, just after the response)."""

    def found() -> dict[str, float] | None:
        counters = {kind: value for (kind, in_tier, name), value in usage_counters(gateway).items() if
                    (in_tier, name) == (tier, consumer)}  # fmt: skip
        return counters if counters.get("usage_requests") == requests else None

    return eventually(found, timeout=30)


def reserved_tokens(gateway: Bed, consumer: str, tier: str = "metered") -> float | None:
    """The tokens the ratelimit service's TPM counter of one consumer was charged so far, as its metrics
    endpoint shows them (the service's stats reach it every few seconds); None before it names the counter."""
    url = f"http://127.0.0.1:{gateway.ratelimit_ports.metrics}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    for line in lines:
        if line.startswith("ratelimit_service_rate_limit_total_hits{") and all(
            label in line for label in (f'key1="tpm_{tier}"', f'key2="consumer_{consumer}"')
        ):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_each_consumers_requests_and_tokens_are_counted(gateway: Bed) -> None:
    for _ in range(2):
        assert infer(gateway, "/v1/models/echo/infer", KEYS["uma"], values=3, max_tokens=5).status == 200
    assert usage_of(gateway, "uma", 2) == {
        "usage_requests": 2,
        "usage_input": 6,
        "usage_output": 10,
        "usage_unreported": 0,
    }
    reservation = math.ceil(len(_sent_bytes(values=3, max_tokens=5)) / 4) + 5
    eventually(lambda: reserved_tokens(gateway, "uma") == 2 * reservation, timeout=30)


def test_outputs_that_leave_the_usage_out_get_it_back_and_are_charged_what_they_used(gateway: Bed) -> None:
    """Usage is compulsory: a request that lists only some outputs gets the model's usage output too."""
    body = {**infer_body(values=3, max_tokens=5), "outputs": [{"name": "OUTPUT"}]}
    reply = gateway.call("/v1/models/echo/infer", key=KEYS["wes"], body=body)
    assert reply.status == 200 and sorted(outputs(reply)) == ["OUTPUT", "USAGE"]
    assert usage(reply) == {"prompt_tokens": 3, "completion_tokens": 5}
    client = triton_grpc.InferenceServerClient(f"localhost:{gateway.ports[0]}")
    data = triton_grpc.InferInput("INPUT", [1, 3], "FP32")
    data.set_data_from_numpy(numpy.ones((1, 3), dtype="float32"))
    only = [triton_grpc.InferRequestedOutput("OUTPUT")]
    result = client.infer("echo", [data], outputs=only, headers={"authorization": f"Bearer {KEYS['wes']}"})
    assert json.loads(result.as_numpy("USAGE")[0][0]) == {"prompt_tokens": 3, "completion_tokens": 3}
    # the two requests' counts, and nothing unreported
    found = usage_of(gateway, "wes", 2)
    assert (found["usage_input"], found["usage_output"], found["usage_unreported"]) == (6, 8, 0)


def test_consumers_whose_names_hold_dots_colons_slashes_or_at_signs_are_counted_apart(gateway: Bed) -> None:
    """Each consumer is a label value of its own, whatever its name holds: API key consumers with dots, and
    JWT subjects such as SPIFFE IDs and e-mail addresses, are never billed as one."""
    for consumer, times in (("svc.a", 1), ("svc.b", 2)):
        for _ in range(times):
            assert (
                infer(gateway, "/v1/models/echo/infer", KEYS[consumer], values=3, max_tokens=5).status == 200
            )
    subjects = {
        "spiffe://acme.example/ns/billing": 1,
        "spiffe://acme.example/ns/search": 2,
        "alice@acme.example": 3,
        'svc:"quoted"\\back': 1,
    }
    for subject, times in subjects.items():
        token = gateway.certs.token(scope="inference", sub=subject)
        for _ in range(times):
            assert gateway.call("/v1/models/echo/infer", key=token, body=infer_body()).status == 200
    for consumer, times in (("svc.a", 1), ("svc.b", 2)):
        assert usage_of(gateway, consumer, times)["usage_input"] == 3 * times
    for subject, times in subjects.items():  # a JWT's consumer is its claim, marked as one
        assert usage_of(gateway, f"jwt:{subject}", times, tier="pro")["usage_requests"] == times
    assert not any(name in ("svc", "jwt:spiffe://acme") for _, _, name in usage_counters(gateway))


def test_a_response_without_usage_is_charged_its_estimate_and_counted_unreported(gateway: Bed) -> None:
    """Usage is compulsory: a model that reports none (the recorder) is answered, charged the most the request
    could have used (its reservation) as output tokens, and counted as unreported (an alert)."""
    body = infer_body(values=3, max_tokens=5)
    reply = gateway.call("/v1/models/recorder/infer", key=KEYS["vic"], body=body)
    assert reply.status == 200
    estimate = math.ceil(len(json.dumps(body)) / 4) + 5
    found = usage_of(gateway, "vic", 1)
    assert (found["usage_unreported"], found["usage_input"], found["usage_output"]) == (1, 0, estimate)
    eventually(lambda: reserved_tokens(gateway, "vic") == estimate, timeout=30)  # no more: nothing to settle


def models_serving(gateway: Bed) -> int:
    """The requests replica 0 has sent to the echo model's Tritons and not yet seen answered."""
    url = f"http://127.0.0.1:{gateway.replicas[0].admin}/stats?filter=triton-http.echo.upstream_rq_active$"
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.read().decode().rsplit(":", 1)[1])


def test_a_caller_who_leaves_while_the_model_serves_is_charged_its_estimate(gateway: Bed) -> None:
    """Leaving early never costs less: a request the model was serving when its caller closed the
    connection is counted, charged its estimate as output tokens, and counted unreported (no answer came)."""
    body = json.dumps(infer_body(values=3, max_tokens=5, sleep_ms=3000)).encode()
    head = (
        "POST /v1/models/echo/infer HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        f"authorization: Bearer {KEYS['xena']}\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", gateway.ports[0]), timeout=10) as connection:
        connection.sendall(head.encode() + body)
        eventually(lambda: models_serving(gateway) == 1, timeout=30)  # Triton has it: now leave
    estimate = math.ceil(len(body) / 4) + 5
    found = usage_of(gateway, "xena", 1)
    assert found == {"usage_requests": 1, "usage_input": 0, "usage_output": estimate, "usage_unreported": 1}


def test_the_credentials_stay_out_of_envoys_logs(gateway: Bed) -> None:
    assert infer(gateway, "/v1/models/echo/infer", KEYS["alice"]).status in (200, 429)
    in_url = gateway.call(f"/v1/models/echo/infer?api_key={KEYS['alice']}", body=infer_body())
    assert in_url.status == 401
    assert in_url.json()["error"]["message"].startswith("send credentials in the Authorization")
    forged = {"x-envoy-original-path": "/forged-path"}
    assert gateway.call("/no/such/route?note=1", key=KEYS["carol"], headers=forged).status == 404

    def logs() -> str:
        return "".join(envoy.log.read_text(errors="replace") for envoy in gateway.envoys)

    eventually(lambda: "/no/such/route" in logs(), timeout=30)  # Envoy flushes its access log in a while
    text = logs()
    assert "/forged-path" not in text and "note=1" not in text  # the path as routed, without its query
    assert '"consumer":"alice"' in text.replace(" ", "")
    assert not any(key in text for key in KEYS.values())

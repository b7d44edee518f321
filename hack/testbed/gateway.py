"""The gateway tests' bed (and the gateway benchmark's): real Triton, Redis, the ratelimit service and two
Envoy replicas on loopback (testbed.dataplane), all configured by `tollway gateway-config` from manifests
made of the builders below; plus a recording upstream, a JWKS server and the certificates the JWT and mTLS
tests need (generated here, per run)."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.translate.serving import plan_serving

from testbed import client, dataplane
from testbed.triton import GUARDRAIL_MODEL, RunningTriton, running

NAMESPACE = "gw"
ISSUER = "https://issuer.test/"
AUDIENCE = "tollway-tests"
PRIORITIES = (1, 2, 3, 5)


def secret(name: str, tier: str, key: str, **extra: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE, "labels": {"tollway.dev/tier": tier}}
    for field_name in ("labels", "annotations"):
        if field_name in extra:
            metadata[field_name] = {**metadata.get(field_name, {}), **extra[field_name]}
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "stringData": {"api-key": key}}


def tier(
    name: str, priority: int, limits: Mapping[str, Any], models: list[str], **spec: Any
) -> dict[str, Any]:
    auth = spec.pop("auth", {"apiKeys": {"secretSelector": {"matchLabels": {"tollway.dev/tier": name}}}})
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ApiTier",
        "metadata": {"name": name, "namespace": NAMESPACE, "uid": f"uid-{name}"},
        "spec": {"priority": priority, "limits": dict(limits), "models": models, "auth": auth, **spec},
    }


def echo_model() -> dict[str, Any]:
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "echo", "namespace": NAMESPACE, "uid": "uid-echo"},
        "spec": {
            "model": {
                "repository": "s3://models/echo",
                "backend": "python",
                "maxBatchSize": 1,
                "tokens": {"defaultMaxTokens": 4, "usageOutput": "USAGE"},
            },
            "versions": [
                {"version": "3"},
                {
                    "version": "2",
                    "deprecation": {
                        "announced": "2026-01-01",
                        "sunset": "2099-01-01",
                        "link": "https://docs.test/migrate",
                    },
                },
                {"version": "1", "deprecation": {"announced": "2025-01-01", "sunset": "2026-01-01"}},
            ],
            "aliases": {"latest": "3", "stable": "2"},
            "triton": {"gpus": 0},
            "batching": {"maxQueueDelayMicroseconds": 0},
            "queue": {"maxQueueSize": 64, "timeoutMicroseconds": 60000000},
        },
    }


def tiny_model() -> dict[str, Any]:
    """The echo model again with room for one queued request, and an estimated wait in its status (as the
    operator writes it from Prometheus)."""
    document = echo_model()
    document["metadata"] = {"name": "tiny", "namespace": NAMESPACE, "uid": "uid-tiny"}
    document["spec"]["versions"] = [{"version": "1"}]
    document["spec"]["aliases"] = {"latest": "1"}
    document["spec"]["queue"] = {"maxQueueSize": 1}
    document["status"] = {"metrics": {"estimatedWaitSeconds": 7.3}}
    return document


def guard_model() -> dict[str, Any]:
    """A guardrail model for the tiers' prompt checks (tests/models/guardrail: TEXT in, FLAGGED out)."""
    document = echo_model()
    document["metadata"] = {"name": "guard", "namespace": NAMESPACE, "uid": "uid-guard"}
    document["spec"]["model"] = {"repository": "s3://models/guard", "backend": "python", "maxBatchSize": 4}
    document["spec"]["versions"] = [{"version": "1"}]
    document["spec"]["aliases"] = {"latest": "1"}
    return document


def recorder_model() -> dict[str, Any]:
    """A 'model' whose upstream is a recording HTTP server: what the gateway forwards, headers and body. It
    counts tokens and reports none: a model that leaves its usage out."""
    return {
        "apiVersion": "tollway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "recorder", "namespace": NAMESPACE, "uid": "uid-recorder"},
        "spec": {
            "model": {"repository": "s3://models/recorder", "backend": "python", "tokens": {}},
            "versions": [{"version": "1"}],
        },
    }


@dataclass
class Certificates:
    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    partner_ca_pem: str
    partner_crl_pem: str
    """Partners' CA revokes the client "revoked"."""
    gold_ca_pem: str
    clients: dict[str, tuple[Path, Path]]
    jwt_key: rsa.RSAPrivateKey

    def jwks(self) -> dict[str, Any]:
        numbers = self.jwt_key.public_key().public_numbers()

        def b64(value: int) -> str:
            raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

        return {
            "keys": [
                {
                    "kty": "RSA",
                    "kid": "test",
                    "alg": "RS256",
                    "use": "sig",
                    "n": b64(numbers.n),
                    "e": b64(numbers.e),
                }
            ]
        }

    def token(self, **claims: Any) -> str:
        """A signed JWT with these claims over the defaults; a claim given as None is left out."""
        now = int(time.time())
        defaults = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-a", "iat": now, "exp": now + 300}
        payload = {name: value for name, value in {**defaults, **claims}.items() if value is not None}
        parts = [
            base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=")
            for part in ({"alg": "RS256", "typ": "JWT", "kid": "test"}, payload)
        ]
        signing_input = b".".join(parts)
        signature = self.jwt_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return (signing_input + b"." + base64.urlsafe_b64encode(signature).rstrip(b"=")).decode()


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: tuple[x509.Certificate, rsa.RSAPrivateKey] | None,
    sans: list[x509.GeneralName],
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(
    directory: Path, name: str, certificate: x509.Certificate, key: rsa.RSAPrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def _revocations(issuer: tuple[x509.Certificate, rsa.RSAPrivateKey], serials: list[int]) -> str:
    """The issuer's CRL (PEM) revoking `serials`, valid from a minute ago for a day."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer[0].subject)
        .last_update(now - dt.timedelta(minutes=1))
        .next_update(now + dt.timedelta(days=1))
    )
    for serial in serials:
        revoked = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        builder = builder.add_revoked_certificate(revoked)
    crl = builder.sign(issuer[1], hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM).decode()


def certificates(directory: Path) -> Certificates:
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, partner_key, gold_key = _key(), _key(), _key()
    ca = _certificate("tollway test CA", ca_key, None, [])
    partner = _certificate("partner CA", partner_key, None, [])
    gold = _certificate("gold CA", gold_key, None, [])
    ca_path, _ = _write(directory, "ca", ca, ca_key)
    server_key = _key()
    server = _certificate("localhost", server_key, (ca, ca_key), [x509.DNSName("localhost")])
    server_cert, server_key_path = _write(directory, "server", server, server_key)
    clients = {}
    issued = (
        ("acme", "spiffe://partners.test/acme", (partner, partner_key)),
        ("stranger", "spiffe://elsewhere.test/x", (partner, partner_key)),
        ("revoked", "spiffe://partners.test/revoked", (partner, partner_key)),
        # Gold's CA issuing a name that partners' SAN pattern allows: it must not get in as a partner.
        ("impostor", "spiffe://partners.test/impostor", (gold, gold_key)),
    )
    serials = {}
    for name, uri, issuer in issued:
        client_key = _key()
        client = _certificate(name, client_key, issuer, [x509.UniformResourceIdentifier(uri)])
        clients[name] = _write(directory, f"client-{name}", client, client_key)
        serials[name] = client.serial_number
    return Certificates(
        directory=directory,
        ca=ca_path,
        server_cert=server_cert,
        server_key=server_key_path,
        partner_ca_pem=partner.public_bytes(serialization.Encoding.PEM).decode(),
        partner_crl_pem=_revocations((partner, partner_key), [serials["revoked"]]),
        gold_ca_pem=gold.public_bytes(serialization.Encoding.PEM).decode(),
        clients=clients,
        jwt_key=_key(),
    )


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Recorder.seen.append((self.path, {key.lower(): value for key, value in self.headers.items()}, body))
        reply = b'{"model_name":"recorder","outputs":[]}'
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_: Any) -> None:
        pass


class _Jwks(http.server.BaseHTTPRequestHandler):
    document = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(self.document)))
        self.end_headers()
        self.wfile.write(self.document)

    def log_message(self, *_: Any) -> None:
        pass


@contextmanager
def serving_thread(server: http.server.HTTPServer) -> Iterator[int]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@dataclass(kw_only=True)
class Bed(dataplane.GatewayProcesses):
    """The gateway's data path with a listener per replica for each of two mTLS tiers, in front of Triton
    (echo and tiny) and the recording upstream."""

    triton: RunningTriton
    certs: Certificates
    jwks_uri: str
    recorded: list[tuple[str, dict[str, str], bytes]] = field(default_factory=lambda: _Recorder.seen)
    """What the recording upstream received: (path, headers, body)."""
    flags: tuple[str, ...] = ()
    """More of `tollway gateway-config`'s options (how it tells clients apart, for instance)."""

    def configure(self, documents: list[dict[str, Any]], now: dt.datetime | None = None) -> None:
        """Write the manifests and run `tollway gateway-config` for each Envoy replica (a live reload), as of
        `now` when given (else the clock's time)."""
        source = self.workdir / "manifests.yaml"
        source.write_text(yaml.safe_dump_all(documents))
        self.write_config(
            source,
            f"--tls-cert={self.certs.server_cert}",
            f"--tls-key={self.certs.server_key}",
            f"--jwks-ca={self.certs.ca}",
            *self.flags,
            *([f"--now={now.isoformat()}"] if now else []),
        )

    def call(
        self,
        path: str,
        *,
        key: str | None = None,
        body: Any = None,
        replica: int = 0,
        headers: Mapping[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        mtls_tier: int = 0,
        raw: bytes | None = None,
    ) -> client.Reply:
        """A request to a replica: plain HTTP, or HTTPS to an mTLS tier's listener when `context` is given."""
        sent = dict(headers or {})
        if key is not None:
            sent["authorization"] = f"Bearer {key}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent["content-type"] = "application/json"
        ports = self.replicas[replica]
        if context is None:
            url = f"http://localhost:{ports.listener}{path}"
        else:
            assert ports.tls is not None, "the bed's replicas have mTLS listeners"
            url = f"https://localhost:{ports.tls + mtls_tier}{path}"
        return client.request(url, data=data, headers=sent, context=context)


@contextmanager
def bed(
    workdir: Path, documents: Callable[[Bed], list[dict[str, Any]]], flags: tuple[str, ...] = ()
) -> Iterator[Bed]:
    """Everything started; `documents(bed)` gives the manifests (it may use the bed's certificates), `flags`
    go to every `tollway gateway-config`."""
    with ExitStack() as stack:
        certs = certificates(workdir / "certs")
        recorder_port = stack.enter_context(
            serving_thread(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder))
        )
        jwks_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Jwks)
        _Jwks.document = json.dumps(certs.jwks()).encode()
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(certs.server_cert, certs.server_key)
        jwks_server.socket = tls.wrap_socket(jwks_server.socket, server_side=True)
        jwks_port = stack.enter_context(serving_thread(jwks_server))
        echo, tiny, guard = (
            plan_serving(parse(ModelDeployment, model()), PRIORITIES, "unused")
            for model in (echo_model, tiny_model, guard_model)
        )
        guardrail = {"guard": GUARDRAIL_MODEL}
        triton = stack.enter_context(running(workdir / "triton", echo, tiny, guard, sources=guardrail))
        test_bed = Bed(
            workdir=workdir,
            replicas=[dataplane.EnvoyPorts.free(mtls_tiers=2) for _ in range(2)],
            upstreams=[
                triton.upstream("echo"),
                triton.upstream("tiny"),
                triton.upstream("guard"),
                f"recorder=127.0.0.1:{recorder_port}",
            ],
            triton=triton,
            certs=certs,
            jwks_uri=f"https://localhost:{jwks_port}/jwks.json",
            flags=flags,
        )
        test_bed.configure(documents(test_bed))
        stack.callback(test_bed.stop)
        test_bed.start_redis()
        test_bed.start_ratelimit()
        test_bed.start_envoys()
        yield test_bed

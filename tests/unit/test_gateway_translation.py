"""The gateway's pure translation: tiers, models and key Secrets → the Gateway IR, its files, tier reports."""

from __future__ import annotations

import base64
import copy
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway import documents
from tollway.api import ApiTier, ModelDeployment
from tollway.api.api_tier import LabelSelector
from tollway.api.parse import parse
from tollway.ir.gateway import LIMIT_KINDS, Limit, ModelLimits, Runtime
from tollway.ir.state import GatewayState, UsageState
from tollway.observe import prometheus
from tollway.render.envoy import http_filters, listeners
from tollway.render.lua import lua_literal
from tollway.render.ratelimit import ratelimit_config
from tollway.translate import Context, translate, translate_gateway
from tollway.translate.gateway import GatewayOptions, TierReport, model_capacity, plan_gateway, selects

from builders import api_tier, available_deployment, model_deployment

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]


def _source(case: Path) -> Path:
    return case / "in.yaml" if (case / "in.yaml").exists() else case / "in"


def _valid(document: dict[str, Any]) -> bool:
    try:
        parse(ApiTier, document)
    except ValueError:
        return False
    return True


#: The golden cases that render a gateway (at least one valid ApiTier).
GATEWAY_CASES = sorted(
    case
    for case in {
        path.parent
        for path in [*(ROOT / "tests/golden").glob("*/in.yaml"), *(ROOT / "tests/golden").glob("*/in")]
    }
    if any(
        document.get("kind") == "ApiTier" and _valid(document) for document in documents.load([_source(case)])
    )
)


def key_secret(name: str, tier: str, key: str | None = "k", **metadata: Any) -> dict[str, Any]:
    data = {"api-key": base64.b64encode(f"{key}-{name}".encode()).decode()} if key else {}
    return {
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {"tollway.dev/tier": tier, **metadata.pop("labels", {})},
            **metadata,
        },
        "data": data,
    }


def plan(tiers: list[dict[str, Any]], secrets: list[dict[str, Any]] = (), **model: Any) -> Any:  # type: ignore[assignment]
    chat = parse(ModelDeployment, model_deployment(**model))
    return plan_gateway(
        "ai",
        tiers=[parse(ApiTier, tier) for tier in tiers],
        models=[chat],
        secrets=list(secrets),
        now=NOW,
    )


def test_label_selectors_follow_kubernetes_semantics() -> None:
    selector = LabelSelector.model_validate(
        {
            "matchLabels": {"tier": "pro"},
            "matchExpressions": [
                {"key": "team", "operator": "In", "values": ["a", "b"]},
                {"key": "banned", "operator": "DoesNotExist"},
            ],
        }
    )
    assert selects(selector, {"tier": "pro", "team": "a"})
    assert not selects(selector, {"tier": "pro", "team": "c"})
    assert not selects(selector, {"tier": "pro", "team": "a", "banned": "yes"})
    assert not selects(selector, {"team": "a"})


def test_model_references_grant_versions_and_unknown_ones_are_named() -> None:
    tier = api_tier(
        "pro", **{"spec.models": ["chat", "chat:stable", "chat@1", "nope", "chat:gone", "chat@7"]}
    )
    result = plan([tier], **{"spec.aliases": {"latest": "2", "stable": "1"}})
    assert result.gateway.tiers[0].allowed == (("chat", 1), ("chat", 2))
    assert result.reports["pro"].problems == (
        'spec.models[3]: no ModelDeployment in this namespace serves model "nope"',
        'spec.models[4]: model "chat" has no alias "gone"',
        'spec.models[5]: model "chat" has no version 7',
    )
    everything = plan([api_tier("all", **{"spec.models": ["*"]})])
    assert everything.gateway.tiers[0].allowed == (("chat", 1), ("chat", 2))


def test_keys_expire_rotate_and_belong_to_one_tier() -> None:
    pro = api_tier("pro", **{"spec.priority": 1})
    free = api_tier(
        "free", **{"spec.priority": 3, "spec.auth.apiKeys.secretSelector.matchLabels": {"kind": "key"}}
    )
    secrets = [
        key_secret("alice", "pro"),
        key_secret("alice-next", "pro", labels={"tollway.dev/consumer": "alice"}),
        key_secret("old", "pro", annotations={"tollway.dev/expires-at": "2026-11-01T00:00:00Z"}),
        key_secret("later", "pro", annotations={"tollway.dev/expires-at": "2027-01-01T00:00:00+00:00"}),
        key_secret("garbled", "pro", annotations={"tollway.dev/expires-at": "next tuesday"}),
        key_secret("empty", "pro", key=None),
        key_secret("both", "pro", labels={"kind": "key"}),
    ]
    result = plan([pro, free], secrets)
    credentials = {credential.id: credential for credential in result.gateway.credentials}
    assert sorted(credentials) == ["alice", "alice-next", "both", "later"]
    assert credentials["alice-next"].consumer == "alice"
    assert credentials["later"].expires_at == 1798761600
    assert credentials["both"].tier == "pro"
    assert result.reports["pro"].consumers == 3  # alice (two keys), both, later
    assert result.reports["pro"].problems == (
        'Secret "empty": no data key "api-key"; it grants nothing',
        'Secret "garbled": annotation tollway.dev/expires-at is not an RFC 3339 time; key refused',
    )
    assert result.reports["free"].problems == (
        'spec.auth.apiKeys.secretSelector: Secret "both" is also selected by tier "pro", which comes first '
        "by priority; its key works for that tier only",
    )


def test_a_verified_only_tier_marks_the_keys_whose_secret_does_not_say_verified() -> None:
    tier = api_tier("pro", **{"spec.auth.apiKeys.requireVerified": True})
    secrets = [
        key_secret("paid", "pro", labels={"tollway.dev/verified": "true"}),
        key_secret("trial", "pro"),
        key_secret("claimed", "pro", labels={"tollway.dev/verified": "yes"}),  # only "true" says it
    ]
    credentials = {
        credential.id: credential.unverified for credential in plan([tier], secrets).gateway.credentials
    }
    assert credentials == {"claimed": True, "paid": False, "trial": True}
    ordinary = plan([api_tier("pro")], secrets).gateway.credentials
    assert not any(credential.unverified for credential in ordinary)


def deny_list(name: str, text: str | None) -> dict[str, Any]:
    data = {} if text is None else {"cidrs": base64.b64encode(text.encode()).decode()}
    return {
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"tollway.dev/deny-list": "true"}},
        "data": data,
    }


def test_the_deny_lists_are_merged_normalised_and_their_unreadable_lines_named() -> None:
    secrets = [
        deny_list("feed-b", "192.0.2.77/24  # host bits set\n2001:db8::1\n"),
        deny_list("feed-a", "# comment only\n\n198.51.100.7\n192.0.2.0/24\n10.0.0.300\n"),
        deny_list("empty", None),
        {**deny_list("ignored", "203.0.113.0/24"), "metadata": {"name": "ignored", "labels": {}}},
    ]
    result = plan([api_tier("pro"), api_tier("free", **{"spec.priority": 3})], secrets)
    assert result.gateway.denied_cidrs == ("192.0.2.0/24", "198.51.100.7/32", "2001:db8::1/128")
    problems = (
        'deny list Secret "empty": no data key "cidrs"; it denies nothing',
        "deny list Secret \"feed-a\", line 5: '10.0.0.300' is no address or CIDR",
    )
    assert result.reports["pro"].problems == problems and result.reports["free"].problems == problems


def test_a_tiers_networks_are_normalised_and_its_per_address_limit_counted_per_address() -> None:
    tier = api_tier(
        "pro",
        **{
            "spec.network": {"allowedCidrs": ["203.0.113.7/24", "2001:DB8::/32"], "requestsPerMinutePerIp": 9}
        },
    )
    gateway = plan([tier]).gateway
    assert gateway.tiers[0].allowed_cidrs == ("203.0.113.0/24", "2001:db8::/32")
    per_address = [entry for entry in ratelimit_config(gateway)["descriptors"] if entry["key"] == "ip"]
    assert [
        (entry["value"], entry["descriptors"][0]["rate_limit"]["requests_per_unit"]) for entry in per_address
    ] == [
        ("_unauthenticated", 60),
        ("pro", 9),
    ]


def _filter_names(gateway: Any) -> list[str]:
    return [entry["name"] for entry in http_filters(gateway)]


def test_network_rules_are_rendered_only_where_something_needs_them() -> None:
    bare = replace(plan([api_tier("pro")]).gateway, runtime=Runtime(unauthenticated_rpm_per_ip=None))
    assert not {"tollway.denied_networks", "tollway.tier_networks"} & set(_filter_names(bare))
    assert not [entry for entry in ratelimit_config(bare)["descriptors"] if entry["key"] == "ip"]
    tier = api_tier("pro", **{"spec.network.allowedCidrs": ["203.0.113.0/24"]})
    guarded = replace(plan([tier], [deny_list("feed", "192.0.2.1")]).gateway, runtime=Runtime())
    filters = http_filters(guarded)
    names = [entry["name"] for entry in filters]
    # The deny list first of all; the tier's networks once the headers program has named the tier, and
    # before the request limits, which count a refused guess per address (in the same call as the others).
    assert names.index("tollway.denied_networks") == 0
    assert (
        names.index("tollway.gateway")
        < names.index("tollway.tier_networks")
        < names.index("tollway.requests.open")
    )
    for mode in ("open", "closed"):
        limits = filters[names.index(f"tollway.requests.{mode}")]["typed_config"]["rate_limits"]
        assert limits[-1]["actions"] == [
            {
                "metadata": {
                    "descriptor_key": "ip",
                    "metadata_key": {"key": "tollway", "path": [{"key": f"address_{mode}"}]},
                    "source": "DYNAMIC",
                }
            },
            {"remote_address": {}},
        ]


def _connection_manager(runtime: Runtime) -> dict[str, Any]:
    gateway = replace(plan([api_tier("pro")]).gateway, runtime=runtime)
    listener = listeners(gateway, NOW)["resources"][0]
    return listener["filter_chains"][0]["filters"][0]["typed_config"]


def test_the_client_address_is_the_peer_unless_proxies_in_front_are_trusted() -> None:
    direct = _connection_manager(Runtime())
    assert (direct["use_remote_address"], direct["xff_num_trusted_hops"]) == (True, 0)
    assert "original_ip_detection_extensions" not in direct
    behind_two = _connection_manager(Runtime(trusted_proxy_hops=2))
    assert (behind_two["use_remote_address"], behind_two["xff_num_trusted_hops"]) == (True, 2)
    by_network = _connection_manager(Runtime(trusted_proxy_cidrs=("10.0.0.0/8",)))
    assert by_network["use_remote_address"] is False and "xff_num_trusted_hops" not in by_network
    (detection,) = by_network["original_ip_detection_extensions"]
    assert detection["typed_config"]["xff_trusted_cidrs"] == {
        "cidrs": [{"address_prefix": "10.0.0.0", "prefix_len": 8}]
    }


def test_overrides_get_counters_of_their_own() -> None:
    tier = api_tier(
        "pro",
        **{
            "spec.limits": {"requestsPerMinute": 60, "tokensPerMinute": 1000, "concurrentRequests": 4},
            "spec.overrides": [{"model": "chat", "tokensPerMinute": 50, "concurrentRequests": 1}],
        },
    )
    models = [model_deployment(), model_deployment("embed", **{"spec.model.name": "embed"})]
    built = plan_gateway(
        "ai",
        tiers=[parse(ApiTier, tier)],
        models=[parse(ModelDeployment, document) for document in models],
        secrets=[],
        now=NOW,
        options=GatewayOptions(runtime=Runtime(envoy_replicas=3)),
    ).gateway
    assert built.tiers[0].limits_for("chat") == ModelLimits(
        model="chat",
        limits=(Limit("rpm", "pro", 60), Limit("tpm", "pro/chat", 50)),
        token_cap=50,
        concurrent=1,
        concurrent_per_replica=1,
    )
    assert built.tiers[0].limits_for("embed") == ModelLimits(
        model="embed",
        limits=(Limit("rpm", "pro", 60), Limit("tpm", "pro", 1000)),
        token_cap=1000,
        concurrent=4,
        concurrent_per_replica=2,  # each of 3 Envoy replicas admits its share, rounded up
    )
    descriptors = [entry for entry in ratelimit_config(built)["descriptors"] if entry["key"] in LIMIT_KINDS]
    limits = {(entry["key"], entry["value"]): entry["descriptors"][0]["rate_limit"] for entry in descriptors}
    assert all(entry["descriptors"][0]["detailed_metric"] for entry in descriptors)  # per-consumer figures
    assert limits == {
        ("rpm", "pro"): {"unit": "minute", "requests_per_unit": 60},
        ("tpm", "pro"): {"unit": "minute", "requests_per_unit": 1000},
        ("tpm", "pro/chat"): {"unit": "minute", "requests_per_unit": 50},
    }
    assert built.tiers[0].limits == (Limit("rpm", "pro", 60), Limit("tpm", "pro", 1000))


def test_lua_literals_escape_everything_a_key_may_hold() -> None:
    assert lua_literal("\t1") == '"\\0091"'  # a digit after an escape stays a digit
    assert (
        lua_literal({'a"b': [1, True, None, "x\\y\n\u00e9"]})
        == '{["a\\034b"] = {1, true, nil, "x\\092y\\010\\195\\169"}}'
    )


def test_a_redaction_pattern_the_gateway_cannot_run_is_the_tiers_problem_and_masks_nothing() -> None:
    patterns = ["sk-[A-Za-z0-9]{20,}", "(a|b)c", r"\d{3}-\d{4}"]
    tier = api_tier("pro", **{"spec.sampling": {"sampleRate": "0.5", "redact": {"patterns": patterns}}})
    result = plan([tier])
    assert result.reports["pro"].problems == (
        "spec.sampling.redact.patterns[1]: '(' at 0: no groups or alternation (write one pattern each); "
        "it masks nothing",
    )
    sampling = result.gateway.tiers[0].sampling
    assert sampling.rate == "0.5" and sampling.redaction.patterns == (patterns[0], patterns[2])


def test_there_are_gateway_cases() -> None:
    assert len(GATEWAY_CASES) >= 3


@pytest.mark.parametrize("sink", [[], ["--sample-sink=127.0.0.1:4317"]], ids=["", "sampled"])
@pytest.mark.parametrize("case", GATEWAY_CASES, ids=[case.name for case in GATEWAY_CASES])
def test_envoy_validates_every_golden_gateway(case: Path, sink: list[str], tmp_path: Path) -> None:
    source = _source(case)
    tollway = Path(sys.executable).parent / "tollway"
    written = subprocess.run(
        [str(tollway), "gateway-config", "-f", str(source), "--out", str(tmp_path), *sink],
        capture_output=True,
        text=True,
        check=False,
    )
    assert written.returncode == 0, written.stderr
    envoy = Path(sys.executable).parent / "envoy"
    for config in ("envoy-static.yaml", "envoy.yaml"):
        checked = subprocess.run(
            [str(envoy), "--mode", "validate", "-c", str(tmp_path / "envoy" / config)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout[-3000:] + checked.stderr[-3000:]
    ratelimit = yaml.safe_load((tmp_path / "ratelimit" / "config" / "tollway.yaml").read_text())
    assert ratelimit["domain"] == "tollway"


def _tier_status(report: TierReport, state: GatewayState) -> dict[str, Any]:
    document = api_tier("pro")
    status = translate(ApiTier, document, NOW, Context(tier=report, gateway=state)).status
    return {
        item["type"]: (item["status"], item["reason"], item["message"]) for item in status["conditions"]
    } | {"consumers": status["consumers"]}


def test_only_envoys_service_takes_the_service_type() -> None:
    options = GatewayOptions(runtime=Runtime(service_type="LoadBalancer"))
    result = translate_gateway("ai", [model_deployment(), api_tier()], [], NOW, options)
    types = {
        manifest["metadata"]["name"]: manifest["spec"].get("type")
        for manifest in result.manifests
        if manifest["kind"] == "Service"
    }
    assert types == {
        "tollway-gateway": "LoadBalancer",
        "tollway-gateway-ratelimit": None,
        "tollway-gateway-redis": None,
    }


def test_a_tier_is_ready_when_an_envoy_replica_serves_its_rules() -> None:
    envoy = available_deployment()
    live = _tier_status(TierReport(consumers=3), GatewayState(envoy=envoy, applied=True))
    assert live["Ready"] == (
        "True",
        "Applied",
        "rules are in the configuration of gateway tollway-gateway (2 Envoy replicas available; each reloads "
        "it when the kubelet updates the mounted Secret, within a minute)",
    )
    assert live["Degraded"] == ("False", "AsExpected", "")
    assert live["consumers"] == 3
    down = _tier_status(TierReport(), GatewayState(envoy=replace(envoy, available_replicas=0), applied=True))
    assert down["Ready"][:2] == ("False", "GatewayUnavailable")
    refused = _tier_status(
        TierReport(), GatewayState(applied=False, error="Secret/tollway-gateway-envoy: too big")
    )
    assert refused["Ready"] == ("False", "ApplyFailed", "Secret/tollway-gateway-envoy: too big")


def test_a_tier_names_what_degrades_it() -> None:
    unknown = _tier_status(
        TierReport(problems=('spec.models[0]: no ModelDeployment in this namespace serves model "x"',)),
        GatewayState(),
    )
    assert unknown["Degraded"][:2] == ("True", "UnknownModel")
    credential = _tier_status(
        TierReport(problems=('Secret "a": no data key "api-key"; it grants nothing',)), GatewayState()
    )
    assert credential["Degraded"] == (
        "True",
        "CredentialProblem",
        'Secret "a": no data key "api-key"; it grants nothing',
    )


def test_a_bad_jwks_uri_or_a_missing_server_certificate_is_the_tiers_problem_only() -> None:
    jwt = {"issuer": "https://idp/", "jwksUri": "https://idp:abc/keys"}
    tiers = [
        api_tier("pro", **{"spec.auth.jwt": jwt}),
        api_tier("partners", **{"spec.auth": {"mtls": {"caSecretRef": {"name": "ca"}}}}),
    ]
    ca = {"kind": "Secret", "metadata": {"name": "ca"}, "data": {"ca.crt": base64.b64encode(b"PEM").decode()}}
    result = plan(tiers, [ca])
    assert result.reports["pro"].problems == (
        "spec.auth.jwt.jwksUri: 'https://idp:abc/keys' names no host and port to fetch keys from; "
        "no token is accepted for this tier",
    )
    assert (
        result.reports["partners"]
        .problems[0]
        .startswith("spec.auth.mtls: the gateway has no server certificate")
    )
    assert all(tier.jwt is None and tier.mtls_port is None for tier in result.gateway.tiers)


def test_a_tiers_crl_reaches_its_listener_and_jwts_get_a_maximum_lifetime() -> None:
    jwt = {"issuer": "https://idp/", "jwksUri": "https://idp:8443/keys", "maxLifetimeSeconds": 3600}
    tiers = [
        api_tier("pro", **{"spec.auth.jwt": jwt}),
        api_tier("partners", **{"spec.auth": {"mtls": {"caSecretRef": {"name": "ca"}}}}),
        api_tier("gold", **{"spec.auth": {"mtls": {"caSecretRef": {"name": "gold-ca"}}}}),
    ]
    encoded = {name: base64.b64encode(name.encode()).decode() for name in ("CA", "CRL", "GOLD")}
    secrets = [
        {
            "kind": "Secret",
            "metadata": {"name": "ca"},
            "data": {"ca.crt": encoded["CA"], "ca.crl": encoded["CRL"]},
        },
        {"kind": "Secret", "metadata": {"name": "gold-ca"}, "data": {"ca.crt": encoded["GOLD"]}},
    ]
    options = GatewayOptions(runtime=Runtime(tls_secret="gateway-tls"))
    result = plan_gateway(
        "ai",
        tiers=[parse(ApiTier, tier) for tier in tiers],
        models=[],
        secrets=secrets,
        now=NOW,
        options=options,
    )
    rendered = {item["name"]: item for item in listeners(result.gateway, NOW)["resources"]}

    def validation(tier: str) -> dict[str, Any]:
        socket = rendered[f"mtls-{tier}"]["filter_chains"][0]["transport_socket"]
        return socket["typed_config"]["common_tls_context"]["validation_context"]  # type: ignore[no-any-return]

    assert validation("partners") == {"trusted_ca": {"inline_string": "CA"}, "crl": {"inline_string": "CRL"}}
    assert validation("gold") == {"trusted_ca": {"inline_string": "GOLD"}}
    (jwt_filter,) = [item for item in http_filters(result.gateway) if item["name"].endswith("jwt_authn")]
    provider = jwt_filter["typed_config"]["providers"]["pro"]
    assert (provider["require_expiration"], provider["max_lifetime"]) == (True, "3600s")


def test_only_invalid_tiers_leave_the_running_gateway_alone() -> None:
    broken = api_tier("pro", **{"spec.models": []})
    result = translate_gateway("ai", [broken], [], NOW)
    assert result.plan.gateway is None and result.manifests == () and result.stale == ()
    assert translate_gateway("ai", [], [], NOW).stale  # no tier at all: everything goes


def test_a_tiers_usage_today_is_priced_and_kept_when_prometheus_is_away() -> None:
    tier = api_tier(
        "pro",
        **{"spec.pricing": {"currency": "EUR", "inputPer1kTokens": "0.0005", "outputPer1kTokens": "0.0015"}},
    )
    used = UsageState(reachable=True, consumers=2, requests=30, input_tokens=120_000, output_tokens=40_000)
    status = translate(ApiTier, tier, NOW, Context(usage=used)).status
    assert status["usage"] == {
        "consumers": 2,
        "requests": 30,
        "inputTokens": 120000,
        "outputTokens": 40000,
        "cost": "0.12",
        "currency": "EUR",
        "observedAt": "2026-11-26T12:00:00Z",
    }
    away = translate(
        ApiTier, {**tier, "status": status}, NOW, Context(usage=UsageState(reachable=False, error="refused"))
    )
    assert away.status["usage"] == status["usage"]
    condition = next(item for item in away.status["conditions"] if item["type"] == "MetricsAvailable")
    assert (condition["status"], condition["reason"]) == ("False", "PrometheusUnreachable")


def test_a_tiers_usage_is_read_per_consumer_from_the_usage_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """The queries tier_usage sends (Prometheus itself is exercised by the integration tests)."""
    asked: list[str] = []
    answers = {"requests": 30.0, "input": 120000.4, "output": 40000.0}

    class Prometheus:
        def __init__(self, *_: Any, **__: Any) -> None:
            pass

        def custom_query(self, query: str) -> list[dict[str, Any]]:
            asked.append(query)
            if query.startswith("count("):
                return [{"value": [0, "2"]}]
            kind = next(
                kind
                for kind in answers
                if f'envoy_tollway_usage_{kind}{{namespace="ai",tier="pro"}}' in query
            )
            return [{"value": [0, str(answers[kind])]}]

    monkeypatch.setattr(prometheus, "PrometheusConnect", Prometheus)
    usage = prometheus.tier_usage("http://prometheus", "ai", "pro", 3600)
    assert usage == UsageState(
        reachable=True, consumers=2, requests=30, input_tokens=120000, output_tokens=40000
    )
    assert asked[0] == (
        'count(sum by (consumer) (increase(envoy_tollway_usage_requests{namespace="ai",tier="pro"}[3600s]))'
        " > 0)"
    )


def test_a_model_asleep_at_zero_is_idle_with_its_wake_time_as_the_wait() -> None:
    document = model_deployment(
        "chat",
        **{"spec.autoscaling": {"minReplicas": 0, "maxReplicas": 2, "scaleFromZero": {"wakeSeconds": 45}}},
    )
    document["status"] = {"readyReplicas": 0, "replicas": 0}
    capacity = model_capacity(document)
    assert (capacity.state, capacity.estimated_wait_seconds) == ("idle", 45)
    # Waking: the HPA asked for a replica that is not ready yet.
    document["status"] = {"readyReplicas": 0, "replicas": 1, "conditions": [degraded("False", "AsExpected")]}
    assert model_capacity(document).state == "idle"


def test_a_model_at_zero_whose_wake_fails_is_unavailable_not_idle() -> None:
    document = model_deployment(
        "chat",
        **{"spec.autoscaling": {"minReplicas": 0, "maxReplicas": 2, "scaleFromZero": {"wakeSeconds": 45}}},
    )
    document["status"] = {
        "readyReplicas": 0,
        "replicas": 1,
        "conditions": [degraded("True", "ImagePullBackOff")],
    }
    capacity = model_capacity(document)
    assert (capacity.state, capacity.estimated_wait_seconds) == ("unavailable", None)


def degraded(status: str, reason: str) -> dict[str, str]:
    return {"type": "Degraded", "status": status, "reason": reason, "message": reason}


@pytest.mark.parametrize(
    ("status", "state"),
    [
        ({}, "unknown"),
        ({"readyReplicas": 0, "replicas": 1}, "unavailable"),
        (
            {"readyReplicas": 2, "metrics": {"queueDepth": 0, "observedAt": "2026-11-30T10:00:00Z"}},
            "available",
        ),
        ({"readyReplicas": 2, "metrics": {"queueDepth": 3, "observedAt": "2026-11-30T10:00:00Z"}}, "busy"),
        (
            {"readyReplicas": 4, "metrics": {"queueDepth": 3, "observedAt": "2026-11-30T10:00:00Z"}},
            "at_capacity",
        ),
    ],
)
def test_a_models_capacity_comes_from_its_status_and_never_reaches_envoys_config(
    status: dict[str, Any], state: str
) -> None:
    document = model_deployment(
        "chat", **{"spec.autoscaling": {"maxReplicas": 4, "targets": {"queueDepthPerReplica": 2}}}
    )
    document["status"] = (
        {**status, "metrics": {**status.get("metrics", {}), "estimatedWaitSeconds": 1.26}} if status else {}
    )
    capacity = model_capacity(document)
    assert capacity.state == state and capacity.max_replicas == 4
    assert capacity.estimated_wait_seconds == (1.3 if status else None)
    # The Retry-After steps follow the estimated wait; the room's state never changes Envoy's config.
    quiet = copy.deepcopy(document)
    quiet["status"].pop("readyReplicas", None)
    tier = api_tier("pro")

    def envoy_config(model: dict[str, Any]) -> list[dict[str, Any]]:
        found = translate_gateway("ai", [tier, model], [], NOW).manifests
        return [
            item for item in found if item["kind"] == "Secret" and item["metadata"]["name"].endswith("-envoy")
        ]

    assert envoy_config(quiet) == envoy_config(document)

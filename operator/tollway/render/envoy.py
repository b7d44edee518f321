"""Gateway IR → Envoy's configuration: a bootstrap and the file-based dynamic resources (lds.yaml, cds.yaml).

Envoy watches the directory and reloads listeners and clusters when the files are swapped (a Secret volume
update is an atomic symlink swap), so a tier or key change needs no restart and drops no request.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime
from typing import Any
from urllib.parse import quote

from tollway.api.sla import SLA_LATENCY_BUCKETS_MS
from tollway.ir.gateway import (
    CAPACITY_REREAD_SECONDS,
    NEW_KEY_SECONDS,
    Gateway,
    Hold,
    Model,
    Mtls,
    PromptCheck,
    Runtime,
    Tier,
    Version,
)
from tollway.ir.names import (
    ADDRESS_DESCRIPTOR,
    KEY_SIGNALS,
    MODEL_CLUSTERS,
    NEW_KEYS_SIGNAL,
    RATELIMIT_DOMAIN,
    RATELIMIT_GRPC_PORT,
    TRITON_KEY_HEADER,
    UNAUTHENTICATED_SCOPE,
    USAGE_STAT_PREFIX,
    counter_name,
    gateway_children,
    in_cluster_host,
)
from tollway.render.lua import body_program, gateway_program, hold_program, token_headers_program
from tollway.render.redaction import lua_pattern

CONNECTION_BUFFER_BYTES = 1024 * 1024
"""What Envoy reads ahead of a connection before it stops reading it: a body is buffered whole only on a
route that raises its request's limit (the model's maxRequestBytes), and only once the request got past
the checks made on its headers."""
SMALL_BODY_BYTES = 4096
"""The most the gateway reads of a request that is not an inference (readiness, metadata, gRPC's other
methods): the body program reads each, so that this bounds it."""
CLUSTER_HEADER = "x-tollway-cluster"
LUA_FILTER = "tollway.gateway"
BODY_FILTER = "tollway.body"
TOKEN_HEADERS_FILTER = "tollway.token_headers"
RATELIMIT_CLUSTER = "ratelimit"
REFUSED_CLUSTER = "refused"
"""A cluster with no endpoints: where a request whose answer is already decided (401) is routed, because
Envoy's ratelimit filters count only requests that have a cluster. It never gets there (body.lua answers it
first); if it somehow did, the router would answer 503."""
ADMIN_CLUSTER = "admin"
HOLD_FILTER = "tollway.hold"
HOLD_LISTENER = "hold"
"""An internal listener (no port: only Envoy itself reaches it) whose every answer comes a second late: the
wait between a held request's checks of its model (hold.lua), each wait one request to the `hold|MODEL|TIER`
cluster of its model and tier, whose circuit breaker bounds the requests held at once and whose active
requests are counted."""
HOLD_WAIT = "1s"
MODEL_STAT_TAG = {"tag_name": "model", "regex": rf"^cluster\.{MODEL_CLUSTERS}(([^.|]+)[.|])"}
"""A `model` label on the statistics of a model's clusters (its holds and its Tritons, a tier's own too), so
that Prometheus can sum a model's active requests (render/autoscaling.gateway_expression). The cluster's name
stays a label of its own; the part captured first is taken out of the statistic's name, as is the cluster's
name by Envoy's own tag."""
HOLD_DNS_REFRESH = "1s"
"""How often the clusters of a model that scales to zero look up its pods again (Envoy's default: 5 s): a
woken pod takes requests that much sooner."""
RATELIMIT_TIMEOUT = "0.25s"
UPSTREAM_TIMEOUT = "300s"
"""The longest a model may take to answer (a long generation sends nothing until it is done)."""
CLIENT_TIMEOUTS = {
    "request_headers_timeout": "10s",  # a client that never finishes its headers
    "request_timeout": "60s",  # ... or its body: from its first byte to its last
    "stream_idle_timeout": UPSTREAM_TIMEOUT,  # nothing either way for this long: the model is not answering
}
HTTP_OPTIONS = {
    "common_http_protocol_options": {
        "idle_timeout": "300s",  # a connection with no request in flight
        # x_api_key and x-api-key could be read as one header by one component and two by another
        "headers_with_underscores_action": "REJECT_REQUEST",
    },
    "http2_protocol_options": {
        "max_concurrent_streams": 128,
        # Small windows: a client cannot push much ahead of what the gateway has agreed to read.
        "initial_stream_window_size": 65536,
        "initial_connection_window_size": 1024 * 1024,
    },
}
OPENAI_BASE = "/v1/models"
FEEDBACK_PATH = "/v1/feedback"
CAPACITY_PATH = "/v1/capacity"
FEEDBACK_BYTES = 16384
PUBLIC_BASES = (OPENAI_BASE, "/v2/models")
"""The public API is versioned under /v1; the same routes under /v2 are Triton's own (KServe v2) paths, so
that tritonclient and other KServe clients work unchanged (an alias goes in the model name: "chat:stable").
A model's metadata is under /v2 only: /v1/models/ID is the OpenAI API's model object."""

Config = dict[str, Any]

_TYPE = "type.googleapis.com/envoy."
_HCM = _TYPE + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


TRITON_RETRIES = {
    "retry_on": "connect-failure,refused-stream,reset-before-request",  # never sent, so safe to send again
    "num_retries": 2,
    "retry_host_predicate": [
        {
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": _TYPE + "extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            },
        }
    ],
    "host_selection_retry_max_attempts": 3,
}
"""Which requests to Triton are tried again, on another pod: those no pod has begun to serve."""


OPENAI_ROUTES = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
}
"""The OpenAI API's routes, by the kind of model that answers each (the model is named in the body)."""
OPENAI_COUNTS = {"input": "prompt_tokens", "output": "completion_tokens"}
"""Where an OpenAI response (or the usage comment of a stream, see tollway.openai.server) reports tokens."""


def model_cluster(model: Model, protocol: str = "http") -> str:
    return f"triton-{protocol}|{model.name}"


def tier_cluster(model: Model, tier: Tier, protocol: str = "http") -> str:
    return f"triton-{protocol}|{model.name}|{tier.name}"


def hold_cluster(model: Model, tier: Tier) -> str:
    return f"hold|{model.name}|{tier.name}"


def _callers(gateway: Gateway, model: Model) -> list[Tier]:
    """The tiers that may call `model` (some version of it)."""
    return [tier for tier in gateway.tiers if any(name == model.name for name, _ in tier.allowed)]


def _server_cluster(gateway: Gateway) -> str | None:
    """Where gRPC's server methods (ServerLive, ServerReady, ServerMetadata; asked without a credential) go:
    a model that never scales to zero where there is one, so that they neither wake a model nor find the
    server down while it sleeps."""
    awake = [model for model in gateway.models if model.hold is None] or gateway.models
    return model_cluster(awake[0], "grpc") if awake else None


def _dates(version: Version) -> dict[str, Any]:
    """A version's deprecation, as the Lua program reads it (Unix seconds and the header texts)."""
    # the API admits only header-safe links; quoting them again keeps a header whole whatever reached here
    link = quote(version.link, safe="!#$%&'()*+,-./:;=?@[]^_`{|}~") if version.link else None
    dates: dict[str, Any] = {"announced": version.announced, "link": link}
    if version.sunset is not None:
        moment = datetime.fromtimestamp(version.sunset, UTC)
        dates.update(
            sunset=version.sunset,
            sunset_date=moment.date().isoformat(),
            sunset_http=format_datetime(moment, usegmt=True),
        )
    return {key: value for key, value in dates.items() if value is not None}


def lua_data(gateway: Gateway) -> dict[str, Any]:
    """The table the gateway's Lua program reads as `T`: tiers, models and credentials, in its terms."""
    tiers = {}
    listings: list[list[dict[str, Any]]] = []  # tiers that serve the same models share one (config size)
    for tier in gateway.tiers:
        scopes, clusters, grpc_clusters, openai_clusters, token_caps = {}, {}, {}, {}, {}
        for model in gateway.models:
            held = tier.limits_for(model.name)
            scopes[model.name] = {limit.kind: limit.scope for limit in held.limits}
            if held.token_cap is not None:
                token_caps[model.name] = held.token_cap
            if held.concurrent is not None:
                clusters[model.name] = tier_cluster(model, tier)
                grpc_clusters[model.name] = tier_cluster(model, tier, "grpc")
                if model.openai:
                    openai_clusters[model.name] = tier_cluster(model, tier, "openai")
        tiers[tier.name] = {
            "level": tier.priority_level,
            "fail_open": tier.fail_open,
            "retry_after": tier.retry_after,
            "allowed": {f"{model}@{version}": True for model, version in tier.allowed},
            "scopes": scopes,
            "clusters": clusters,
            "grpc_clusters": grpc_clusters,
            "openai_clusters": openai_clusters,
            "token_caps": token_caps,
            "listing": _interned(listings, model_listing(gateway, tier)),
            "served": sorted({model for model, _ in tier.allowed}),
            "jwt": {"claim": tier.jwt.consumer_claim, "scopes": list(tier.jwt.required_scopes)}
            if tier.jwt
            else None,
            "mtls": list(tier.mtls.allowed_sans) if tier.mtls else None,
            "sampling": _sampling(gateway, tier),
            "per_address": counter_name(tier.name) if tier.per_ip_rpm else None,
            "signals": tier.key_signals is not None,
            "prompt": [_prompt_check(gateway, check) for check in tier.prompt_checks],
        }
        if not tier.cache:  # only then: the config's size grows with the tiers
            tiers[tier.name]["cache_off"] = True
        elif not tier.hits_limited:
            tiers[tier.name]["hits_free"] = True
    data = {
        "capacity_file": gateway.runtime.capacity_file,
        "capacity_seconds": CAPACITY_REREAD_SECONDS,
        "order": [tier.name for tier in gateway.tiers],
        "server_cluster": _server_cluster(gateway),
        "mtls_ports": {str(tier.mtls_port): tier.name for tier in gateway.tiers if tier.mtls_port},
        # the per-address scope of requests without a valid credential (nil: no such limit), and where they
        # are routed so that the request filters count them (they never get there: see REFUSED_CLUSTER)
        "unauthenticated_scope": UNAUTHENTICATED_SCOPE
        if gateway.runtime.unauthenticated_rpm_per_ip
        else None,
        "refused_cluster": REFUSED_CLUSTER,
        # the keys (Secret names) of verified-only tiers whose customers are not verified, with their tier
        "unverified": {
            credential.id: credential.tier for credential in gateway.credentials if credential.unverified
        },
        # suspended keys (Secret names), with why: answered 401 with it
        "suspended": {
            credential.id: credential.suspended
            for credential in gateway.credentials
            if credential.suspended is not None
        },
        "new_key_seconds": NEW_KEY_SECONDS,
        "tiers": tiers,
        "listings": listings,
        "models": {
            model.name: {
                "cluster": model_cluster(model),
                "grpc_cluster": model_cluster(model, "grpc"),
                "aliases": dict(model.aliases),
                "versions": {version.number: _dates(version) for version in model.versions},
                "input": re.sub(r"(\W)", r"%\1", model.input_tokens) if model.input_tokens else None,
                "output": re.sub(r"(\W)", r"%\1", model.output_tokens) if model.output_tokens else None,
                "max_tokens": model.default_max_tokens,
                "usage_output": model.usage_output,
                "max_body": model.max_request_bytes,
                "retry_after": model.retry_after,
                **({"holds": True} if model.hold else {}),  # only then: hold.lua reads what it may hold
                "sample_ppm": _per_million(model.sample_rate) if gateway.runtime.sample_sink else 0,
                "openai": {
                    "kind": model.openai.kind,
                    "path": OPENAI_ROUTES[model.openai.kind],
                    "cluster": model_cluster(model, "openai"),
                    "max_tokens": model.openai.default_max_tokens,
                    **OPENAI_COUNTS,
                    # only when shared: the config's size grows with the models
                    **({"shared_cache": True} if model.openai.shared_cache else {}),
                }
                if model.openai
                else None,
            }
            for model in gateway.models
        },
        "credentials": {
            credential.key: {
                "id": credential.id,
                "consumer": credential.consumer,
                "tier": credential.tier,
                "expires": credential.expires_at,
                "created": credential.created_at,
            }
            for credential in gateway.credentials
        },
    }
    return data


def _prompt_check(gateway: Gateway, check: PromptCheck) -> dict[str, Any]:
    """A prompt check as the body program runs it: a pattern, or where and how to ask a guardrail model."""
    found: dict[str, Any] = {
        "name": check.name,
        "pattern": check.pattern,
        "refuse": check.refuse,
        "models": {model: True for model in check.models} if check.models else None,
    }
    if check.guardrail is not None:
        model = next(model for model in gateway.models if model.name == check.guardrail.model)
        found["guard"] = {
            "cluster": model_cluster(model),
            "path": f"/v2/models/{model.name}/infer",
            "timeout": check.guardrail.timeout_ms,
            "most": model.max_request_bytes,
        }
    return found


def _per_million(rate: str) -> int:
    return int(Decimal(rate) * 1_000_000)


def _sampling(gateway: Gateway, tier: Tier) -> dict[str, Any]:
    """A tier's sampling as the Lua programs read it: its rate in parts per million (None: each model's; 0
    when the gateway has no sample sink), how much of a body a record keeps, and what is masked in it."""
    sampling = tier.sampling
    rate = None if sampling.rate is None else _per_million(sampling.rate)
    redaction = sampling.redaction
    return {
        "ppm": rate if gateway.runtime.sample_sink else 0,
        "most": sampling.max_body_bytes,
        "redact": {
            "emails": redaction.emails,
            "cards": redaction.cards,
            "patterns": [lua_pattern(pattern) for pattern in redaction.patterns],
        },
    }


def _day(seconds: int | None) -> str | None:
    return datetime.fromtimestamp(seconds, UTC).date().isoformat() if seconds is not None else None


def _interned(values: list[Any], value: Any) -> int:
    """The (1-based, Lua's) position of `value` in `values`, added at the end when it is not there yet."""
    if value not in values:
        values.append(value)
    return values.index(value) + 1


def model_listing(gateway: Gateway, tier: Tier) -> list[dict[str, Any]]:
    """GET /v1/models for one tier: every name its consumers may put in a request's `model` (each model,
    alias and pinned version it may use), as OpenAI's model objects (JSON text, joined by the Lua program)
    with Tollway's facts under "tollway"; each with its version's sunset, after which the program leaves it
    out. `created` is 0: Tollway does not know when a model was made."""
    allowed = set(tier.allowed)
    found = []
    for model in gateway.models:
        dates = {version.number: version for version in model.versions}
        names: list[tuple[str, str | None, int]] = [(model.name, "latest", dict(model.aliases)["latest"])]
        names += [
            (f"{model.name}:{alias}", alias, number) for alias, number in model.aliases if alias != "latest"
        ]
        names += [(f"{model.name}@{version.number}", None, version.number) for version in model.versions]
        for name, alias, number in names:
            if (model.name, number) not in allowed:
                continue
            version = dates[number]
            facts = {
                "model": model.name,
                "version": number,
                "alias": alias,
                "api": model.openai.kind if model.openai else "kserve",
                "deprecated": _day(version.announced),
                "sunset": _day(version.sunset),
            }
            entry = {
                "id": name,
                "object": "model",
                "created": 0,
                "owned_by": gateway.namespace,
                "tollway": facts,
            }
            item: dict[str, Any] = {"id": name, "json": json.dumps(entry, separators=(",", ":"))}
            if version.sunset is not None:
                item["sunset"] = version.sunset
            found.append(item)
    return found


def body_data(data: dict[str, Any]) -> dict[str, Any]:
    """The part of `lua_data` the body program reads: it learns the caller from dynamic metadata, and
    answers no listing."""
    tiers = {
        name: {key: value for key, value in tier.items() if key not in ("listing", "served")}
        for name, tier in data["tiers"].items()
    }
    return {"tiers": tiers, "models": data["models"]}  # no listings either


ROUTE_KINDS = (
    ("/infer", "infer"),
    ("/generate", "generate"),
    ("/generate_stream", "generate"),
    ("/ready", "ready"),
    ("", "metadata"),
)
"""Each path below a model version's base, and what the Lua programs make of it: inference (KServe v2's
infer, Triton's generate extension: a text in, a text out, streamed by generate_stream) or not."""


def _routes(gateway: Gateway, now: datetime) -> list[Config]:
    healthy = {"status": 200, "body": {"inline_string": '{"status":"ok"}'}}
    routes: list[Config] = [
        {"match": {"path": path}, "direct_response": healthy}
        for path in ("/healthz", "/v2/health/ready", "/v2/health/live")
    ]
    for model in gateway.models:
        names: list[tuple[str, int]] = [
            (f"{model.name}{colon}{alias}", version)
            for alias, version in model.aliases
            for colon in (":", "%3A", "%3a")  # tritonclient percent-encodes the ':' in "chat:stable"
        ]
        names.insert(0, (model.name, dict(model.aliases)["latest"]))
        paths = []
        for base in PUBLIC_BASES:
            paths += [(f"{base}/{name}", version) for name, version in names]
            paths += [
                (f"{base}/{model.name}/versions/{entry.number}", entry.number) for entry in model.versions
            ]
        for path, version in paths:
            upstream = f"/v2/models/{model.name}/versions/{version}"
            dates = _dates(next(item for item in model.versions if item.number == version))
            for suffix, kind in ROUTE_KINDS:
                if kind == "metadata" and path.count("/") == 3 and path.startswith(OPENAI_BASE):
                    continue  # /v1/models/ID is the OpenAI model object
                meta = {"kind": kind, "model": model.name, "version": version}
                route: Config = {
                    "match": {"path": path + suffix},
                    "metadata": {"filter_metadata": {LUA_FILTER: meta}},
                }
                if "sunset" in dates and dates["sunset"] <= now.timestamp():
                    body = f"this model version was switched off on {dates['sunset_date']}"
                    route["direct_response"] = {"status": 410, "body": {"inline_string": body}}
                else:
                    route["route"] = {
                        "cluster_header": CLUSTER_HEADER,
                        "prefix_rewrite": upstream + suffix,
                        "timeout": UPSTREAM_TIMEOUT,
                    }
                    route["request_body_buffer_limit"] = (
                        model.max_request_bytes if kind in {"infer", "generate"} else SMALL_BODY_BYTES
                    )
                routes.append(route)
    routes += _openai_routes(gateway)
    largest = max((model.max_request_bytes for model in gateway.models), default=SMALL_BODY_BYTES)
    # gRPC names the model inside the body: inference gets the largest model's limit (each model's is checked
    # in Lua), every other method a small one.
    for match, limit in (
        ({"path": "/inference.GRPCInferenceService/ModelInfer", "grpc": {}}, largest),
        ({"path": "/inference.GRPCInferenceService/ModelStreamInfer", "grpc": {}}, largest),
        ({"prefix": "/inference.GRPCInferenceService/", "grpc": {}}, SMALL_BODY_BYTES),
    ):
        routes.append(
            {
                "match": match,
                "metadata": {"filter_metadata": {LUA_FILTER: {"kind": "grpc"}}},
                "route": {
                    "cluster_header": CLUSTER_HEADER,
                    "timeout": UPSTREAM_TIMEOUT,
                },
                "request_body_buffer_limit": limit,
            }
        )
    routes.append(
        {
            "match": {"prefix": "/"},
            "direct_response": {
                "status": 404,
                "body": {"inline_string": "no such route: see /v1/models/MODEL/infer"},
            },
        }
    )
    return routes


def _openai_routes(gateway: Gateway) -> list[Config]:
    """The OpenAI API: POST routes whose body names the model (each takes the largest body of the models that
    answer it; the Lua program checks each model's own limit), and the model list and objects, which the
    Lua program answers itself (the 404 behind them answers only if it did not)."""
    routes: list[Config] = []
    for kind, path in OPENAI_ROUTES.items():
        sizes = [
            model.max_request_bytes for model in gateway.models if model.openai and model.openai.kind == kind
        ]
        routes.append(
            {
                "match": {"path": path},
                "metadata": {"filter_metadata": {LUA_FILTER: {"kind": "openai"}}},
                "route": {
                    "cluster_header": CLUSTER_HEADER,
                    "timeout": UPSTREAM_TIMEOUT,
                },
                "request_body_buffer_limit": max(sizes, default=SMALL_BODY_BYTES),
            }
        )
    # Feedback is read and checked by the Lua programs (400, 403, 404 or 429 there); what gets through was
    # recorded, and this answers it.
    recorded = {"status": 202, "body": {"inline_string": '{"status":"recorded"}'}}
    routes.append(
        {
            "match": {
                "path": FEEDBACK_PATH,
                "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
            },
            "metadata": {"filter_metadata": {LUA_FILTER: {"kind": "feedback"}}},
            "direct_response": recorded,
            "request_body_buffer_limit": FEEDBACK_BYTES,
        }
    )
    unanswered = {"status": 404, "body": {"inline_string": "no such model"}}
    for match, kind in (
        ({"path": OPENAI_BASE}, "models"),
        ({"safe_regex": {"regex": f"{OPENAI_BASE}/[^/]+"}}, "model"),
        ({"path": CAPACITY_PATH}, "capacity"),
    ):
        routes.append(
            {
                "match": match,
                "metadata": {"filter_metadata": {LUA_FILTER: {"kind": kind}}},
                "direct_response": unanswered,
            }
        )
    return routes


def _metadata_action(descriptor_key: str, metadata_key: str) -> Config:
    """A descriptor entry whose value is the Lua programs' metadata `metadata_key` (dropped when unset)."""
    return {
        "metadata": {
            "descriptor_key": descriptor_key,
            "metadata_key": _meta_key(metadata_key),
            "source": "DYNAMIC",
        }
    }


def _limit_actions(limit: str, scope_key: str) -> list[Config]:
    """The descriptor of one limit: the limit's scope (from the metadata `scope_key`) and the consumer, in
    the counters' form."""
    return [_metadata_action(limit, scope_key), _metadata_action("consumer", "counter_consumer")]


def _ratelimit_service(filter_name: str, rate_limits: list[Config], **options: Any) -> Config:
    return {
        "name": filter_name,
        "typed_config": {
            "@type": _TYPE + "extensions.filters.http.ratelimit.v3.RateLimit",
            "domain": RATELIMIT_DOMAIN,
            "timeout": RATELIMIT_TIMEOUT,
            **options,
            "rate_limit_service": {
                "grpc_service": {"envoy_grpc": {"cluster_name": RATELIMIT_CLUSTER}},
                "transport_api_version": "V3",
            },
            "rate_limits": rate_limits,
        },
    }


def _rate_limit_filter(
    name: str,
    kind_set: tuple[str, ...],
    mode: str,
    fail_open: bool,
    *,
    tokens: bool,
    stage: str = "",
    per_address: bool = False,
) -> Config:
    """Counts `kind_set` for the requests whose Lua program set `<kind><stage>_<mode>` (the limit's scope);
    token limits count each request's reservation. `per_address`: also the request's client address, for
    those whose Lua program set `address_<mode>` (its scope), in the same call."""
    rate_limits: list[Config] = []
    for limit in kind_set:
        entry: Config = {"actions": _limit_actions(limit, f"{limit}{stage}_{mode}")}
        if tokens:
            entry["hits_addend"] = {"format": "%DYNAMIC_METADATA(tollway:reserve)%"}
        rate_limits.append(entry)
    if per_address:
        address = [_metadata_action(ADDRESS_DESCRIPTOR, f"address_{mode}"), {"remote_address": {}}]
        rate_limits.append({"actions": address})
    return _ratelimit_service(
        name,
        rate_limits,
        failure_mode_deny=not fail_open,
        rate_limited_as_resource_exhausted=True,
        enable_x_ratelimit_headers="DRAFT_VERSION_03",
    )


USAGE_SOURCES = {
    "usage_requests": ("counter_tier", None),
    "usage_input": ("counter_tier", "input_tokens"),
    "usage_output": ("counter_tier", "output_tokens"),
    "usage_unreported": ("unreported", None),
}
"""Each usage counter: the Lua program's metadata whose value (the tier, as counters name it) it is sent
with, and the metadata that holds how much to count (None: one per request). Consumers too are counted as
`counter_consumer`: names.counter_name's form."""


def _stream_end_filter() -> Config:
    """At most one call to the ratelimit service when a request ends, never delaying or refusing it (fail
    open, no headers): the tokens it used beyond its reservation, charged to its token limits (either fail
    mode's: a request has one's metadata only). The Lua program sets `settle` only when there is something to
    charge, and with no descriptor left Envoy makes no call."""
    settled = [
        {
            "actions": _limit_actions(limit, f"{limit}_{mode}"),
            "hits_addend": {"format": "%DYNAMIC_METADATA(tollway:settle)%"},
            "apply_on_stream_done": True,
        }
        for limit in ("tpm", "tpd")
        for mode in ("open", "closed")
    ]
    return _ratelimit_service("tollway.settle", settled + _key_signal_limits(), failure_mode_deny=False)


def _key_signal_limits() -> list[Config]:
    """The key-compromise signals of a request whose tier counts them (its Lua program set `signal_tier`):
    its client network (/24, /48) and user-agent product, per consumer, sent when it ends with the
    settlement (render.ratelimit._key_signals: never refused, no headers)."""
    counted = {
        "masked_remote_address": {
            "masked_remote_address": {"v4_prefix_mask_len": 24, "v6_prefix_mask_len": 48}
        },
        "agent": _metadata_action("agent", "agent"),
    }
    per_consumer = [
        [
            _metadata_action(signal, "signal_tier"),
            _metadata_action("consumer", "counter_consumer"),
            counted[value],
        ]
        for signal, value in KEY_SIGNALS.items()
    ]
    # a new key's network (set for new keys only), then the key: distinct new keys per network
    per_network = [
        _metadata_action(NEW_KEYS_SIGNAL, "signal_tier"),
        _metadata_action("network", "new_key_network"),
        _metadata_action("consumer", "counter_consumer"),
    ]
    return [{"actions": actions, "apply_on_stream_done": True} for actions in [*per_consumer, per_network]]


ANSWERED_COUNTS = {
    "usage_requests": None,
    "usage_input": "input_tokens",
    "usage_output": "output_tokens",
    "usage_unreported": "unreported",
}
"""What a request a model answered adds to each usage counter: the metadata holding how much (None: one)."""
ABANDONED_COUNTS = {
    "usage_requests": None,
    "usage_input": "left_input",
    "usage_output": "left_output",
    "usage_unreported": "left_unreported",
}
"""What a request whose caller left while a model served it adds: what the model had produced by then, as a
stream's usage comments reported it (stream.lua), or else its estimate as output, unreported (leaving early
never costs less than the request could have used)."""
ABANDONED = (
    "has(upstream.address) && has(metadata.filter_metadata.tollway.left_output)"
    " && !has(metadata.filter_metadata.tollway.from_model)"
)
"""A request that reached a model (an upstream host was picked), could be charged, and whose answer never
reached the end of the gateway's Lua program."""


CACHED_COUNTS = {"usage_cached_input": "cached_input", "usage_cached_output": "cached_output"}
"""What an answer from a model's answer cache adds to the cached-token counters, besides the usage counters
(which count its tokens like any other's): the cost rules price these at the tier's cached price."""
CACHE_HIT = "metadata.filter_metadata.tollway.cache == 'hit'"


def _present(key: str) -> Config:
    """An access log filter: the Lua programs set `key`."""
    matcher = {"filter": "tollway", "path": [{"key": key}], "value": {"present_match": True}}
    return {"metadata_filter": {"matcher": matcher, "match_if_key_not_found": False}}


def _usage_logs() -> list[Config]:
    """The usage counters, per tier and consumer, as Envoy's own statistics (envoy_tollway_usage_*): counted
    when each request is logged, so usage costs no call to the ratelimit service. Counted: what a caller
    sent and a model answered (the Lua program marks it `from_model`), and what a model was serving when its
    caller left (the connection closed or the stream reset); never what the gateway refused, nor what failed
    on the gateway's side of the model. The tags come from the Lua program's metadata (names of configured
    tiers and consumers, never a value a client writes), so their number is bounded by the configuration.
    Also the streams' time to first token and per output token (envoy_tollway_stream_*_ms), by model,
    version and tier; and what the models' answer caches said of each OpenAI answer (envoy_tollway_cache_
    answers, by model, version, tier and result: hit, miss, skip or off) with the tokens of the hits."""
    abandoned = {
        "and_filter": {
            "filters": [
                {"response_flag_filter": {"flags": ["DC", "DR"]}},  # the client's connection or stream
                {
                    "extension_filter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typed_config": {
                            "@type": _TYPE + "extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                            "expression": ABANDONED,
                        },
                    }
                },
            ]
        }
    }
    tags, by_model = _tags("tier", "consumer"), _tags("model", "version", "tier")
    return [
        *(
            _stats_log(when, counters=[*_counters(counts, tags), *_counters(_per_model(counts), by_model)])
            for when, counts in ((_present("from_model"), ANSWERED_COUNTS), (abandoned, ABANDONED_COUNTS))
        ),
        *(_stats_log(_present(key), histograms=[_histogram(key)]) for key in STREAM_TIMES),
        _stats_log(
            {"and_filter": {"filters": [_present("from_model"), _cel(CACHE_HIT)]}},
            counters=[
                *_counters(CACHED_COUNTS, tags),
                *_counters(_per_model(CACHED_COUNTS, "cached_"), by_model),
            ],
        ),
        _stats_log(
            _present("cache"),
            counters=[
                {
                    "stat": {"name": "cache_answers", "tags": _tags("model", "version", "tier", "cache")},
                    "value_fixed": 1,
                }
            ],
        ),
    ]


def _per_model(counts: Mapping[str, str | None], kind: str = "") -> dict[str, str | None]:
    """The token counts of `counts` again, as the per-model counters (envoy_tollway_model_*_tokens, by model,
    version and tier) the cost rules read: the same numbers a tier is charged, set against a model's cost.
    `kind`: "cached_" for the counts of cached tokens (envoy_tollway_model_cached_*_tokens)."""
    return {f"model_{kind}{way}_tokens": counts[f"usage_{kind}{way}"] for way in ("input", "output")}


SLA_COUNTED = "has(metadata.filter_metadata.tollway.tier) && response.code != 429 && response.code != 0"
"""A request that counts for its tier's availability: its caller was authenticated (so it has a tier), it
was not refused by its own limits (429: requests, tokens, concurrency), and it was answered (0: the client
left before any answer)."""
SLA_LATENCY = "%COMMON_DURATION(DS_RX_BEG:DS_TX_BEG:ms)%"
"""From the request's first byte to its answer's first byte: the whole answer of a unary request (a model
sends its headers with its answer), the first token of a stream, the refusal the gateway makes itself."""


def _cel(expression: str) -> Config:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": _TYPE + "extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _sla_logs() -> list[Config]:
    """What a tier's SLA is measured on, where its consumers stand: its counted requests, those answered with
    a 5xx (by a model or by the gateway itself), and the time to the first byte of their answers
    (envoy_tollway_sla_*); see SLA_COUNTED."""
    tags = _tags("tier", "consumer")
    latency = {
        "stat": {"name": "sla_latency_ms", "tags": _tags("tier")},
        "unit": "Milliseconds",
        "value_format": SLA_LATENCY,
    }
    return [
        _stats_log(
            _cel(SLA_COUNTED),
            counters=[{"stat": {"name": "sla_requests", "tags": tags}, "value_fixed": 1}],
            histograms=[latency],
        ),
        _stats_log(
            _cel(SLA_COUNTED + " && response.code >= 500"),
            counters=[{"stat": {"name": "sla_errors", "tags": tags}, "value_fixed": 1}],
        ),
    ]


QUALITY_COUNTS = {
    "regenerations": "regeneration",
    "content_filtered": "content_filtered",
    "sampled": "sample",
}
"""Per model version and tier, a request the Lua programs marked (counter → metadata): the same prompt from
the same consumer to the same version within minutes, an answer that says its content was filtered, a
request recorded for quality review."""


def _quality_logs() -> list[Config]:
    """The quality signals per model version (envoy_tollway_*): the counts above, the consumers' ratings
    (feedback, by rating) that the gateway accepted (its route answers 202), and the prompts a tier's prompt
    check matched (prompt_matches, by check)."""
    tags = _tags("model", "version", "tier")
    accepted = {"and_filter": {"filters": [_present("feedback_rating"), _status_is("EQ", 202)]}}
    rated = {
        "stat": {"name": "feedback", "tags": [*tags, *_tags_named(rating="feedback_rating")]},
        "value_fixed": 1,
    }
    matched = {"stat": {"name": "prompt_matches", "tags": [*tags, *_tags_named(pattern="prompt_match")]}}
    unjudged = {
        "stat": {"name": "prompt_check_errors", "tags": [*tags, *_tags_named(pattern="prompt_check_error")]}
    }
    # a regeneration counted per consumer too: many of them is automation (a scraping alert reads it)
    repeats = {"stat": {"name": "consumer_repeats", "tags": _tags("tier", "consumer")}, "value_fixed": 1}
    return [
        *(
            _stats_log(
                _present(key),
                counters=[
                    {"stat": {"name": name, "tags": tags}, "value_fixed": 1},
                    *([repeats] if name == "regenerations" else []),
                ],
            )
            for name, key in QUALITY_COUNTS.items()
        ),
        _stats_log(accepted, counters=[rated]),
        # a prompt a tier's check found something in (by the first check that did)
        _stats_log(_present("prompt_match"), counters=[{**matched, "value_fixed": 1}]),
        # a prompt a guardrail model could not judge (by the first check that could not)
        _stats_log(_present("prompt_check_error"), counters=[{**unjudged, "value_fixed": 1}]),
    ]


SAMPLE_LOG_NAME = "tollway.samples"
SAMPLE_CLUSTER = "samples"
SAMPLE_ATTRIBUTES = {
    "tollway.record": None,
    "request_id": "%REQ(X-REQUEST-ID)%",
    "namespace": None,
    "model": "%DYNAMIC_METADATA(tollway:model)%",
    "version": "%DYNAMIC_METADATA(tollway:version)%",
    "tier": "%DYNAMIC_METADATA(tollway:tier)%",
    "consumer": "%DYNAMIC_METADATA(tollway:consumer)%",
    "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
    "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",
    "status": "%RESPONSE_CODE%",
    "duration_ms": "%DURATION%",
    "ttft_ms": "%DYNAMIC_METADATA(tollway:ttft_ms)%",
    "input_tokens": "%DYNAMIC_METADATA(tollway:input_tokens)%",
    "output_tokens": "%DYNAMIC_METADATA(tollway:output_tokens)%",
    "regeneration": "%DYNAMIC_METADATA(tollway:regeneration)%",
    "content_filtered": "%DYNAMIC_METADATA(tollway:content_filtered)%",
    "prompt_flags": "%DYNAMIC_METADATA(tollway:prompt_flags)%",
    "request_cut": "%DYNAMIC_METADATA(tollway:sample_request_cut)%",
    "response_cut": "%DYNAMIC_METADATA(tollway:sample_response_cut)%",
}
"""What a sample record says besides the bodies (None: filled in per record kind and gateway). Envoy writes
"-" for what a request has not (a ttft_ms of a unary answer)."""
FEEDBACK_ATTRIBUTES = {
    "tollway.record": None,
    "request_id": "%DYNAMIC_METADATA(tollway:feedback_for)%",
    "feedback_request_id": "%REQ(X-REQUEST-ID)%",
    "namespace": None,
    "model": "%DYNAMIC_METADATA(tollway:model)%",
    "version": "%DYNAMIC_METADATA(tollway:version)%",
    "tier": "%DYNAMIC_METADATA(tollway:tier)%",
    "consumer": "%DYNAMIC_METADATA(tollway:consumer)%",
    "rating": "%DYNAMIC_METADATA(tollway:feedback_rating)%",
}
"""What a feedback record says: `request_id` is the rated answer's, so that it joins that answer's sample."""


def _otlp_log(
    gateway: Gateway, kind: str, when: Config, attributes: dict[str, str | None], body: Config
) -> Config:
    fixed = {"tollway.record": kind, "namespace": gateway.namespace}
    values = [
        {"key": key, "value": {"string_value": fixed[key] if value is None else value}}
        for key, value in attributes.items()
    ]
    return {
        "name": "envoy.access_loggers.open_telemetry",
        "filter": when,
        "typed_config": {
            "@type": _TYPE + "extensions.access_loggers.open_telemetry.v3.OpenTelemetryAccessLogConfig",
            "common_config": {
                "log_name": SAMPLE_LOG_NAME,
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": SAMPLE_CLUSTER}},
            },
            "body": body,
            "attributes": {"values": values},
            "formatters": [REQ_WITHOUT_QUERY],
        },
    }


def _sample_logs(gateway: Gateway) -> list[Config]:
    """The quality samples and the feedback, as OpenTelemetry log records to the sample sink (over OTLP/gRPC,
    batched and sent apart from the requests: a sink that is down loses records, never delays a request).
    A sample's body holds the request and the answer as the Lua programs kept them (cut, masked); headers,
    and with them credentials, are never part of it."""
    if gateway.runtime.sample_sink is None:
        return []
    bodies = {
        "kvlist_value": {
            "values": [
                {"key": "request", "value": {"string_value": "%DYNAMIC_METADATA(tollway:sample_request)%"}},
                {"key": "response", "value": {"string_value": "%DYNAMIC_METADATA(tollway:sample_response)%"}},
            ]
        }
    }
    comment = {"string_value": "%DYNAMIC_METADATA(tollway:feedback_comment)%"}
    accepted = {"and_filter": {"filters": [_present("feedback_rating"), _status_is("EQ", 202)]}}
    return [
        _otlp_log(gateway, "sample", _present("sample"), SAMPLE_ATTRIBUTES, bodies),
        _otlp_log(gateway, "feedback", accepted, FEEDBACK_ATTRIBUTES, comment),
    ]


STREAM_TIMES = {"ttft_ms": "stream_ttft_ms", "tpot_ms": "stream_tpot_ms"}
"""The Lua program's per-stream times (metadata) → their histograms: the time from the request to its first
token, and the mean time per output token after it."""


def _tags(*keys: str) -> list[Config]:
    return _tags_named(**{key: key for key in keys})


def _tags_named(**keys: str) -> list[Config]:
    """Tags (tag name → the metadata key that holds its value)."""
    return [
        {"name": name, "value_format": f"%DYNAMIC_METADATA(tollway:{key})%"} for name, key in keys.items()
    ]


def _counters(counts: Mapping[str, str | None], tags: list[Config]) -> list[Config]:
    """Counters (counter → metadata holding how much, None: one) with `tags`."""
    found = []
    for kind, metadata in counts.items():
        counter: Config = {"stat": {"name": kind, "tags": tags}}
        if metadata is None:
            counter["value_fixed"] = 1
        else:
            counter["value_format"] = f"%DYNAMIC_METADATA(tollway:{metadata})%"
        found.append(counter)
    return found


def _histogram(key: str) -> Config:
    return {
        "stat": {"name": STREAM_TIMES[key], "tags": _tags("model", "version", "tier")},
        "unit": "Milliseconds",
        "value_format": f"%DYNAMIC_METADATA(tollway:{key})%",
    }


def _stats_log(when: Config, counters: Sequence[Config] = (), histograms: Sequence[Config] = ()) -> Config:
    """A stats access logger that adds to `counters` and `histograms` for the requests `when` selects."""
    config: Config = {
        "@type": _TYPE + "extensions.access_loggers.stats.v3.Config",
        "stats_scope": {"prefix": USAGE_STAT_PREFIX},
    }
    if counters:
        config["counters"] = list(counters)
    if histograms:
        config["histograms"] = list(histograms)
    return {"name": "envoy.access_loggers.stats", "filter": when, "typed_config": config}


def _meta_key(key: str) -> Config:
    return {"key": "tollway", "path": [{"key": key}]}


def _lua_filter(name: str, code: str) -> Config:
    return {
        "name": name,
        "typed_config": {
            "@type": _TYPE + "extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": code},
        },
    }


def _jwt_filter(gateway: Gateway) -> list[Config]:
    providers = {}
    for tier in gateway.tiers:
        if tier.jwt is None:
            continue
        providers[tier.name] = {
            "issuer": tier.jwt.issuer,
            "audiences": list(tier.jwt.audiences),
            "remote_jwks": {
                "http_uri": {"uri": tier.jwt.jwks_uri, "cluster": f"jwks|{tier.name}", "timeout": "5s"},
                "cache_duration": "300s",
                "async_fetch": {"fast_listener": False},
                "retry_policy": {"num_retries": 3},
            },
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
            "payload_in_metadata": tier.name,
            "forward": False,
            # A token without exp, or valid for longer than this, would be a credential nobody can revoke.
            "require_expiration": True,
            "max_lifetime": f"{tier.jwt.max_lifetime_seconds}s",
        }
    if not providers:
        return []
    requirement: Config = {
        "requires_any": {
            "requirements": [{"provider_name": name} for name in providers]
            + [{"allow_missing_or_failed": {}}]
        }
    }
    return [
        {
            "name": "envoy.filters.http.jwt_authn",
            "typed_config": {
                "@type": _TYPE + "extensions.filters.http.jwt_authn.v3.JwtAuthentication",
                "providers": providers,
                "rules": [{"match": {"prefix": "/"}, "requires": requirement}],
            },
        }
    ]


ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    410: "not_found_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
}
"""The `type` of an error object, as the OpenAI API words it, by status (any other 4xx: invalid_request_error,
5xx: server_error)."""


def _error_format(error_type: str) -> Config:
    message = (
        '{"error":{"code":%RESPONSE_CODE%,"type":"' + error_type + '","message":"%LOCAL_REPLY_BODY%"}}\n'
    )
    return {"text_format_source": {"inline_string": message}, "content_type": "application/json"}


def _status_is(op: str, status: int) -> Config:
    value = {"default_value": status, "runtime_key": f"tollway.local_reply.{op.lower()}_{status}"}
    return {"status_code_filter": {"comparison": {"op": op, "value": value}}}


def _local_reply() -> Config:
    """Every reply Envoy makes itself (401, 403, 404, 410, 429, 503) as an error object in the OpenAI API's
    form, {"error": {"code", "type", "message"}} (the first mapper that matches a reply applies)."""
    limited = _error_format(ERROR_TYPES[429])
    as_written = {
        "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
        "content_type": "application/json",
    }
    mappers: list[Config] = [
        # what is no error goes as written: health checks, and the model lists the Lua program answers
        {"filter": _status_is("LE", 399), "body_format_override": as_written},
        {
            "filter": {"response_flag_filter": {"flags": ["UO"]}},
            "status_code": 429,
            "body": {"inline_string": "concurrent request limit of the tier reached"},
            "body_format_override": limited,
        },
        *(
            {
                "filter": _cel(f"response.code_details == 'rbac_access_denied_matched_policy[{policy}]'"),
                "body": {"inline_string": message},
                "body_format_override": _error_format(ERROR_TYPES[403]),
            }
            for policy, message in NETWORK_REFUSALS.items()
        ),
        {
            "filter": {"response_flag_filter": {"flags": ["RL"]}},  # the ratelimit filters' 429s
            "body": {"inline_string": "rate limit exceeded"},
            "body_format_override": limited,
        },
    ]
    mappers += [
        {"filter": _status_is("EQ", status), "body_format_override": _error_format(error_type)}
        for status, error_type in ERROR_TYPES.items()
    ]
    mappers.append({"filter": _status_is("GE", 500), "body_format_override": _error_format("server_error")})
    return {"mappers": mappers, "body_format": _error_format("invalid_request_error")}


NO_CLIENT = {"address_prefix": "0.0.0.0", "prefix_len": 32}
"""An address range no client connects from."""

REQ_WITHOUT_QUERY = {
    "name": "envoy.formatter.req_without_query",
    "typed_config": {"@type": _TYPE + "extensions.formatter.req_without_query.v3.ReqWithoutQuery"},
}
"""The formatter extension behind %REQ_WITHOUT_QUERY(...)%."""

ACCESS_LOG_FIELDS = {
    "time": "%START_TIME%",
    "client_ip": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",  # as trusted: see _client_address
    "method": "%REQ(:METHOD)%",
    "path": "%REQ_WITHOUT_QUERY(X-ENVOY-ORIGINAL-PATH?:PATH)%",  # a query may hold what nobody should log
    "status": "%RESPONSE_CODE%",
    "flags": "%RESPONSE_FLAGS%",
    "duration_ms": "%DURATION%",
    "upstream_ms": "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
    "consumer": "%DYNAMIC_METADATA(tollway:consumer)%",
    "credential": "%DYNAMIC_METADATA(tollway:credential)%",
    "tier": "%DYNAMIC_METADATA(tollway:tier)%",
    "model": "%DYNAMIC_METADATA(tollway:model)%",
    "version": "%DYNAMIC_METADATA(tollway:version)%",
    "input_tokens": "%DYNAMIC_METADATA(tollway:input_tokens)%",
    "output_tokens": "%DYNAMIC_METADATA(tollway:output_tokens)%",
    "held_ms": "%DYNAMIC_METADATA(tollway:held_ms)%",  # how long its model's wake from zero kept it
    "request_id": "%REQ(X-REQUEST-ID)%",
}
"""What each request logs: who, what, how it went; never a credential."""


DENIED_NETWORKS = "tollway.denied_networks"
TIER_NETWORKS = "tollway.tier_networks"
NETWORK_REFUSALS = {
    DENIED_NETWORKS: "requests from this network are refused",
    TIER_NETWORKS: "your tier does not accept requests from this network",
}
"""What a caller refused by each network filter is told (the filter's name is its one policy's name)."""


def _cidr(network: str) -> Config:
    parsed = ipaddress.ip_network(network)
    return {"address_prefix": str(parsed.network_address), "prefix_len": parsed.prefixlen}


def _from_any(networks: Sequence[str]) -> Config:
    """An RBAC principal: the client address (as the gateway trusts it, see _client_address) is in one of
    `networks`."""
    return {"or_ids": {"ids": [{"remote_ip": _cidr(network)} for network in networks]}}


def _denied_networks(gateway: Gateway) -> list[Config]:
    return [_from_any(gateway.denied_cidrs)] if gateway.denied_cidrs else []


def _tier_networks(gateway: Gateway) -> list[Config]:
    """Per tier with allowed networks: a caller of that tier (the headers program's metadata) from outside."""
    return [
        {
            "and_ids": {
                "ids": [
                    {
                        "metadata": {
                            "filter": "tollway",
                            "path": [{"key": "tier"}],
                            "value": {"string_match": {"exact": tier.name}},
                        }
                    },
                    {"not_id": _from_any(tier.allowed_cidrs)},
                ]
            }
        }
        for tier in gateway.tiers
        if tier.allowed_cidrs
    ]


def _network_rules(name: str, principals: list[Config]) -> list[Config]:
    """An RBAC filter that answers 403 to the requests any of `principals` matches; none without any."""
    if not principals:
        return []
    policy = {"permissions": [{"any": True}], "principals": principals}
    return [
        {
            "name": name,
            "typed_config": {
                "@type": _TYPE + "extensions.filters.http.rbac.v3.RBAC",
                "rules": {"action": "DENY", "policies": {name: policy}},
            },
        }
    ]


def http_filters(gateway: Gateway) -> list[Config]:
    """The gateway's HTTP filters in the order Envoy runs them on a request (responses pass them in reverse).
    Each one relies on what the ones before it did, so the order is the design: change it here only."""
    data = lua_data(gateway)
    return [
        # Refuses the namespace's denied networks (its deny-list Secrets) before anything else is read.
        *_network_rules(DENIED_NETWORKS, _denied_networks(gateway)),
        # Verifies JWTs and leaves each valid token's payload in dynamic metadata (allows missing tokens:
        # an API key or a client certificate may authenticate instead).
        *_jwt_filter(gateway),
        # On the request's headers alone: authenticates, and for HTTP (whose route names the model)
        # authorizes and routes (sets the cluster header); everything below reads the metadata it sets. On
        # the response: settlement and headers.
        _lua_filter(LUA_FILTER, gateway_program(data)),
        # The tiers' allowed networks: a caller of such a tier (known now) from anywhere else is refused.
        *_network_rules(TIER_NETWORKS, _tier_networks(gateway)),
        # Requests per minute and day, and per minute per client address (a tier's, and callers' without a
        # valid credential: the headers program left their 401 to body.lua, so that this counts them first),
        # each counter in the filter its tier's fail-open setting selects (failed credentials: open). An
        # over-limit request is refused here, before its body is read.
        *(
            _rate_limit_filter(
                f"tollway.requests.{mode}", ("rpm", "rpd"), mode, fail_open, tokens=False, per_address=True
            )
            for mode, fail_open in (("open", True), ("closed", False))
        ),
        # Buffers the body of what got this far: reads it as Triton will, rewrites the priority, reserves
        # tokens; for gRPC also resolves, authorizes and routes the model its body names.
        _lua_filter(BODY_FILTER, body_program(body_data(data))),
        # gRPC's requests per minute and day: its model (and so its limits' scopes) is known only now.
        *(
            _rate_limit_filter(
                f"tollway.requests.grpc.{mode}", ("rpm", "rpd"), mode, fail_open, tokens=False, stage="_grpc"
            )
            for mode, fail_open in (("open", True), ("closed", False))
        ),
        # Between the two kinds of limit: renames the token filters' X-RateLimit-* response headers, so
        # that the request filters' headers keep the plain names.
        _lua_filter(TOKEN_HEADERS_FILTER, token_headers_program()),
        # Tokens per minute and day: each request's reservation (the excess it used is charged at its end),
        # under the scopes the body program set with it (none for a hit whose tier's hits are free).
        *(
            _rate_limit_filter(
                f"tollway.tokens.{mode}", ("tpm", "tpd"), mode, fail_open, tokens=True, stage="_reserved"
            )
            for mode, fail_open in (("open", True), ("closed", False))
        ),
        # Holds a request for a model that has no ready replica (it scales to zero) until one is ready: after
        # every limit, so that a caller past any of them is refused at once and never wakes the model.
        *([_lua_filter(HOLD_FILTER, hold_program(hold_data(gateway)))] if _holding(gateway) else []),
        # At stream end: the tokens used beyond each reservation (no call when there are none). Usage is
        # counted by the connection manager's usage logger, with no call.
        _stream_end_filter(),
        # Last: sends the request to the cluster the Lua program chose.
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": _TYPE + "extensions.filters.http.router.v3.Router"},
        },
    ]


def _client_address(runtime: Runtime) -> Config:
    """Which address is the client's (what the access log, the per-address limits and the network rules
    use): the connection's peer; behind N trusted proxies, the Nth address from X-Forwarded-For's right end
    (what the outermost proxy saw); behind a proxy of a trusted network, the header's last address (what that
    proxy saw), and the peer itself for a connection from anywhere else. Whatever a client writes into the
    header further left is never believed."""
    if runtime.trusted_proxy_cidrs:
        detection = {
            "@type": _TYPE + "extensions.http.original_ip_detection.xff.v3.XffConfig",
            "xff_trusted_cidrs": {"cidrs": [_cidr(cidr) for cidr in runtime.trusted_proxy_cidrs]},
        }
        return {
            "use_remote_address": False,
            "original_ip_detection_extensions": [
                {"name": "envoy.http.original_ip_detection.xff", "typed_config": detection}
            ],
        }
    return {"use_remote_address": True, "xff_num_trusted_hops": runtime.trusted_proxy_hops}


def _connection_manager(gateway: Gateway, now: datetime) -> Config:
    return {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": "gateway",
            "codec_type": "AUTO",
            **CLIENT_TIMEOUTS,
            **_held_request_timeout(gateway),
            **HTTP_OPTIONS,
            "route_config": {
                "name": "models",
                "virtual_hosts": [
                    {
                        "name": "api",
                        "domains": ["*"],
                        # every route that goes upstream goes to Triton: the policy once, not per route
                        "retry_policy": TRITON_RETRIES,
                        "routes": _routes(gateway, now),
                    }
                ],
                # Whoever sends Triton's admin key is the operator, never a client through the gateway.
                "request_headers_to_remove": [
                    CLUSTER_HEADER,
                    TRITON_KEY_HEADER,
                    f"triton-grpc-protocol-{TRITON_KEY_HEADER}",
                ],
            },
            "http_filters": http_filters(gateway),
            "local_reply_config": _local_reply(),
            # Every answer says which request it was (x-request-id): what feedback names and samples are
            # joined on. Envoy makes the id itself; one a client sends is replaced, never trusted: every
            # client is external. The internal range is one no client comes from: an empty list would be
            # Envoy's default, the private and loopback ranges, and keep their clients' ids.
            "always_set_request_id_in_response": True,
            **_client_address(gateway.runtime),
            "internal_address_config": {"cidr_ranges": [NO_CLIENT]},
            "access_log": [
                *_usage_logs(),
                *_sla_logs(),
                *_quality_logs(),
                *_sample_logs(gateway),
                {
                    "name": "envoy.access_loggers.stdout",
                    "typed_config": {
                        "@type": _TYPE + "extensions.access_loggers.stream.v3.StdoutAccessLog",
                        "log_format": {"json_format": ACCESS_LOG_FIELDS, "formatters": [REQ_WITHOUT_QUERY]},
                    },
                },
            ],
        },
    }


def _holding(gateway: Gateway) -> list[Model]:
    return [model for model in gateway.models if model.hold is not None]


def _held_request_timeout(gateway: Gateway) -> Config:
    """A held request is not in yet when its hold ends: the time a client has to send a request (headers
    and body) grows by the longest hold, where a model holds longer than that time leaves room for."""
    longest = max((model.hold.seconds for model in _holding(gateway) if model.hold), default=0)
    least = int(CLIENT_TIMEOUTS["request_timeout"].removesuffix("s"))
    return {"request_timeout": f"{least + longest}s"} if longest else {}


def hold_data(gateway: Gateway) -> dict[str, Any]:
    """The table hold.lua reads as `T`: per model that scales to zero its hold (`holds`: each tier that may
    call it to the cluster its requests wait on), and per cluster its requests may be routed to the check
    that says whether it has a ready replica (by protocol)."""
    holding = _holding(gateway)
    checked: dict[str, dict[str, str]] = {}
    for model in holding:
        for protocol in ("http", "grpc", "openai") if model.openai else ("http", "grpc"):
            routed = {"model": model.name, "protocol": protocol}
            checked[model_cluster(model, protocol)] = routed
            for tier in gateway.tiers:
                if tier.limits_for(model.name).concurrent_per_replica is not None:
                    checked[tier_cluster(model, tier, protocol)] = routed
    return {
        "models": {
            model.name: {
                "holds": {tier.name: hold_cluster(model, tier) for tier in _callers(gateway, model)},
                "hold_ms": model.hold.seconds * 1000,
                "wake_seconds": model.hold.wake_seconds,
            }
            for model in holding
            if model.hold
        },
        "clusters": checked,
    }


def _hold_listener() -> Config:
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": HOLD_LISTENER,
            "codec_type": "HTTP2",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": HOLD_LISTENER,
                        "domains": ["*"],
                        "routes": [{"match": {"prefix": "/"}, "direct_response": {"status": 204}}],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.fault",
                    "typed_config": {
                        "@type": _TYPE + "extensions.filters.http.fault.v3.HTTPFault",
                        "delay": {
                            "fixed_delay": HOLD_WAIT,
                            "percentage": {"numerator": 100, "denominator": "HUNDRED"},
                        },
                    },
                },
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": _TYPE + "extensions.filters.http.router.v3.Router"},
                },
            ],
        },
    }
    return {
        "@type": _TYPE + "config.listener.v3.Listener",
        "name": HOLD_LISTENER,
        "internal_listener": {},
        "filter_chains": [{"filters": [manager]}],
    }


def _hold_cluster(model: Model, tier: Tier, hold: Hold) -> Config:
    """Where a held request of `model` by a caller of `tier` waits: the internal listener, at most
    `hold.max_requests` at once (per tier, so that one tier's callers cannot fill every tier's room)."""
    name = hold_cluster(model, tier)
    return {
        "@type": _TYPE + "config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": HTTP2_UPSTREAM,
        "circuit_breakers": {
            "thresholds": [{"max_requests": hold.max_requests, "max_pending_requests": hold.max_requests}]
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {"envoy_internal_address": {"server_listener_name": HOLD_LISTENER}}
                            }
                        }
                    ]
                }
            ],
        },
    }


def _listener(name: str, port: int, chain: Config) -> Config:
    return {
        "@type": _TYPE + "config.listener.v3.Listener",
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port}},
        "per_connection_buffer_limit_bytes": CONNECTION_BUFFER_BYTES,
        "filter_chains": [chain],
    }


def _metrics_listener(gateway: Gateway) -> Config:
    """Envoy's own statistics for Prometheus: /stats/prometheus of the admin interface, nothing else of it."""
    manager = {
        "name": "envoy.filters.network.http_connection_manager",
        "typed_config": {
            "@type": _HCM,
            "stat_prefix": "metrics",
            "route_config": {
                "virtual_hosts": [
                    {
                        "name": "metrics",
                        "domains": ["*"],
                        "routes": [
                            {"match": {"path": "/stats/prometheus"}, "route": {"cluster": ADMIN_CLUSTER}},
                            {"match": {"prefix": "/"}, "direct_response": {"status": 404}},
                        ],
                    }
                ]
            },
            "http_filters": [
                {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": _TYPE + "extensions.filters.http.router.v3.Router"},
                }
            ],
        },
    }
    # Prometheus still reads the statistics of an Envoy that holds all the client connections it may.
    return {
        **_listener("metrics", gateway.runtime.metrics_port, {"filters": [manager]}),
        "ignore_global_conn_limit": True,
    }


def listeners(gateway: Gateway, now: datetime) -> Config:
    """The plain listener, one mTLS listener per mTLS tier, each trusting only that tier's CA (the Lua
    program knows the tier by the port), and the metrics listener."""
    manager = _connection_manager(gateway, now)
    found = [
        _listener("http", gateway.runtime.listen_port, {"filters": [manager]}),
        _metrics_listener(gateway),
    ]
    for tier in gateway.tiers:
        if tier.mtls is None or tier.mtls_port is None or gateway.runtime.certificate is None:
            continue
        certificate, key = gateway.runtime.certificate
        context = {
            "@type": _TYPE + "extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [
                    {"certificate_chain": {"filename": certificate}, "private_key": {"filename": key}}
                ],
                "validation_context": _client_validation(tier.mtls),
            },
        }
        chain = {
            "filters": [manager],
            "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": context},
        }
        found.append(_listener(f"mtls-{tier.name}", tier.mtls_port, chain))
    if _holding(gateway):
        found.append(_hold_listener())
    return {"resources": found}


def _client_validation(mtls: Mtls) -> Config:
    """The tier's CA, and its revocation list when it gave one."""
    found: Config = {"trusted_ca": {"inline_string": mtls.ca_pem}}
    if mtls.crl_pem is not None:
        found["crl"] = {"inline_string": mtls.crl_pem}
    return found


HTTP2_UPSTREAM = {
    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": _TYPE + "extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
}
"""A cluster's protocol options for gRPC upstreams."""


def _static_cluster(name: str, host: str, port: int, http2: bool = False) -> Config:
    cluster: Config = {
        "@type": _TYPE + "config.cluster.v3.Cluster",
        "name": name,
        "type": "STRICT_DNS" if not _is_ip(host) else "STATIC",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
                    ]
                }
            ],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = HTTP2_UPSTREAM
    return cluster


def _is_ip(host: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+", host))


def ratelimit_address(gateway: Gateway) -> tuple[str, int]:
    if gateway.runtime.ratelimit_address:
        host, _, port = gateway.runtime.ratelimit_address.rpartition(":")
        return host, int(port)
    service = gateway_children(gateway.name)["ratelimit"]
    return in_cluster_host(service, gateway.namespace), RATELIMIT_GRPC_PORT


LEAST_REQUEST = {
    "policies": [
        {
            "typed_extension_config": {
                "name": "envoy.load_balancing_policies.least_request",
                "typed_config": {
                    "@type": _TYPE + "extensions.load_balancing_policies.least_request.v3.LeastRequest",
                    "selection_method": "FULL_SCAN",
                },
            }
        }
    ]
}
"""Every request to the pod with the fewest outstanding requests of all: a model has few pods (each a GPU),
so scanning them is cheap, where Envoy's default of the better of two random picks sends a quarter of the
requests to the busier of two pods."""


def _triton_cluster(name: str, model: Model, protocol: str, max_requests: int | None = None) -> Config:
    """A model's Tritons, every pod an endpoint: least outstanding requests first (the closest signal to a
    pod's queue), a pod that fails to answer its readiness check or to take connections taken out, retries
    within a budget. Triton's 503 for a full queue is an answer, not a failure: it ejects no pod. The
    "openai" protocol is the model's OpenAI server beside each Triton (Triton's readiness is its health)."""
    grpc = protocol == "grpc"
    ports = {
        endpoint: {"grpc": endpoint.grpc_port, "openai": endpoint.openai_port}.get(
            protocol, endpoint.http_port
        )
        for endpoint in model.endpoints
    }
    cluster: Config = {
        "@type": _TYPE + "config.cluster.v3.Cluster",
        "name": name,
        "type": "STATIC" if all(_is_ip(endpoint.host) for endpoint in model.endpoints) else "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "2s",
        "load_balancing_policy": LEAST_REQUEST,
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": endpoint.host,
                                        "port_value": port,
                                    }
                                },
                                "health_check_config": {"port_value": endpoint.http_port},
                            }
                        }
                        for endpoint, port in ports.items()
                        if port is not None  # an OpenAI server outside a cluster may not be given
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "http_health_check": {"path": "/v2/health/ready", "codec_client_type": "HTTP1"},
            }
        ],
        "outlier_detection": {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": 3,  # refused or reset connections, timeouts
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "interval": "2s",
            "base_ejection_time": "10s",
            "max_ejection_percent": 50,
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "retry_budget": {"budget_percent": {"value": 20.0}, "min_retry_concurrency": 3},
                    **(
                        {"max_requests": max_requests, "max_pending_requests": max_requests}
                        if max_requests is not None
                        else {}
                    ),
                }
            ]
        },
    }
    if grpc:
        cluster["typed_extension_protocol_options"] = HTTP2_UPSTREAM
    if model.hold is not None and cluster["type"] == "STRICT_DNS":
        cluster["dns_refresh_rate"] = HOLD_DNS_REFRESH
    return cluster


def clusters(gateway: Gateway) -> Config:
    found = []
    for model in gateway.models:
        for protocol in ("http", "grpc", "openai") if model.openai else ("http", "grpc"):
            found.append(_triton_cluster(model_cluster(model, protocol), model, protocol))
            for tier in gateway.tiers:
                share = tier.limits_for(model.name).concurrent_per_replica
                if share is not None:
                    found.append(_triton_cluster(tier_cluster(model, tier, protocol), model, protocol, share))
        if model.hold is not None:
            found += [_hold_cluster(model, tier, model.hold) for tier in _callers(gateway, model)]
    host, port = ratelimit_address(gateway)
    found.append(_static_cluster(RATELIMIT_CLUSTER, host, port, http2=True))
    found.append(_static_cluster(ADMIN_CLUSTER, "127.0.0.1", gateway.runtime.admin_port))
    found.append(
        {
            "@type": _TYPE + "config.cluster.v3.Cluster",
            "name": REFUSED_CLUSTER,
            "type": "STATIC",
            "connect_timeout": "1s",
            "load_assignment": {"cluster_name": REFUSED_CLUSTER, "endpoints": []},
        }
    )
    if gateway.runtime.sample_sink:
        sink_host, _, sink_port = gateway.runtime.sample_sink.rpartition(":")
        found.append(_static_cluster(SAMPLE_CLUSTER, sink_host, int(sink_port), http2=True))
    for tier in gateway.tiers:
        if tier.jwt is None:
            continue
        authority = tier.jwt.jwks_uri.removeprefix("https://").split("/", 1)[0]
        jwks_host, _, jwks_port = authority.partition(":")
        cluster = _static_cluster(f"jwks|{tier.name}", jwks_host, int(jwks_port or 443))
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _TYPE + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": jwks_host,
                "common_tls_context": {
                    "validation_context": {
                        "trusted_ca": {"filename": gateway.runtime.jwks_ca_file},
                        "match_typed_subject_alt_names": [
                            {"san_type": "DNS", "matcher": {"exact": jwks_host}}
                        ],
                    }
                },
            },
        }
        found.append(cluster)
    return {"resources": found}


def _overload_manager(runtime: Runtime) -> Config:
    """What Envoy does as its heap nears `envoy_memory_bytes` or its connections `envoy_max_connections`:
    return memory to the system, then reset the streams that buffer the most, then refuse new requests."""
    heap = "envoy.resource_monitors.fixed_heap"

    def at(value: float) -> list[Config]:
        return [{"name": heap, "threshold": {"value": value}}]

    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": _TYPE + "extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": runtime.envoy_memory_bytes,
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": _TYPE
                    + "extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": runtime.envoy_max_connections,
                },
            },
        ],
        "actions": [
            {"name": "envoy.overload_actions.shrink_heap", "triggers": at(0.9)},
            {
                "name": "envoy.overload_actions.reset_high_memory_stream",
                "triggers": [
                    {"name": heap, "scaled": {"scaling_threshold": 0.85, "saturation_threshold": 0.95}}
                ],
            },
            {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": at(0.95)},
        ],
        # Streams buffering 1 MiB or more are accounted, so that the reset above can pick the largest.
        "buffer_factory_config": {"minimum_account_to_track_power_of_two": 20},
    }


STREAM_TIME_BUCKETS = {
    "stream_ttft_ms": [
        5,
        10,
        20,
        30,
        50,
        75,
        100,
        150,
        200,
        300,
        500,
        750,
        1000,
        1500,
        2000,
        3000,
        5000,
        10000,
    ],
    "stream_tpot_ms": [1, 2, 5, 10, 15, 20, 30, 50, 75, 100, 150, 250, 500, 1000],
}
"""The buckets (ms) of the streams' time histograms: finer than Envoy's defaults where a TTFT or a token's
time falls, so the recording rules' quantiles mean something."""


def bootstrap(gateway: Gateway) -> Config:
    directory = gateway.runtime.config_dir
    return {
        "node": {"id": gateway.name, "cluster": gateway.name},
        # Always, as the statistics' tags: a model that scales to zero may come without a restart.
        "bootstrap_extensions": [
            {
                "name": "envoy.bootstrap.internal_listener",
                "typed_config": {
                    "@type": _TYPE + "extensions.bootstrap.internal_listener.v3.InternalListener"
                },
            }
        ],
        "stats_config": {
            "stats_tags": [MODEL_STAT_TAG],
            "histogram_bucket_settings": [
                {"match": {"prefix": f"{USAGE_STAT_PREFIX}.{name}"}, "buckets": buckets}
                for name, buckets in {
                    **STREAM_TIME_BUCKETS,
                    "sla_latency_ms": list(SLA_LATENCY_BUCKETS_MS),
                }.items()
            ],
        },
        "overload_manager": _overload_manager(gateway.runtime),
        "admin": {
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": gateway.runtime.admin_port}}
        },
        "dynamic_resources": {
            kind: {
                "path_config_source": {
                    "path": f"{directory}/{kind[:3]}.yaml",
                    "watched_directory": {"path": directory},
                },
                "resource_api_version": "V3",
            }
            for kind in ("lds_config", "cds_config")
        },
    }

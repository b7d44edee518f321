"""The names and ports Tollway gives what it makes, in one place: translate/ and several renderers must
agree on them (the gateway's upstream is a ModelDeployment's Service; Envoy's descriptors are the ratelimit
service's configuration keys), and none of those modules should import another to learn them."""

from __future__ import annotations

MODEL_CLUSTERS = "(?:hold|triton-[a-z]+)[|]"
"""A regular expression (RE2 and Envoy's alike) for the start of the names of the gateway's clusters that are
a model's: its holds (`hold|MODEL|TIER`) and its Tritons (`triton-PROTOCOL|MODEL`, a tier's own too), the
model's name next. Envoy's `model` statistics tag and the wake signal's query both match on it."""
GATEWAY_NAME = "tollway-gateway"
"""The one gateway of each namespace that has an ApiTier."""
MODEL_LABEL = "tollway.dev/model"
"""The label that names the ModelDeployment a child (or a pod of one) belongs to."""

TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT = 8000, 8001, 8002
OPENAI_PORT = 9000
"""Where `tollway openai-server` listens in a language model's pod, beside Triton."""
RATELIMIT_GRPC_PORT, RATELIMIT_HTTP_PORT, RATELIMIT_METRICS_PORT = 8081, 8080, 9090
REDIS_PORT = 6379

TRITON_KEY_HEADER = "tollway-admin-key"
"""The header that opens Triton's restricted APIs (model repository, logging, trace, shared memory); over
gRPC Triton reads it as `triton-grpc-protocol-tollway-admin-key`. Only the operator holds the value."""
TRITON_KEY = "admin-key"
"""The data key of a model's key Secret (`serving_children(...)["triton"]`) that holds that value."""
CACHE_PASSWORD = "cache-password"
"""The data key of that Secret that holds the password of the model's shared answer cache (its Redis)."""
CACHE_PASSWORD_VARIABLE = "TOLLWAY_CACHE_REDIS_PASSWORD"
"""Where the model's OpenAI server and its shared answer cache read that password."""
REDIS_PASSWORD = "password"
"""The data key of the gateway's Redis Secret (`gateway_children(...)["redis"]`)."""

RATELIMIT_DOMAIN = "tollway"
"""The ratelimit service's domain: Envoy's ratelimit filters and the service's configuration name it."""
ADDRESS_DESCRIPTOR = "ip"
"""The ratelimit descriptor of the per-address limits: its value is the scope (a tier's counter name, or
UNAUTHENTICATED_SCOPE), the client address follows it as `remote_address`."""
UNAUTHENTICATED_SCOPE = "_unauthenticated"
"""The per-address scope of requests without a valid credential ('_' is in no Kubernetes name, so no
tier's)."""
KEY_SIGNALS = {
    "networks": "masked_remote_address",
    "new_networks": "masked_remote_address",
    "agents": "agent",
}
"""The key-compromise signals (each a ratelimit descriptor SIGNAL=tier, consumer, then what it counts the
distinct values of: the client's network, as Envoy's masked_remote_address action names it, or its
user-agent product) and what the service's statistics call them: key1 `SIGNAL_<tier>`, key2
`consumer_<consumer>` (monitoring reads them so)."""
NEW_KEYS_SIGNAL = "new_keys"
"""The signal of new keys per network: descriptor new_keys=tier, network (value_to_metric: the network is
in the statistic, as `network_<a-b-c-0_24>`), consumer; key1 `new_keys_<tier>`, key2 `network_<network>`.
Only keys younger than a day are counted, which bounds how many networks appear."""
KEY_ALERT = "TollwayKeyPatternChanged"
"""The alert on a key's signals (Prometheus's), which the operator suspends keys on."""
KEY_SUSPENDED_ALERT = "TollwayKeySuspended"
"""The alert the operator sends Alertmanager while a key is suspended (its consumer's notice)."""
USAGE_STAT_PREFIX = "tollway"
"""The prefix of the usage counters each Envoy replica keeps per tier and consumer as it logs a request
(usage_requests, usage_input, usage_output, and usage_unreported: responses that reported no token counts or
never reached their caller, charged their estimate instead): /stats/prometheus names them
envoy_tollway_<counter>."""


def usage_metric(kind: str) -> str:
    """A usage counter's Prometheus name (`kind`: usage_requests, _input, _output or _unreported; per model,
    version and tier: model_input_tokens, model_output_tokens)."""
    return f"envoy_{USAGE_STAT_PREFIX}_{kind}"


def serving_children(model_deployment: str) -> dict[str, str]:
    """A ModelDeployment's children, by part (DNS label of ≤ 40 characters: room for suffixes)."""
    return {
        "triton": f"{model_deployment}-triton",
        "pods": f"{model_deployment}-triton-pods",  # the headless Service the gateway balances over
        "config": f"{model_deployment}-model-config",
        "dashboard": f"{model_deployment}-dashboard",
        "cache": f"{model_deployment}-cache",  # the shared answer cache (spec.cache.store: shared)
    }


def gateway_children(gateway: str) -> dict[str, str]:
    """A gateway's children, by part."""
    return {
        "envoy": gateway,
        "config": f"{gateway}-envoy",
        "ratelimit": f"{gateway}-ratelimit",
        "redis": f"{gateway}-redis",
        "capacity": f"{gateway}-capacity",
        "notices": f"{gateway}-notices",
    }


def serving_pod_labels(model_deployment: str) -> dict[str, str]:
    """What selects a ModelDeployment's Triton pods (its Deployment, Service, PDB, NetworkPolicy)."""
    return {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": model_deployment}


def cache_pod_labels(model_deployment: str) -> dict[str, str]:
    """What selects a ModelDeployment's shared answer cache pod (its Redis)."""
    return {"app.kubernetes.io/name": "answer-cache", "app.kubernetes.io/instance": model_deployment}


def gateway_pod_labels(gateway: str, component: str) -> dict[str, str]:
    """What selects a gateway's pods of one component: envoy, ratelimit or redis."""
    return {"app.kubernetes.io/name": component, "app.kubernetes.io/instance": gateway}


def in_cluster_host(service: str, namespace: str) -> str:
    return f"{service}.{namespace}.svc.cluster.local"


def counter_name(name: str) -> str:
    """A tier, model or consumer name as the ratelimit service's counters carry it, and so the usage metrics'
    labels: its statistics are dot-separated paths (a consumer `svc.a` would be cut to `svc`), so '%' and
    '.' are percent-encoded. The gateway's Lua (access.counter_name) writes consumers the same way."""
    return name.replace("%", "%25").replace(".", "%2E")

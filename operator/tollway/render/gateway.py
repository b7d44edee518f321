"""Gateway IR → the Kubernetes objects that run it: Envoy, the ratelimit service, Redis, their config.

Envoy's configuration holds API keys, so it is a Secret. Neither Envoy nor the ratelimit service restarts
on a config change: both watch their mounted files, so pods carry no config checksum.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from tollway.documents import dump
from tollway.ir.gateway import CAPACITY_DIR, CAPACITY_FILE, TLS_DIR, Gateway
from tollway.ir.names import (
    RATELIMIT_GRPC_PORT,
    RATELIMIT_HTTP_PORT,
    RATELIMIT_METRICS_PORT,
    REDIS_PASSWORD,
    REDIS_PORT,
    gateway_children,
    gateway_pod_labels,
    in_cluster_host,
)
from tollway.ir.network import NetworkPeers
from tollway.render.credentials import digest, from_secret, redis_args, secret
from tollway.render.envoy import bootstrap, clusters, listeners
from tollway.render.meta import MANAGED_BY, RESTRICTED_CONTAINER, pod_security
from tollway.render.monitoring import MONITORING_API, gateway_rule_groups, scrape_annotations, service_monitor
from tollway.render.network import API_VERSION as NETWORK_API
from tollway.render.network import ratelimit_policy, redis_policy
from tollway.render.notices import ALERTMANAGER_CONFIG_API, alertmanager_config, notice_routes
from tollway.render.ratelimit import ratelimit_config

Manifest = dict[str, Any]

RATELIMIT_ROOT = "/data"
PASSWORD_VARIABLE = "REDIS_PASSWORD"
PASSWORD_ANNOTATION = "tollway.dev/redis-password-checksum"
"""On the Redis and ratelimit pod templates: both read the password at start, so a new one restarts both."""


def possible_children(gateway: str) -> set[tuple[str, str, str]]:
    """(apiVersion, kind, name) of every child a gateway of this name may have, whatever its settings."""
    named = gateway_children(gateway)
    workloads = ("envoy", "ratelimit", "redis")
    return (
        {("v1", "Secret", named[part]) for part in ("config", "redis")}
        | {("v1", "ConfigMap", named[part]) for part in ("ratelimit", "capacity")}
        | {("apps/v1", "Deployment", named[part]) for part in workloads}
        | {("v1", "Service", named[part]) for part in workloads}
        | {(NETWORK_API, "NetworkPolicy", named[part]) for part in ("ratelimit", "redis")}
        | {("policy/v1", "PodDisruptionBudget", named[part]) for part in ("envoy", "ratelimit")}
        | {(MONITORING_API, "ServiceMonitor", named[part]) for part in ("envoy", "ratelimit")}
        | {(MONITORING_API, "PrometheusRule", named["envoy"])}
        | {(ALERTMANAGER_CONFIG_API, "AlertmanagerConfig", named["notices"])}
    )


NOTICES_FILE = "notices.yaml"
"""gateway_files' Alertmanager route subtree and receivers of the consumers' notices."""


def gateway_files(gateway: Gateway, now: datetime) -> dict[str, str]:
    """The files Envoy reads (envoy.yaml bootstrap, lds.yaml, cds.yaml), the ratelimit config and the
    consumers' notice routes for an Alertmanager (when any consumer has a webhook), by name."""
    files = {  # clusters before listeners: a reload never routes to a cluster Envoy does not have yet
        "envoy.yaml": dump(bootstrap(gateway)),
        "envoy-static.yaml": dump(static_bootstrap(gateway, now)),
        "cds.yaml": dump(clusters(gateway)),
        "lds.yaml": dump(listeners(gateway, now)),
        "ratelimit.yaml": dump(ratelimit_config(gateway)),
        CAPACITY_FILE: capacity_document(gateway),
    }
    routes = notice_routes(gateway)
    if routes is not None:
        files[NOTICES_FILE] = dump(routes)
    return files


def capacity_document(gateway: Gateway) -> str:
    """What consumers may read of each model's room (GET /v1/capacity): a JSON object a line, each starting
    with its model's name (the Lua program finds a line by it, and passes it on as it is)."""
    lines = []
    for model in gateway.models:
        capacity = model.capacity
        entry = {
            "model": model.name,
            "state": capacity.state,
            "at_capacity": capacity.state == "at_capacity",
            "estimated_wait_seconds": capacity.estimated_wait_seconds,
            "ready_replicas": capacity.ready_replicas,
            "max_replicas": capacity.max_replicas,
            "observed_at": capacity.observed_at,
        }
        lines.append(json.dumps(entry, separators=(",", ":")) + "\n")
    return "".join(lines)


def static_bootstrap(gateway: Gateway, now: datetime) -> dict[str, Any]:
    """The same listeners and clusters as static resources in one file: what `envoy --mode validate`
    checks (it does not read file-based dynamic resources)."""
    config = bootstrap(gateway)
    del config["dynamic_resources"]

    def untyped(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{key: value for key, value in resource.items() if key != "@type"} for resource in resources]

    config["static_resources"] = {
        "listeners": untyped(listeners(gateway, now)["resources"]),
        "clusters": untyped(clusters(gateway)["resources"]),
    }
    return config


def _metadata(gateway: Gateway, name: str, component: str) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": gateway.namespace,
        "labels": {**_selector(gateway, component), "tollway.dev/gateway": gateway.name, **MANAGED_BY},
    }
    owners = [
        {"apiVersion": owner.api_version, "kind": owner.kind, "name": owner.name, "uid": owner.uid}
        for owner in gateway.owners
        if owner.uid
    ]
    if owners:  # the gateway lives while any tier of its namespace does; the garbage collector does the rest
        meta["ownerReferences"] = owners
    return meta


def _selector(gateway: Gateway, component: str) -> dict[str, str]:
    return gateway_pod_labels(gateway.name, component)


def _deployment(gateway: Gateway, component: str, name: str, replicas: int, pod: dict[str, Any]) -> Manifest:
    selector = _selector(gateway, component)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(gateway, name, component),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": {**selector, "tollway.dev/gateway": gateway.name}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "affinity": {
                        "podAntiAffinity": {
                            "preferredDuringSchedulingIgnoredDuringExecution": [
                                {
                                    "weight": 100,
                                    "podAffinityTerm": {
                                        "topologyKey": "kubernetes.io/hostname",
                                        "labelSelector": {"matchLabels": selector},
                                    },
                                }
                            ]
                        }
                    },
                    **pod,
                },
            },
        },
    }


def _service(gateway: Gateway, component: str, name: str, ports: list[tuple[str, int]]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(gateway, name, component),
        "spec": {
            "selector": _selector(gateway, component),
            "ports": [
                {"name": port_name, "port": port, "targetPort": port_name} for port_name, port in ports
            ],
        },
    }


def _budget(gateway: Gateway, component: str, name: str) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(gateway, name, component),
        "spec": {"minAvailable": 1, "selector": {"matchLabels": _selector(gateway, component)}},
    }


def _envoy(gateway: Gateway) -> list[Manifest]:
    named = gateway_children(gateway.name)
    ports = [("http", gateway.runtime.listen_port), ("metrics", gateway.runtime.metrics_port)]
    ports += [(f"mtls-{index}", tier.mtls_port) for index, tier in enumerate(gateway.tiers) if tier.mtls_port]
    mounts = [
        {"name": "config", "mountPath": gateway.runtime.config_dir, "readOnly": True},
        {"name": "capacity", "mountPath": CAPACITY_DIR, "readOnly": True},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "config", "secret": {"secretName": named["config"]}},
        {"name": "capacity", "configMap": {"name": named["capacity"]}},
    ]
    if gateway.runtime.tls_secret and any(tier.mtls_port for tier in gateway.tiers):
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        volumes.append({"name": "tls", "secret": {"secretName": gateway.runtime.tls_secret}})
    probe = {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 5}
    container = {
        "name": "envoy",
        "image": gateway.runtime.images.envoy,
        "args": [
            "-c",
            f"{gateway.runtime.config_dir}/envoy.yaml",
            "--drain-time-s",
            "20",
            "--log-level",
            "warn",
        ],
        "ports": [{"name": port_name, "containerPort": port} for port_name, port in ports],
        "readinessProbe": probe,
        "livenessProbe": {**probe, "failureThreshold": 6},
        # Endpoints drop the pod before Envoy is told to stop, so no new request lands on a closing proxy.
        "lifecycle": {"preStop": {"sleep": {"seconds": 10}}},
        # The overload manager keeps Envoy's heap below the limit (runtime.envoy_memory_bytes).
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": str(gateway.runtime.envoy_memory_bytes)},
        },
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": mounts,
    }
    pod = {
        "securityContext": pod_security(101),
        "terminationGracePeriodSeconds": 45,
        "containers": [container],
        "volumes": volumes,
    }
    deployment = _deployment(gateway, "envoy", named["envoy"], gateway.runtime.envoy_replicas, pod)
    deployment["spec"]["template"]["metadata"]["annotations"] = scrape_annotations(
        gateway.runtime.metrics_port, "/stats/prometheus"
    )
    service = _service(gateway, "envoy", named["envoy"], ports)
    service["spec"]["type"] = gateway.runtime.service_type
    found = [deployment, service]
    if gateway.runtime.envoy_replicas > 1:
        found.append(_budget(gateway, "envoy", named["envoy"]))
    return found


RATELIMIT_TUNING = {"LOCAL_CACHE_SIZE_IN_BYTES": str(8 * 1024 * 1024)}
"""The ratelimit service's settings that change its cost, as measured (README, Benchmarks): a local cache of
the keys over their limit, so a caller flooding past its limit is refused without a Redis round trip (its
cost per refusal: ratelimit service -40%, Redis ~0). Redis pipelining (REDIS_PIPELINE_WINDOW) and a larger
GOGC made no difference measurable at these loads, so they keep the service's defaults."""


def _ratelimit(gateway: Gateway, config: str, peers: NetworkPeers, redis_password: str) -> list[Manifest]:
    named = gateway_children(gateway.name)
    redis = (
        gateway.runtime.redis_address or f"{in_cluster_host(named['redis'], gateway.namespace)}:{REDIS_PORT}"
    )
    environment = {
        "LOG_LEVEL": "warn",
        "LOG_FORMAT": "json",
        "REDIS_SOCKET_TYPE": "tcp",
        "REDIS_URL": redis,
        "USE_STATSD": "false",
        "USE_PROMETHEUS": "true",
        "PROMETHEUS_ADDR": f":{RATELIMIT_METRICS_PORT}",
        "RUNTIME_ROOT": RATELIMIT_ROOT,
        "RUNTIME_SUBDIRECTORY": "ratelimit",
        "RUNTIME_WATCH_ROOT": "false",
        "RUNTIME_IGNOREDOTFILES": "true",
        **RATELIMIT_TUNING,
    }
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in environment.items()]
    own_redis = gateway.runtime.redis_address is None
    if own_redis:  # the Redis rendered here asks for the password rendered here
        env.append(from_secret("REDIS_AUTH", named["redis"], REDIS_PASSWORD))
    container = {
        "name": "ratelimit",
        "image": gateway.runtime.images.ratelimit,
        "command": ["/bin/ratelimit"],
        "env": env,
        "ports": [
            {"name": "grpc", "containerPort": RATELIMIT_GRPC_PORT},
            {"name": "http", "containerPort": RATELIMIT_HTTP_PORT},
            {"name": "metrics", "containerPort": RATELIMIT_METRICS_PORT},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthcheck", "port": "http"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "grpc"}, "periodSeconds": 10},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [
            {"name": "config", "mountPath": f"{RATELIMIT_ROOT}/ratelimit/config", "readOnly": True}
        ],
    }
    pod = {
        "securityContext": pod_security(65534),
        "containers": [container],
        "volumes": [{"name": "config", "configMap": {"name": named["ratelimit"]}}],
    }
    deployment = _deployment(gateway, "ratelimit", named["ratelimit"], 2, pod)
    if own_redis:
        _annotate(deployment, PASSWORD_ANNOTATION, digest(redis_password))
    found = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _metadata(gateway, named["ratelimit"], "ratelimit"),
            "data": {"tollway.yaml": config},
        },
        deployment,
        _service(
            gateway,
            "ratelimit",
            named["ratelimit"],
            # no HTTP port (only the kubelet's probe uses it): its /json endpoint would let any pod
            # spend or probe a consumer's counters
            [("grpc", RATELIMIT_GRPC_PORT), ("metrics", RATELIMIT_METRICS_PORT)],
        ),
        _budget(gateway, "ratelimit", named["ratelimit"]),
        ratelimit_policy(_metadata(gateway, named["ratelimit"], "ratelimit"), gateway.name, peers),
    ]
    if own_redis:
        found += _redis(gateway, redis_password)
    return found


def _annotate(deployment: Manifest, key: str, value: str) -> None:
    template = deployment["spec"]["template"]["metadata"]
    template["annotations"] = {**template.get("annotations", {}), key: value}


def _redis(gateway: Gateway, password: str) -> list[Manifest]:
    """A single Redis for small installs, the counters in an append-only file on the pod's disk: a Redis
    that crashes restarts with them, so no consumer gets a window's requests twice (a pod moved to another
    node starts empty). It asks every client for the password in its Secret (AUTH), which only the ratelimit
    service reads."""
    name = gateway_children(gateway.name)["redis"]
    container = {
        "name": "redis",
        "image": gateway.runtime.images.redis,
        "args": redis_args(
            PASSWORD_VARIABLE,
            *(
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ),  # each command written, flushed each second
            *("--dir", "/data", "--maxmemory-policy", "volatile-ttl"),
        ),
        "env": [from_secret(PASSWORD_VARIABLE, name, REDIS_PASSWORD)],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "readinessProbe": {"tcpSocket": {"port": "redis"}, "periodSeconds": 5},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
        "securityContext": RESTRICTED_CONTAINER,
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    pod = {
        "securityContext": pod_security(999),
        "containers": [container],
        "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "1Gi"}}],
    }
    deployment = _deployment(gateway, "redis", name, 1, pod)
    deployment["spec"]["strategy"] = {"type": "Recreate"}
    _annotate(deployment, PASSWORD_ANNOTATION, digest(password))
    return [
        secret(_metadata(gateway, name, "redis"), {REDIS_PASSWORD: password}),
        deployment,
        _service(gateway, "redis", name, [("redis", REDIS_PORT)]),
        redis_policy(_metadata(gateway, name, "redis"), gateway.name),
    ]


def manifests(gateway: Gateway, now: datetime, peers: NetworkPeers, redis_password: str) -> list[Manifest]:
    """Every object of the gateway; `redis_password` is the one its Redis asks for (when it runs one)."""
    files = gateway_files(gateway, now)
    config = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(gateway, gateway_children(gateway.name)["config"], "envoy"),
        "type": "Opaque",
        "data": {
            name: base64.b64encode(files[name].encode()).decode()
            for name in ("envoy.yaml", "lds.yaml", "cds.yaml")
        },
    }
    # Its own ConfigMap: a model's figures change it often, and Envoy reads it without reloading its config.
    capacity = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(gateway, gateway_children(gateway.name)["capacity"], "envoy"),
        "data": {CAPACITY_FILE: files[CAPACITY_FILE]},
    }
    found = [
        config,
        capacity,
        *_ratelimit(gateway, files["ratelimit.yaml"], peers, redis_password),
        *_envoy(gateway),
    ]
    if gateway.runtime.monitoring:
        found += _monitoring(gateway)
    if gateway.runtime.alertmanager_configs:
        notices = gateway_children(gateway.name)["notices"]
        routes = alertmanager_config(gateway, _metadata(gateway, notices, "envoy"))
        found += [routes] if routes else []
    return found


def _monitoring(gateway: Gateway) -> list[Manifest]:
    """ServiceMonitors for Envoy and the ratelimit service, and the gateway's PrometheusRule."""
    named = gateway_children(gateway.name)
    monitors = [
        service_monitor(_metadata(gateway, named[part], part), _selector(gateway, part), path)
        for part, path in (("envoy", "/stats/prometheus"), ("ratelimit", "/metrics"))
    ]
    rule = {
        "apiVersion": MONITORING_API,
        "kind": "PrometheusRule",
        "metadata": _metadata(gateway, named["envoy"], "envoy"),
        "spec": {"groups": gateway_rule_groups(gateway)},
    }
    return [*monitors, rule]

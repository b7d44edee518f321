"""The Kubernetes objects that run Triton for one ModelDeployment."""

from __future__ import annotations

from typing import Any

from tollway.ir.names import (
    CACHE_PASSWORD,
    MODEL_LABEL,
    OPENAI_PORT,
    TRITON_GRPC_PORT,
    TRITON_HTTP_PORT,
    TRITON_KEY,
    TRITON_KEY_HEADER,
    TRITON_METRICS_PORT,
    serving_children,
    serving_pod_labels,
)
from tollway.ir.network import NetworkPeers
from tollway.ir.serving import TritonServing
from tollway.render import answer_cache
from tollway.render.autoscaling import scaler
from tollway.render.credentials import derived, digest, from_secret, secret
from tollway.render.meta import MANAGED_BY, metadata
from tollway.render.model_config import checksum, config_pbtxt
from tollway.render.monitoring import (
    MONITORING_API,
    dashboard,
    prometheus_rule,
    scrape_annotations,
    service_monitor,
)
from tollway.render.network import API_VERSION as NETWORK_API
from tollway.render.network import serving_policy

#: Every kind of child this module renders: what the operator prunes when one is no longer rendered.
CHILD_KINDS = (
    ("v1", "ServiceAccount"),
    ("v1", "Secret"),
    ("v1", "ConfigMap"),
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("policy/v1", "PodDisruptionBudget"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    (MONITORING_API, "ServiceMonitor"),
    (MONITORING_API, "PrometheusRule"),
    (NETWORK_API, "NetworkPolicy"),
)
MODELS = "/models"
SOURCE = "/source"
CONFIG = "/etc/tollway"
CHECKSUM_ANNOTATION = "tollway.dev/model-config-checksum"
KEY_ANNOTATION = "tollway.dev/admin-key-checksum"
"""On the pod template: a new key (its Secret deleted, drawn again) restarts Triton, which reads it once."""
KEY_VARIABLE = "TOLLWAY_ADMIN_KEY"
#: Triton's APIs that change or expose the server rather than serve a model: behind the operator's key.
RESTRICTED_APIS = ("model-repository", "logging", "trace", "shared-memory")
#: Triton's quantiles for the latency summaries: P50, P95, P99, each with its allowed error.
QUANTILES = "0.5:0.05,0.95:0.01,0.99:0.001"
#: Startup may take long: large weights are fetched and loaded before the first readiness.
STARTUP_SECONDS = 30 * 60


def labels(serving: TritonServing) -> dict[str, str]:
    return {**selector(serving), MODEL_LABEL: serving.name, **MANAGED_BY}


def _metadata(serving: TritonServing, child: str) -> dict[str, Any]:
    """The metadata of the child named by `serving_children(...)[child]`: namespace, labels, owner."""
    return metadata(serving_children(serving.name)[child], serving.namespace, serving.owner, labels(serving))


def selector(serving: TritonServing) -> dict[str, str]:
    return serving_pod_labels(serving.name)


def triton_args(serving: TritonServing) -> list[str]:
    """tritonserver's command line: explicit model control, strict readiness, latency metrics, the
    restricted APIs behind the operator's key."""
    restricted = f"{','.join(RESTRICTED_APIS)}:{TRITON_KEY_HEADER}=$({KEY_VARIABLE})"
    args = [
        "tritonserver",
        f"--model-repository={MODELS}",
        "--model-control-mode=explicit",
        f"--load-model={serving.model.name}",
        "--strict-readiness=true",
        # A version that fails to load leaves Triton up (not ready) with the reason in its repository
        # index, where the operator reads it into status, instead of a crash loop that says less.
        "--exit-on-error=false",
        f"--http-port={TRITON_HTTP_PORT}",
        f"--grpc-port={TRITON_GRPC_PORT}",
        f"--metrics-port={TRITON_METRICS_PORT}",
        "--metrics-config=summary_latencies=true",
        f"--metrics-config=summary_quantiles={QUANTILES}",
        "--metrics-config=histogram_latencies=true",
        # Triton reads the key from its command line only: the kubelet fills in $(VAR) from the Secret.
        f"--http-restricted-api={restricted}",
        f"--grpc-restricted-protocol={restricted}",
    ]
    if serving.cache_size_bytes is not None:
        args.append(f"--cache-config=local,size={serving.cache_size_bytes}")
    return args + list(serving.extra_args)


def render(serving: TritonServing, peers: NetworkPeers, admin_key: str) -> list[dict[str, Any]]:
    """ServiceAccount, the admin key's Secret, ConfigMap (config.pbtxt), Deployment, Service, NetworkPolicy
    and, with room to scale, a PDB. `admin_key` opens Triton's restricted APIs (see `RESTRICTED_APIS`)."""
    config = config_pbtxt(serving.model)
    cache = serving.openai.cache if serving.openai is not None else None
    keys = {TRITON_KEY: admin_key}
    if cache is not None and cache.shared:
        keys[CACHE_PASSWORD] = derived(admin_key, CACHE_PASSWORD)
    objects = [
        service_account(serving),
        secret(_metadata(serving, "triton"), keys),
        config_map(serving, config),
        deployment(serving, config_revision(serving), digest(admin_key)),
        service(serving),
        pods_service(serving),
        serving_policy(
            _metadata(serving, "triton"),
            serving.name,
            peers,
            [port["port"] for port in inference_ports(serving)],
        ),
    ]
    if serving.max_replicas > 1:
        objects.append(disruption_budget(serving))
    objects += scaler(serving, _metadata(serving, "triton"))
    if cache is not None and cache.shared:
        named = serving_children(serving.name)["cache"]
        labels = answer_cache.labels(serving)
        objects += answer_cache.shared_cache(
            serving, cache, metadata(named, serving.namespace, serving.owner, labels)
        )
    if serving.monitoring:
        objects += [
            service_monitor(_metadata(serving, "triton"), selector(serving)),
            prometheus_rule(serving, _metadata(serving, "triton")),
        ]
    return [*objects, dashboard(serving, _metadata(serving, "dashboard"))]


def optional_children(model_deployment: str) -> set[tuple[str, str, str]]:
    """(apiVersion, kind, name) of the children a model has only with some specs, of kinds every model has
    (so that pruning by kind would miss them): the shared answer cache's."""
    name = serving_children(model_deployment)["cache"]
    return {("apps/v1", "Deployment", name), ("v1", "Service", name), (NETWORK_API, "NetworkPolicy", name)}


def config_revision(serving: TritonServing) -> str:
    """A digest of what the pods read from the ConfigMap at start (config.pbtxt, with its versions, and the
    chat template): the pods restart when it changes, and the answer cache's keys hold it."""
    config = config_pbtxt(serving.model)
    template = serving.openai.chat_template if serving.openai is not None else None
    return checksum(config if template is None else config + template)


def service_account(serving: TritonServing) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(serving, "triton"),
        "automountServiceAccountToken": False,
    }


CHAT_TEMPLATE = "chat_template.jinja"
"""The model-config ConfigMap's key for a chat template given in the spec."""


def config_map(serving: TritonServing, config: str) -> dict[str, Any]:
    data = {"config.pbtxt": config}
    if serving.openai is not None and serving.openai.chat_template is not None:
        data[CHAT_TEMPLATE] = serving.openai.chat_template
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(serving, "config"),
        "data": data,
    }


def _downloadable(uri: str) -> str:
    """The storage initializer's form of a repository URI: it reads Azure blobs by their https address."""
    if uri.startswith("as://"):
        account, _, rest = uri.removeprefix("as://").partition("/")
        return f"https://{account}.blob.core.windows.net/{rest}"
    return uri


def _model_directory_steps(serving: TritonServing) -> list[dict[str, Any]]:
    """Init containers that build the local model repository Triton reads.

    Why a local repository assembled at start, rather than pointing Triton at s3:// directly: Triton must run
    with the fields Tollway owns as rendered (render.model_config.OWNED_FIELDS), whatever the repository
    holds, and it reads the config from the model directory. So the version directories come from the
    repository (downloaded by the storage initializer, or symlinked from the read-only claim, never copied)
    and config.pbtxt is the repository's merged with the ConfigMap's by `tollway model-config` (Tollway's
    image), which keeps what Tollway does not own: inputs, outputs, backend parameters. The load API with
    `parameters.config` would also do, but would load every model twice (once at start, once with the
    override) and forget the override whenever Triton restarts.
    """
    target = f"{MODELS}/{serving.model.name}"
    steps: list[dict[str, Any]] = []
    merge = ["tollway", "model-config", f"--rendered={CONFIG}/config.pbtxt", f"--model-dir={target}"]
    if serving.repository.claim is None:
        download = [_downloadable(serving.repository.uri), target]
        steps.append(
            _init_container(serving, "fetch-model", serving.storage_initializer_image, args=download)
        )
    else:
        source = f"{SOURCE}/{serving.repository.path}".rstrip("/")
        merge += [f"--source={source}", *(str(version) for version in serving.model.versions)]
    steps.append(_init_container(serving, "model-config", serving.tollway_image, command=merge))
    return steps


def _init_container(
    serving: TritonServing,
    name: str,
    image: str,
    *,
    args: list[str] | None = None,
    command: list[str] | None = None,
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "volumeMounts": _mounts(serving),
        "securityContext": _container_security(),
    }
    if command:
        container["command"] = command
    if args:
        container["args"] = args
    return container


def _mounts(serving: TritonServing) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {"name": "models", "mountPath": MODELS},
        {"name": "model-config", "mountPath": CONFIG, "readOnly": True},
    ]
    if serving.repository.claim:
        mounts.append({"name": "source", "mountPath": SOURCE, "readOnly": True})
    return mounts


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True}


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "failureThreshold": failures,
        "timeoutSeconds": 5,
    }


def _resources(serving: TritonServing) -> dict[str, Any]:
    # Quantities as strings, the form the API server keeps: then the live object holds exactly these.
    requests = {name: str(value) for name, value in serving.requests.items()}
    limits = {name: str(value) for name, value in serving.limits.items()}
    if serving.gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(serving.gpus)
    resources: dict[str, Any] = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return resources


def _volumes(serving: TritonServing) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        {"name": "models", "emptyDir": {}},
        {"name": "model-config", "configMap": {"name": serving_children(serving.name)["config"]}},
        # The Python backend passes tensors to its stub processes through shared memory.
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    if serving.repository.claim:
        claim = {"claimName": serving.repository.claim, "readOnly": True}
        volumes.append({"name": "source", "persistentVolumeClaim": claim})
    return volumes


def openai_server_args(serving: TritonServing) -> list[str]:
    """The command line of `tollway openai-server` beside a language model's Triton (empty for any other
    model): spec.model.openai's tensor names, Triton's gRPC port on localhost, the chat template from the
    model-config ConfigMap or the model directory's tokenizer_config.json, and the directory's
    tokenizer.json (used, when there is one, to count tokens for a model that does not report them)."""
    side = serving.openai
    if side is None:
        return []
    args = [
        "openai-server",
        f"--model={serving.model.name}",
        f"--kind={side.kind}",
        f"--triton=127.0.0.1:{TRITON_GRPC_PORT}",
        f"--port={OPENAI_PORT}",
        f"--text-input={side.text_input}",
    ]
    if side.kind == "embedding":
        args.append(f"--embedding-output={side.embedding_output}")
    else:
        args += [
            f"--default-max-tokens={side.default_max_tokens}",
            f"--text-output={side.text_output}",
            f"--max-tokens-input={side.max_tokens_input}",
            f"--stream-input={side.stream_input}",
        ]
    args.append(f"--tokenizer={MODELS}/{serving.model.name}/tokenizer.json")
    if side.kind == "chat" and side.chat_template is not None:
        args.append(f"--chat-template={CONFIG}/{CHAT_TEMPLATE}")
    elif side.kind == "chat":
        args.append(f"--tokenizer-config={MODELS}/{serving.model.name}/tokenizer_config.json")
    if side.cache is not None:
        args += answer_cache.server_args(serving, side.cache, config_revision(serving))
    return args


def _openai_server(serving: TritonServing) -> list[dict[str, Any]]:
    """`tollway openai-server` beside Triton, for a model that speaks the OpenAI API: OpenAI's API in,
    Triton's gRPC (streaming, for a language model) on localhost out. Ready once Triton has the model."""
    if serving.openai is None:
        return []
    cache = serving.openai.cache
    # No empty list: the API server drops it, and the live object would never hold what was applied.
    env = {"env": answer_cache.password_env(serving)} if cache is not None and cache.shared else {}
    return [
        {
            "name": "openai",
            "image": serving.tollway_image,
            "args": openai_server_args(serving),
            **env,
            "ports": [{"name": "openai", "containerPort": OPENAI_PORT, "protocol": "TCP"}],
            "readinessProbe": {
                "httpGet": {"path": "/healthz", "port": "openai"},
                "periodSeconds": 5,
                "failureThreshold": 3,
                "timeoutSeconds": 5,
            },
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
            "volumeMounts": _mounts(serving),
            "securityContext": _container_security(),
        }
    ]


def deployment(serving: TritonServing, config_checksum: str, key_checksum: str) -> dict[str, Any]:
    triton = {
        "name": "triton",
        "image": serving.image,
        "args": triton_args(serving),
        "env": [from_secret(KEY_VARIABLE, serving_children(serving.name)["triton"], TRITON_KEY)],
        "ports": [
            {"name": "http", "containerPort": TRITON_HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": TRITON_GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": TRITON_METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": _probe("/v2/health/ready", 5, 3),
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "startupProbe": _probe("/v2/health/ready", 10, STARTUP_SECONDS // 10),
        "resources": _resources(serving),
        "volumeMounts": [*_mounts(serving), {"name": "dshm", "mountPath": "/dev/shm"}],
        "securityContext": _container_security(),
    }
    pod: dict[str, Any] = {
        "serviceAccountName": serving_children(serving.name)["triton"],
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 1000,
            "runAsGroup": 1000,
            "fsGroup": 1000,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": _model_directory_steps(serving),
        "containers": [triton, *_openai_server(serving)],
        "volumes": _volumes(serving),
    }
    if serving.node_selector:
        pod["nodeSelector"] = dict(serving.node_selector)
    if serving.tolerations:
        pod["tolerations"] = [dict(toleration) for toleration in serving.tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(serving, "triton"),
        "spec": {
            # Under an autoscaler Tollway leaves the count alone, so the two never fight over it.
            **({} if serving.scaling else {"replicas": serving.replicas}),
            "selector": {"matchLabels": selector(serving)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": _rollout(serving)},
            "template": {
                "metadata": {
                    "labels": labels(serving),
                    # The scrape annotations are the fallback for a Prometheus without prometheus-operator.
                    "annotations": {
                        CHECKSUM_ANNOTATION: config_checksum,
                        KEY_ANNOTATION: key_checksum,
                        **scrape_annotations(TRITON_METRICS_PORT, "/metrics"),
                    },
                },
                "spec": pod,
            },
        },
    }


def _rollout(serving: TritonServing) -> dict[str, int]:
    """Surge a new pod first on CPU; on GPUs replace one at a time, since a spare GPU is rarely free."""
    return {"maxSurge": 0, "maxUnavailable": 1} if serving.gpus else {"maxSurge": 1, "maxUnavailable": 0}


INFERENCE_PORTS = [
    {"name": "http", "port": TRITON_HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
    {
        "name": "grpc",
        "port": TRITON_GRPC_PORT,
        "targetPort": "grpc",
        "protocol": "TCP",
        "appProtocol": "grpc",
    },
]
OPENAI_SERVICE_PORT = {"name": "openai", "port": OPENAI_PORT, "targetPort": "openai", "protocol": "TCP"}


def inference_ports(serving: TritonServing) -> list[dict[str, Any]]:
    """The ports the gateway sends inference to: Triton's, and the OpenAI server's beside a language model."""
    return [*INFERENCE_PORTS, OPENAI_SERVICE_PORT] if serving.openai is not None else INFERENCE_PORTS


def service(serving: TritonServing) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(serving, "triton"),
        "spec": {
            "type": "ClusterIP",
            "selector": selector(serving),
            "ports": [
                *inference_ports(serving),
                {"name": "metrics", "port": TRITON_METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def pods_service(serving: TritonServing) -> dict[str, Any]:
    """A headless Service: its DNS name resolves to each ready Triton pod, so that the gateway balances
    over the pods (by their outstanding requests) and ejects a failing one; a ClusterIP would give it one
    address, and gRPC's one connection would stick to one pod. Inference ports only (Prometheus scrapes
    the other Service)."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(serving, "pods"),
        "spec": {
            "clusterIP": "None",
            "selector": selector(serving),
            "ports": inference_ports(serving),
        },
    }


def disruption_budget(serving: TritonServing) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(serving, "triton"),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(serving)}},
    }

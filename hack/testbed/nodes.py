"""The local control plane's simulated nodes: what they are (Node objects of GPU machines) and how kwok plays
their kubelets (its Stages). Standard library only, like testbed.controlplane, which creates them.

kwok (sigs.k8s.io/kwok) runs no container: it writes the status a kubelet would. A stage applies to an object
of its kind whose fields match its selector (jq expressions); its `next.statusTemplate`, a Go template over
the object (with sprig's functions and kwok's, such as Now, NodeIPWith and PodIPWith), is patched into the
object's status, which is how the stages follow one another; `next.delete` deletes the object instead.
"""

from __future__ import annotations

from typing import Any

#: How many simulated nodes there are, and each one's capacity (allocatable alike).
NODES = 2
GPUS_PER_NODE = 2
NODE_CAPACITY = {"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": str(GPUS_PER_NODE)}
#: The label NVIDIA's GPU feature discovery puts on such a node (examples/ select their GPU by it).
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
#: The annotation that makes a Node kwok's to play (kwok is started with it as its selector).
KWOK_ANNOTATION = ("kwok.x-k8s.io/node", "fake")
NODE_PREFIX = "kwok-gpu-"

_READY_IS = '.status.conditions.[] | select(.type == "Ready") | .status'

#: A node kwok starts to play reports Ready.
_NODE_READY = """\
{{ $now := Now }}
phase: Running
conditions:
- type: Ready
  status: "True"
  reason: KubeletReady
  message: kwok plays this node's kubelet
  lastHeartbeatTime: {{ $now | Quote }}
  lastTransitionTime: {{ $now | Quote }}
"""

#: A Ready node's status heartbeat (conditions merge by type: only the heartbeat's time changes).
_NODE_HEARTBEAT = """\
conditions:
- type: Ready
  status: "True"
  lastHeartbeatTime: {{ Now | Quote }}
"""

#: A pod bound to a node: every init container done (a sidecar, restartPolicy Always, running), every
#: container running and ready, a pod IP from the node's podCIDR.
_POD_RUNNING = """\
{{ $now := Now }}
phase: Running
startTime: {{ $now | Quote }}
{{ $host := NodeIPWith .spec.nodeName }}
hostIP: {{ $host | Quote }}
hostIPs: [{ip: {{ $host | Quote }}}]
{{ $ip := PodIPWith .spec.nodeName (or .spec.hostNetwork false) .metadata.uid .metadata.name
  .metadata.namespace }}
podIP: {{ $ip | Quote }}
podIPs: [{ip: {{ $ip | Quote }}}]
conditions:
{{ range list "Initialized" "ContainersReady" "Ready" }}
- {type: {{ . }}, status: "True", lastTransitionTime: {{ $now | Quote }}}
{{ end }}
{{ with .spec.initContainers }}
initContainerStatuses:
{{ range . }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  restartCount: 0
  ready: true
  {{ if eq (or .restartPolicy "") "Always" }}
  started: true
  state: {running: {startedAt: {{ $now | Quote }}}}
  {{ else }}
  state:
    terminated:
      {exitCode: 0, reason: Completed, startedAt: {{ $now | Quote }}, finishedAt: {{ $now | Quote }}}
  {{ end }}
{{ end }}
{{ end }}
containerStatuses:
{{ range .spec.containers }}
- name: {{ .name | Quote }}
  image: {{ .image | Quote }}
  restartCount: 0
  ready: true
  started: true
  state: {running: {startedAt: {{ $now | Quote }}}}
{{ end }}
"""


def _stage(
    name: str, kind: str, selector: list[dict[str, Any]], then: dict[str, Any], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "kwok.x-k8s.io/v1alpha1",
        "kind": "Stage",
        "metadata": {"name": name},
        "spec": {
            "resourceRef": {"apiGroup": "v1", "kind": kind},
            "selector": {"matchExpressions": selector},
            "next": then,
            **spec,
        },
    }


def stages() -> list[dict[str, Any]]:
    """A node becomes Ready and sends a status heartbeat every 50 to 70 s (kwok renews its lease beside, every
    10 s: what the node controller watches); a pod bound to it becomes Running and Ready at once; a deleted
    pod goes at once (as a kubelet confirms that its containers stopped)."""
    not_ready = {"key": _READY_IS, "operator": "NotIn", "values": ["True"]}
    ready = {"key": _READY_IS, "operator": "In", "values": ["True"]}
    living = {"key": ".metadata.deletionTimestamp", "operator": "DoesNotExist"}
    pending = {"key": ".status.phase", "operator": "In", "values": ["Pending"]}
    deleted = {"key": ".metadata.deletionTimestamp", "operator": "Exists"}
    heartbeat = {"durationMilliseconds": 50_000, "jitterDurationMilliseconds": 70_000}
    return [
        _stage("node-ready", "Node", [not_ready], {"statusTemplate": _NODE_READY}),
        _stage("node-heartbeat", "Node", [ready], {"statusTemplate": _NODE_HEARTBEAT}, delay=heartbeat),
        _stage("pod-running", "Pod", [living, pending], {"statusTemplate": _POD_RUNNING}),
        _stage("pod-delete", "Pod", [deleted], {"delete": True}),
    ]


def node(index: int, kubelet_version: str) -> dict[str, Any]:
    """Simulated Node `index`: a GPU machine of NODE_CAPACITY with a pod CIDR of its own, kwok's to play."""
    name = f"{NODE_PREFIX}{index}"
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "type": "kwok",
        "nvidia.com/gpu.product": GPU_PRODUCT,
        "nvidia.com/gpu.count": str(GPUS_PER_NODE),
    }
    pods = f"10.244.{index}.0/24"
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "annotations": dict([KWOK_ANNOTATION]), "labels": labels},
        "spec": {"podCIDR": pods, "podCIDRs": [pods]},
        "status": {
            "capacity": NODE_CAPACITY,
            "allocatable": NODE_CAPACITY,
            "addresses": [
                {"type": "InternalIP", "address": f"10.243.0.{index + 1}"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "kubeletVersion": kubelet_version,
                "containerRuntimeVersion": "kwok",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def schedulable(items: list[dict[str, Any]]) -> bool:
    """Whether every simulated node among `items` (Node objects) is Ready and rid of the not-ready taint (the
    node controller takes it away a few seconds after Ready), so that the scheduler places pods there."""
    ready = 0
    for item in items:
        if not item["metadata"]["name"].startswith(NODE_PREFIX):
            continue
        conditions = {entry["type"]: entry["status"] for entry in item["status"].get("conditions", [])}
        taints = [taint["key"] for taint in item["spec"].get("taints", [])]
        ready += conditions.get("Ready") == "True" and "node.kubernetes.io/not-ready" not in taints
    return ready == NODES

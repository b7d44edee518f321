"""What the real API server does with the CRDs: examples accepted, defaults applied, bad input refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testbed.kube import Cluster

ROOT = Path(__file__).resolve().parents[2]
INVALID = sorted((ROOT / "tests" / "invalid").glob("*.yaml"))


def test_examples_apply_and_print_their_columns(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "examples"))
    table = cluster.kubectl("get", "md,tier", "-n", "ai").stdout
    lines = table.splitlines()
    model_header = next(line for line in lines if line.startswith("NAME") and "P99" in line)
    assert model_header.split() == ["NAME", "READY", "REPLICAS", "P99", "QUEUE", "COST/H", "AGE"]
    tier_header = next(line for line in lines if line.startswith("NAME") and "RPM" in line)
    assert tier_header.split() == ["NAME", "RPM", "TPM", "CONCURRENCY", "CONSUMERS", "SLA", "READY", "AGE"]
    pro = next(line.split() for line in lines if line.startswith("apitier.tollway.dev/pro"))
    assert pro[1:4] == ["600", "200000", "20"]
    assert "modeldeployment.tollway.dev/chat" in table


def test_short_names_and_category(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(ROOT / "examples"))
    names = cluster.kubectl("get", "tollway", "-n", "ai", "-o", "name").stdout.split()
    assert set(names) >= {"modeldeployment.tollway.dev/chat", "apitier.tollway.dev/free"}


def test_schema_applies_defaults(cluster: Cluster) -> None:
    namespace = cluster.namespace("defaults")
    cluster.apply(
        {
            "apiVersion": "tollway.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "tiny", "namespace": namespace},
            "spec": {
                "model": {"repository": "pvc://models/tiny", "backend": "onnxruntime"},
                "versions": [{"version": "1"}],
            },
        }
    )
    spec = cluster.get("md", "tiny", namespace)["spec"]
    assert spec["triton"]["gpus"] == 1
    assert spec["autoscaling"] == {
        "engine": "hpa",
        "minReplicas": 1,
        "maxReplicas": 1,
        "targets": {},
        "scaleUp": {"stabilizationSeconds": 0},
        "scaleDown": {"stabilizationSeconds": 0},
    }
    assert spec["queue"] == {"maxQueueSize": 0, "timeoutMicroseconds": 0}


@pytest.mark.parametrize("path", INVALID, ids=[path.stem for path in INVALID])
def test_invalid_manifest_is_refused_at_admission(cluster: Cluster, path: Path) -> None:
    header = dict(line[2:].split(": ", 1) for line in path.read_text().splitlines() if line.startswith("# "))
    document = yaml.safe_load(path.read_text())
    cluster.namespace(document["metadata"]["namespace"])
    refused = cluster.kubectl("create", "--dry-run=server", "-f", str(path), check=False)
    assert refused.returncode != 0, f"{path.name} was accepted"
    assert header["field"] in refused.stderr, refused.stderr
    if "message" in header:
        assert header["message"] in refused.stderr, refused.stderr


THIRD_PARTY = {"servicemonitor", "prometheusrule", "scaledobject"}


def test_rendered_children_are_accepted_by_the_api_server(cluster: Cluster, tmp_path: Path) -> None:
    render = subprocess.run(
        [
            str(Path(sys.executable).parent / "tollway"),
            "render",
            "-f",
            str(ROOT / "examples"),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert render.returncode == 0, render.stderr
    rendered = {path: yaml.safe_load(path.read_text()) for path in tmp_path.glob("*.yaml")}
    kinds = sorted(document["kind"].lower() for document in rendered.values())
    triton = ["configmap", "deployment", "service", "serviceaccount"] * 4
    triton += ["poddisruptionbudget"] * 3  # not search's: it never runs more than one replica
    triton += ["networkpolicy", "secret", "service"] * 4  # who may reach Triton; its admin key; its pods
    monitoring = ["configmap", "servicemonitor", "prometheusrule"] * 4  # a dashboard ConfigMap each
    scaling = ["horizontalpodautoscaler"] * 3  # chat, assistant and embed (search never scales)
    gateway = ["secret", "configmap", "configmap"]  # Envoy's config, ratelimit rules, capacity document
    gateway += ["deployment", "service"] * 3 + ["poddisruptionbudget"] * 2
    gateway += ["servicemonitor"] * 2 + ["prometheusrule"]  # Envoy's and the ratelimit service's
    gateway += ["networkpolicy"] * 2 + ["secret"]  # who may reach ratelimit and Redis; Redis's password
    adapter = ["configmap"]  # prometheus-adapter's rules, for the HPA
    cache = ["deployment", "service", "networkpolicy"]  # assistant's shared answer cache (its Redis)
    assert kinds == sorted(triton + monitoring + scaling + gateway + adapter + cache)
    # prometheus-operator's and KEDA's kinds need their CRDs, which this cluster does not have.
    third_party = [path for path, document in rendered.items() if document["kind"].lower() in THIRD_PARTY]
    for path in third_party:
        path.unlink()
    cluster.namespace("ai")
    cluster.namespace("monitoring")
    # Server-side, as the operator applies: a client-side apply would copy the Envoy config Secret into an
    # annotation, which cannot hold it.
    accepted = cluster.kubectl("apply", "--server-side", "--dry-run=server", "-f", str(tmp_path))
    assert accepted.stdout.count("(server dry run)") == len(kinds) - len(third_party) == len(kinds) - 11

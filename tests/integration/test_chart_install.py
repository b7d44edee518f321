"""The Helm chart on the real control plane, where RBAC applies: `helm install`, then the operator run locally
as the chart's ServiceAccount (a real token) with the chart's own arguments reconciles examples/ completely;
without one of the verbs the chart grants it fails and says so; `helm uninstall` keeps the CRDs.

The chart's Deployment gets its pod scheduled onto one of the control plane's simulated nodes, but kwok, which
plays their kubelets, runs no process: the operator under test runs here, as the chart's ServiceAccount.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway import documents

from testbed.kube import Cluster, Operator, eventually, tollway_run
from testbed.nodes import NODE_PREFIX
from testbed.processes import poll, tool_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tollway"
EXAMPLES = "ai"  # the namespace of examples/
CRDS = ("modeldeployments.tollway.dev", "apitiers.tollway.dev")
PEERING_CRDS = ("clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
#: KEDA's and prometheus-operator's kinds, served (by stand-in CRDs) so that their rules are exercised too.
THIRD_PARTY = (("keda.sh", "v1alpha1", "ScaledObject"), ("monitoring.coreos.com", "v1", "ServiceMonitor"),
               ("monitoring.coreos.com", "v1", "PrometheusRule"))  # fmt: skip


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    cluster: Cluster
    helm: str
    home: Path

    def helm_run(self, *args: str) -> str:
        environment = {
            f"HELM_{part}_HOME": str(self.home / part.lower()) for part in ("CACHE", "CONFIG", "DATA")
        }
        done = subprocess.run(
            [self.helm, *args, "--kubeconfig", str(self.cluster.kubeconfig), "--namespace", self.namespace],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env={**os.environ, **environment},
        )
        assert done.returncode == 0, f"helm {' '.join(args)} failed:\n{done.stderr}"
        return done.stdout

    def install(self, *settings: str) -> None:
        self._adopt_crds()
        options = [argument for setting in settings for argument in ("--set", setting)]
        self.helm_run("install", self.name, str(CHART), "--create-namespace", *options)

    def uninstall(self) -> None:
        self.helm_run("uninstall", self.name, "--wait")

    def _adopt_crds(self) -> None:
        """CRDs that exist already (the session's `cluster` fixture applies crds/; an earlier release kept
        them) are adopted by this release, as Helm does for objects carrying its ownership metadata."""
        existing = set(self.cluster.kubectl("get", "crd", "-o", "name").stdout.split())
        for name in CRDS + PEERING_CRDS:
            if f"customresourcedefinition.apiextensions.k8s.io/{name}" not in existing:
                continue
            self.cluster.kubectl("label", "crd", name, "app.kubernetes.io/managed-by=Helm", "--overwrite")
            self.cluster.kubectl(
                "annotate", "crd", name, f"meta.helm.sh/release-name={self.name}",
                f"meta.helm.sh/release-namespace={self.namespace}", "--overwrite",
            )  # fmt: skip

    def operator_arguments(self) -> list[str]:
        """The arguments of `tollway run` in the installed Deployment ("run" left out)."""
        deployment = self.cluster.get("deployment", self.fullname, self.namespace)
        arguments = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        assert arguments[0] == "run"
        return list(arguments[1:])

    @property
    def fullname(self) -> str:
        return self.name if "tollway" in self.name else f"{self.name}-tollway"

    def service_account_kubeconfig(self) -> Path:
        """A kubeconfig with a real token of the chart's ServiceAccount: RBAC applies as to the pod."""
        done = subprocess.run(
            [str(ROOT / "hack" / "controlplane"), "kubeconfig-for", f"{self.namespace}/{self.fullname}"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return Path(done.stdout.strip())

    @contextmanager
    def run_operator(self, workdir: Path) -> Iterator[Operator]:
        """The operator with the chart's arguments as the ServiceAccount, resyncing every second; Triton is
        asked on a closed port (no pods run)."""
        extra = ["--resync-seconds", "1", "--triton-address", "127.0.0.1:9"]  # the last of a flag wins
        kubeconfig = self.service_account_kubeconfig()
        with tollway_run(kubeconfig, workdir, *self.operator_arguments(), *extra) as running:
            yield running


@pytest.fixture(scope="module")
def helm() -> str:
    return str(tool_binary("helm", "helm"))  # fails, never skips, when it cannot be built


@pytest.fixture(scope="module")
def third_party_kinds(cluster: Cluster) -> Iterator[None]:
    """Stand-in CRDs for KEDA's ScaledObject and prometheus-operator's kinds (any content accepted)."""
    definitions = [stand_in_crd(*kind) for kind in THIRD_PARTY]
    for definition in definitions:
        cluster.apply(definition)
    names = [definition["metadata"]["name"] for definition in definitions]
    cluster.kubectl(
        "wait", "--for", "condition=Established", "--timeout", "60s", *(f"crd/{n}" for n in names)
    )
    yield
    cluster.kubectl("delete", "crd", *names)  # other test modules expect them absent


def stand_in_crd(group: str, version: str, kind: str) -> dict[str, Any]:
    plural = f"{kind.lower()}s"
    schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "versions": [
                {"name": version, "served": True, "storage": True, "schema": {"openAPIV3Schema": schema}}
            ],
        },
    }


@pytest.fixture(scope="module")
def cluster_wide(
    cluster: Cluster, helm: str, third_party_kinds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    """The chart with its default values: cluster-wide, one replica, CRDs."""
    release = Release("tollway", "tollway-system", cluster, helm, tmp_path_factory.mktemp("helm"))
    release.install()
    yield release
    release.uninstall()
    # The examples' pods hold every GPU of the simulated nodes: give them back to the session's other tests.
    cluster.kubectl("delete", "-f", str(ROOT / "examples"), "--ignore-not-found", "--wait=false")


def examples_in(cluster: Cluster, namespace: str) -> None:
    """examples/ applied into `namespace` (its Secrets and tiers too)."""
    cluster.namespace(namespace)
    loaded = [document for document in documents.load([ROOT / "examples"]) if document["kind"] != "Namespace"]
    for document in loaded:
        document["metadata"]["namespace"] = namespace
    cluster.apply("---\n".join(yaml.safe_dump(document) for document in loaded))


def conditions(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["type"]: item for item in (document.get("status") or {}).get("conditions", [])}


def reasons(document: dict[str, Any]) -> tuple[str, str]:
    """The reasons of its Ready and Degraded conditions."""
    found = conditions(document)
    return found["Ready"]["reason"], found["Degraded"]["reason"]


def settled(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]] | None:
    """Every ModelDeployment and ApiTier of `namespace` by "Kind/name", once each has status for its
    current generation written after its children were seen; else None. (The pass that creates a
    ModelDeployment's Deployment says Creating; the Deployment's watch event brings the next pass.)"""
    listing = json.loads(cluster.kubectl("get", "md,tier", "-n", namespace, "-o", "json").stdout)
    found = {f"{item['kind']}/{item['metadata']['name']}": item for item in listing["items"]}
    for item in found.values():
        generation = item["metadata"]["generation"]
        ready = conditions(item).get("Ready")
        if not ready or ready["observedGeneration"] != generation or ready["reason"] == "Creating":
            return None
        if (item.get("status") or {}).get("observedGeneration") != generation:
            return None
    return found


def quiet(log: Path, seconds: float) -> bool:
    """Whether `log` has not grown for `seconds` (read twice, that far apart)."""
    before = log.stat().st_size
    time.sleep(seconds)
    return log.stat().st_size == before


def rendered_children() -> set[tuple[str, str]]:
    """(kind, name) of everything `tollway render` makes of examples/ in its namespace."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tollway"), "render", "-f", str(ROOT / "examples")],
        capture_output=True,
        text=True,
        check=True,
    )
    return {
        (item["kind"], item["metadata"]["name"])
        for item in yaml.safe_load_all(done.stdout)
        if item["metadata"]["namespace"] == EXAMPLES
    }


def children(cluster: Cluster, namespace: str, kinds: set[str]) -> set[tuple[str, str]]:
    listing = json.loads(
        cluster.kubectl(
            "get", ",".join(sorted(kind.lower() for kind in kinds)), "-n", namespace,
            "-l", "app.kubernetes.io/managed-by=tollway", "-o", "json",
        ).stdout
    )  # fmt: skip
    return {(item["kind"], item["metadata"]["name"]) for item in listing["items"]}


def test_the_operator_reconciles_the_examples_with_only_what_the_chart_grants(
    cluster: Cluster, cluster_wide: Release, tmp_path: Path
) -> None:
    # A control plane reused from an earlier run holds its Deployments, past their progress deadline by now.
    cluster.kubectl(
        "delete", "-f", str(ROOT / "examples"), "--ignore-not-found", "--wait=true", "--timeout=120s"
    )
    cluster.kubectl("apply", "-f", str(ROOT / "examples"))
    # The pods run on the simulated nodes (the four models take their four GPUs), but no Triton answers
    # (the operator asks a closed port); nothing else is wrong but the enterprise tier's mTLS, which needs a
    # gateway certificate (the chart's gateway.tlsSecret, unset by default).
    expected_reasons = {
        "ModelDeployment/assistant": ("TritonUnreachable", "AsExpected"),
        "ModelDeployment/chat": ("TritonUnreachable", "AsExpected"),
        "ModelDeployment/embed": ("TritonUnreachable", "AsExpected"),
        "ModelDeployment/search": ("TritonUnreachable", "AsExpected"),
        "ApiTier/free": ("Applied", "AsExpected"),
        "ApiTier/pro": ("Applied", "AsExpected"),
        "ApiTier/enterprise": ("Applied", "CredentialProblem"),
    }

    def current_reasons() -> dict[str, tuple[str, str]] | None:
        found = settled(cluster, EXAMPLES)
        return {name: reasons(item) for name, item in found.items()} if found else None

    with cluster_wide.run_operator(tmp_path):
        poll(lambda: current_reasons() == expected_reasons, 180, 0.5)
        expected = rendered_children()
        eventually(lambda: children(cluster, EXAMPLES, {kind for kind, _ in expected}) >= expected)
        assert current_reasons() == expected_reasons
    log = (tmp_path / "operator.log").read_text()
    assert "Forbidden" not in log and "forbidden" not in log, log


def test_the_charts_operator_pod_is_scheduled_onto_a_simulated_node(
    cluster: Cluster, cluster_wide: Release
) -> None:
    # kwok reports the pod running, but its Python does not run there (the tests run the operator here).
    deployment = cluster.get("deployment", cluster_wide.fullname, cluster_wide.namespace)
    selector = ",".join(
        f"{key}={value}" for key, value in deployment["spec"]["selector"]["matchLabels"].items()
    )

    def scheduled() -> dict[str, Any] | None:
        listing = cluster.kubectl("get", "pods", "-n", cluster_wide.namespace, "-l", selector, "-o", "json")
        pods = json.loads(listing.stdout)["items"]
        found = {item["type"]: item["status"] for pod in pods for item in pod["status"].get("conditions", [])}
        return pods[0] if len(pods) == 1 and found.get("PodScheduled") == "True" else None

    pod = eventually(scheduled, timeout=120)
    assert pod["spec"]["nodeName"].startswith(NODE_PREFIX)
    assert pod["spec"]["serviceAccountName"] == cluster_wide.fullname


@dataclass(frozen=True)
class Verb:
    group: str
    resource: str
    verb: str
    #: The kind whose status conditions name the refusal; None: only the operator's log can (see VERBS).
    condition_on: str | None


VERBS = {
    # Server-side apply creates a missing child, and the API server authorises that PATCH as a create too.
    "create-deployments": Verb("apps", "deployments", "create", "ModelDeployment"),
    "patch-hpas": Verb("autoscaling", "horizontalpodautoscalers", "patch", "ModelDeployment"),
    # The gateway's Envoy configuration (it holds API keys) is a Secret.
    "create-secrets": Verb("", "secrets", "create", "ApiTier"),
    # The single status writer: without it no condition can say anything, and kopf posts no events for
    # the failures of watch-event handlers, so the refusal shows in the operator's log only.
    "patch-status": Verb("tollway.dev", "modeldeployments/status", "patch", None),
}


def without(rules: list[dict[str, Any]], group: str, resource: str, verb: str) -> list[dict[str, Any]]:
    """The rules with `verb` taken from `resource` only (other resources of its rule keep it)."""
    changed = []
    for rule in rules:
        if (
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and verb in rule["verbs"]
        ):
            others = [name for name in rule["resources"] if name != resource]
            if others:
                changed.append({**rule, "resources": others})
            verbs = [name for name in rule["verbs"] if name != verb]
            if verbs:  # a rule needs a verb
                changed.append({**rule, "resources": [resource], "verbs": verbs})
        else:
            changed.append(rule)
    assert changed != rules, f"the chart grants no {verb} on {group}/{resource}"
    return changed


def refusals(cluster: Cluster, namespace: str, verb: Verb, log: Path) -> str | None:
    """What names a forbidden request in `namespace`: the conditions of `verb.condition_on`, else the
    operator's log lines about its objects."""
    if verb.condition_on:
        listing = json.loads(cluster.kubectl("get", verb.condition_on, "-n", namespace, "-o", "json").stdout)
        messages = [item["message"] for found in listing["items"] for item in conditions(found).values()]
    else:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        messages = [
            line["message"].replace('\\"', '"')  # the API server's JSON reply, quoted in the message
            for line in lines
            if (line.get("object") or {}).get("namespace") == namespace
        ]
    return "\n".join(message for message in messages if "forbidden" in message.lower()) or None


@pytest.mark.parametrize("case", VERBS, ids=list(VERBS))
def test_without_a_verb_the_chart_grants_the_reconcile_fails_and_says_so(
    cluster: Cluster, cluster_wide: Release, tmp_path: Path, case: str
) -> None:
    verb = VERBS[case]
    role = cluster.get("clusterrole", cluster_wide.fullname, "")
    namespace = f"chart-{case}-{os.getpid()}"  # fresh: every child must be created
    replace_rules(cluster, role, without(role["rules"], verb.group, verb.resource, verb.verb))
    try:
        examples_in(cluster, namespace)
        with cluster_wide.run_operator(tmp_path):
            log = tmp_path / "operator.log"
            message = eventually(lambda: refusals(cluster, namespace, verb, log), timeout=60)
    finally:
        replace_rules(cluster, role, role["rules"])  # as the chart installed it
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")  # later operators are cluster-wide
    account = f"system:serviceaccount:{cluster_wide.namespace}:{cluster_wide.fullname}"
    assert f'User "{account}" cannot {verb.verb} resource "{verb.resource}"' in message, message


def replace_rules(cluster: Cluster, role: dict[str, Any], rules: list[dict[str, Any]]) -> None:
    metadata = {key: role["metadata"][key] for key in ("name", "labels", "annotations")}
    body = {"apiVersion": role["apiVersion"], "kind": role["kind"], "metadata": metadata, "rules": rules}
    cluster.kubectl("replace", "-f", "-", stdin=json.dumps(body))


def test_a_namespaced_release_with_two_replicas_serves_from_one_and_leaves_the_crds(
    cluster: Cluster, helm: str, tmp_path: Path
) -> None:
    namespace = cluster.namespace(f"chart-ha-{os.getpid()}")  # its Role goes there: it must exist first
    release = Release("tollway-ha", "tollway-ha", cluster, helm, tmp_path / "helm")
    release.install("replicas=2", f"watchNamespaces={{{namespace}}}")
    assert not cluster.kubectl("get", "role", "-n", EXAMPLES, release.fullname, check=False).stdout
    examples_in(cluster, namespace)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with release.run_operator(tmp_path / "a") as first, release.run_operator(tmp_path / "b") as second:
        eventually(lambda: settled(cluster, namespace), timeout=90)
        peering = partial(cluster.get, "kopfpeering", release.fullname, namespace)
        eventually(lambda: len(peering().get("status") or {}) == 2)  # both keep the peering object alive
        # kopf pauses a replica that sees a live peer of higher priority (the newer one): one stands by.
        paused = eventually(
            lambda: [
                running
                for running in (first, second)
                if "Pausing operations in favour of" in running.log.read_text()
            ]
        )
        assert len(paused) == 1
        assert not any(
            "Possibly conflicting operators" in running.log.read_text() for running in (first, second)
        )
        # A change is applied by the serving replica alone: the standby's resync loop pauses with kopf. What
        # the standby had begun before it paused (its first reconciles, on a loaded machine) ends first.
        serving, standby = (second, first) if paused == [first] else (first, second)
        eventually(lambda: quiet(standby.log, seconds=3), timeout=60)
        seen = {running: len(running.log.read_text()) for running in (serving, standby)}
        cluster.patch("md", "chat", namespace, {"spec": {"batching": {"maxQueueDelayMicroseconds": 3000}}})
        eventually(lambda: "applied" in serving.log.read_text()[seen[serving] :])
        time.sleep(3)  # three more resyncs of the standby
        assert "applied" not in standby.log.read_text()[seen[standby] :]
        assert "forbidden" not in (serving.log.read_text() + standby.log.read_text()).lower()
    release.uninstall()
    kept = cluster.kubectl("get", "crd", *CRDS, *PEERING_CRDS, "-o", "name").stdout.split()
    assert len(kept) == 4  # crds.keep: the resources stay with their definitions
    assert cluster.kubectl("get", "clusterrole", release.fullname, check=False).returncode != 0
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")

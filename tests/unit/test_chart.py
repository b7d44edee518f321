"""The Helm chart without a cluster: lint, golden renders, the values schema, its copies of generated files.

tests/golden/chart/<case>/values.yaml → out.yaml is `helm template` of the chart with those values;
`pytest --update-golden` rewrites out.yaml. The CRDs' bodies are left out of the golden files: they are
crds/ itself, checked by test_the_rendered_crds_are_crds_with_the_charts_metadata.
"""

from __future__ import annotations

import itertools
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tollway import documents
from tollway.cli import parser
from tollway.render.autoscaling import adapter_rules

from testbed.controlplane import K8S_VERSION
from testbed.processes import tool_binary

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "tollway"
GOLDEN = ROOT / "tests" / "golden" / "chart"
CASES = sorted(path.parent for path in GOLDEN.glob("*/values.yaml"))
RELEASE, NAMESPACE = "tollway", "tollway-system"


@pytest.fixture(scope="module")
def helm() -> str:
    return str(tool_binary("helm", "helm"))  # fails, never skips, when it cannot be built


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=120, check=False)


def template(helm: str, *args: str) -> str:
    done = run_helm(
        helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION, *args
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def manifests(text: str) -> Iterator[dict[str, Any]]:
    return (document for document in yaml.safe_load_all(text) if document)


def readable(text: str) -> str:
    """The rendering with each CRD reduced to its metadata (its body is crds/, checked on its own)."""
    parts = []
    for part in text.split("\n---\n"):
        document = yaml.safe_load(part)
        if document and document["kind"] == "CustomResourceDefinition":
            source = part.splitlines()[0]  # "# Source: tollway/templates/…"
            head = {key: document[key] for key in ("apiVersion", "kind", "metadata")}
            note = "# spec: as in its file, crds/ or the chart's files/kopf-crds/"
            parts.append(f"{source}\n{note}\n{documents.dump(head)}")
        else:
            parts.append(part.rstrip("\n") + "\n")
    return "---\n".join(parts)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_golden(helm: str, case: Path, update_golden: bool) -> None:
    rendered = readable(template(helm, "--values", str(case / "values.yaml")))
    if update_golden:
        (case / "out.yaml").write_text(rendered)
    assert (case / "out.yaml").read_text() == rendered


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_lint_is_clean(helm: str, case: Path) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), "--values", str(case / "values.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_the_operator_arguments_are_tollway_run_flags(helm: str, case: Path) -> None:
    rendered = manifests(template(helm, "--values", str(case / "values.yaml")))
    deployment = next(item for item in rendered if item["kind"] == "Deployment")
    arguments = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = parser().parse_args(arguments)  # an unknown flag or value exits
    values = yaml.safe_load((case / "values.yaml").read_text()) or {}
    assert parsed.namespace == values.get("watchNamespaces", [])
    assert (parsed.peering is not None) == (values.get("replicas", 1) > 1)
    assert bool(parsed.triton_metrics_url) == values.get("burstFloor", True)


@pytest.mark.parametrize(
    "setting", ["colour=blue", "gateway.replicaz=3", "crds.keepp=true", "image.digest=sha256:0"]
)
def test_an_unknown_value_is_refused(helm: str, setting: str) -> None:
    done = run_helm(helm, "template", str(CHART), "--kube-version", K8S_VERSION, "--set", setting)
    assert done.returncode != 0
    name = setting.partition("=")[0].rpartition(".")[2]
    assert f"additional properties '{name}' not allowed" in done.stderr


def test_a_value_of_the_wrong_kind_is_refused(helm: str) -> None:
    wrong = "gateway.serviceType=ExternalName"
    done = run_helm(helm, "template", str(CHART), "--kube-version", K8S_VERSION, "--set", wrong)
    assert done.returncode != 0 and "at '/gateway/serviceType'" in done.stderr


def test_every_value_is_documented_and_in_the_schema() -> None:
    lines = (CHART / "values.yaml").read_text().splitlines()
    undocumented = [
        line
        for above, line in itertools.pairwise(lines)
        if line.strip() and not line.lstrip().startswith(("#", "-")) and not above.lstrip().startswith("#")
    ]
    assert not undocumented
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())

    def keys(values: dict[str, Any], node: dict[str, Any], path: str) -> None:
        assert node.get("additionalProperties") is False, f"{path or 'the top'} allows unknown values"
        assert set(values) <= set(node["properties"]), path
        for key, value in values.items():
            if value and isinstance(value, dict) and "properties" in node["properties"][key]:
                keys(value, node["properties"][key], f"{path}.{key}".lstrip("."))

    keys(yaml.safe_load("\n".join(lines)), schema, "")


def test_the_chart_holds_crds_verbatim() -> None:
    """charts/tollway/files/crds is a copy of crds/; `make chart` (hack/sync-chart-crds) refreshes it."""
    ours = {path.name: path.read_bytes() for path in (ROOT / "crds").glob("*.yaml")}
    copies = {path.name: path.read_bytes() for path in (CHART / "files" / "crds").glob("*.yaml")}
    assert copies == ours, "run `make chart`"


def test_the_chart_holds_the_prometheus_adapter_rules() -> None:
    copy = (CHART / "files" / "prometheus-adapter.yaml").read_text()
    assert copy == documents.dump(adapter_rules()), "run `make chart`"


def test_the_rendered_crds_are_crds_with_the_charts_metadata(helm: str) -> None:
    rendered = {
        item["metadata"]["name"]: item
        for item in manifests(template(helm))
        if item["kind"] == "CustomResourceDefinition"
    }
    sources = {path.stem: yaml.safe_load(path.read_text()) for path in (ROOT / "crds").glob("*.yaml")}
    assert set(rendered) == set(sources)
    for name, source in sources.items():
        crd = rendered[name]
        metadata = crd.pop("metadata")
        assert crd == {key: value for key, value in source.items() if key != "metadata"}
        assert metadata["labels"].items() >= source["metadata"]["labels"].items()
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
        assert metadata["annotations"] == {"helm.sh/resource-policy": "keep"}


def test_crds_follow_crds_enabled_and_keep(helm: str) -> None:
    def crds(*settings: str) -> dict[str, dict[str, str]]:
        args = [argument for setting in settings for argument in ("--set", setting)]
        return {
            item["metadata"]["name"]: item["metadata"].get("annotations", {})
            for item in manifests(template(helm, *args))
            if item["kind"] == "CustomResourceDefinition"
        }

    assert crds("crds.enabled=false") == {}
    assert set(crds("replicas=2")) == {
        "modeldeployments.tollway.dev",
        "apitiers.tollway.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    assert all(annotations == {} for annotations in crds("crds.keep=false").values())

"""The `tollway` command without a cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tollway.cli import main, parser

ROOT = Path(__file__).resolve().parents[2]


def test_validate_accepts_the_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(ROOT / "examples")]) == 0
    assert "ApiTier/pro: valid" in capsys.readouterr().out


def test_validate_names_the_field_of_an_invalid_resource(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "-f", str(ROOT / "tests" / "invalid" / "md-min-replicas-above-max.yaml")]) == 1
    error = capsys.readouterr().err
    assert "ModelDeployment/chat: spec.autoscaling.maxReplicas: maxReplicas must be ≥ minReplicas" in error


def test_crds_prints_both_definitions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    names = [document["metadata"]["name"] for document in yaml.safe_load_all(capsys.readouterr().out)]
    assert names == ["modeldeployments.tollway.dev", "apitiers.tollway.dev"]


def test_run_takes_the_gateways_service_type() -> None:
    assert parser().parse_args(["run"]).gateway_service_type == "ClusterIP"
    chosen = parser().parse_args(["run", "--gateway-service-type", "NodePort"])
    assert chosen.gateway_service_type == "NodePort"
    with pytest.raises(SystemExit):
        parser().parse_args(["run", "--gateway-service-type", "ExternalName"])


@pytest.mark.parametrize("command", ["run", "gateway-config"])
def test_the_gateway_trusts_a_count_of_proxies_or_their_networks_never_both(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    required = ["-f", "x", "--out", "y"] if command == "gateway-config" else []
    defaults = parser().parse_args([command, *required])
    assert (
        defaults.trusted_proxy_hops,
        defaults.trusted_proxy_cidr,
        defaults.unauthenticated_rpm_per_ip,
    ) == (
        0,
        [],
        60,
    )
    chosen = parser().parse_args(
        [command, *required, "--trusted-proxy-cidr", "10.1.2.3/8", "--trusted-proxy-cidr", "fd00::/8"]
    )
    assert chosen.trusted_proxy_cidr == ["10.0.0.0/8", "fd00::/8"]
    for wrong in (
        ["--trusted-proxy-hops", "1", "--trusted-proxy-cidr", "10.0.0.0/8"],
        ["--trusted-proxy-cidr", "ten"],
        ["--unauthenticated-rpm-per-ip", "-5"],
    ):
        with pytest.raises(SystemExit):
            parser().parse_args([command, *required, *wrong])
    assert "not allowed with argument" in capsys.readouterr().err

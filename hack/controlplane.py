"""Transitional: tests/unit/test_chart.py still imports K8S_VERSION from here. The control plane lives in
testbed.controlplane; delete this file once that test imports it from there."""

from testbed.controlplane import K8S_VERSION

__all__ = ["K8S_VERSION"]

"""Transitional: tests/unit/test_chart.py still imports tool_binary from here. It lives in
testbed.processes; delete this file once that test imports it from there."""

from testbed.processes import tool_binary

__all__ = ["tool_binary"]

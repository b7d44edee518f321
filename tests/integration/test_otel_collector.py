"""The test bed's OpenTelemetry Collector (hack/testbed/otel.py): a real collector, built from the Go module
proxy, takes an OTLP/HTTP JSON logs request and its file exporter's output reads back as plain records."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

from testbed.otel import Collector, LogRecord

TRACE_ID = "5b8efff798038103d269b633813fc60c"
SPAN_ID = "eee19b7ec3c1b174"


def string(value: str) -> dict[str, Any]:
    return {"stringValue": value}


def export_request() -> dict[str, Any]:
    """Two records, a string body and a kvlist body, in OTLP's protobuf JSON (int64 as strings)."""
    kvlist = {
        "values": [
            {"key": "route", "value": string("/v1/chat/completions")},
            {"key": "status", "value": {"intValue": "429"}},
            {"key": "limited", "value": {"boolValue": True}},
            {"key": "latency_s", "value": {"doubleValue": 0.25}},
            {"key": "models", "value": {"arrayValue": {"values": [string("a"), {"intValue": 7}]}}},
            {
                "key": "upstream",
                "value": {"kvlistValue": {"values": [{"key": "zone", "value": string("b")}]}},
            },
        ]
    }
    return {
        "resourceLogs": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": string("tollway-gateway")}]},
                "scopeLogs": [
                    {
                        "scope": {"name": "envoy.access_loggers.open_telemetry", "version": "1"},
                        "logRecords": [
                            {
                                "timeUnixNano": "1700000000000000001",
                                "severityNumber": 9,
                                "severityText": "INFO",
                                "body": string("hello"),
                                "attributes": [
                                    {"key": "consumer", "value": string("team-a")},
                                    {"key": "tokens", "value": {"intValue": "12"}},
                                ],
                                "traceId": TRACE_ID,
                                "spanId": SPAN_ID,
                            },
                            {
                                "timeUnixNano": "1700000000000000002",
                                "body": {"kvlistValue": kvlist},
                                "attributes": [{"key": "tier", "value": string("gold")}],
                            },
                        ],
                    }
                ],
            }
        ]
    }


def expected(**fields: Any) -> dict[str, Any]:
    """A record as `Collector.records` returns it: every field, the ones not in `fields` at their defaults."""
    record = LogRecord(
        body=None,
        attributes={},
        severity_number=0,
        severity_text="",
        time_unix_nano=0,
        observed_time_unix_nano=0,
        trace_id="",
        span_id="",
        flags=0,
        event_name="",
        resource={"service.name": "tollway-gateway"},
        scope_name="envoy.access_loggers.open_telemetry",
        scope_version="1",
        scope_attributes={},
    )
    return {**record, **fields}


def test_a_logs_request_comes_back_as_plain_records(tmp_path: Path) -> None:
    with Collector(tmp_path) as collector:
        request = urllib.request.Request(
            f"{collector.http_endpoint}/v1/logs",
            data=json.dumps(export_request()).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200

        records = collector.records(lambda record: record["attributes"].get("tier") == "gold")
        assert records, (
            f"no record reached the file exporter; the collector said:\n{collector.log.read_text()}"
        )
        assert collector.records() == [
            expected(
                time_unix_nano=1700000000000000001,
                severity_number=9,
                severity_text="INFO",
                body="hello",
                attributes={"consumer": "team-a", "tokens": 12},
                trace_id=TRACE_ID,
                span_id=SPAN_ID,
            ),
            expected(
                time_unix_nano=1700000000000000002,
                body={
                    "route": "/v1/chat/completions",
                    "status": 429,
                    "limited": True,
                    "latency_s": 0.25,
                    "models": ["a", 7],
                    "upstream": {"zone": "b"},
                },
                attributes={"tier": "gold"},
            ),
        ]

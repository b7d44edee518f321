"""A real OpenTelemetry Collector on loopback (hack/otelcol/main.go, built by hack/build-tools.sh otelcol):
OTLP over gRPC and HTTP in, a logs pipeline with a short batch timeout, and the file exporter writing each
export request as one line of OTLP JSON, which `Collector.records` reads back as plain log records.

    with Collector(tmp_path) as collector:
        ...  # point Envoy's OpenTelemetry access log at collector.grpc_address
        records = collector.records(lambda record: record["body"] == "hello")
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict

from testbed.processes import Process, answers_tcp, free_port, poll, start, tool_binary


class LogRecord(TypedDict):
    """One OTLP log record, flattened: its resource's and scope's fields beside its own, every AnyValue as
    plain Python (str, bool, int, float, bytes, list, dict or None) and attributes as a dict."""

    body: Any
    attributes: dict[str, Any]
    severity_number: int
    severity_text: str
    time_unix_nano: int
    observed_time_unix_nano: int
    trace_id: str
    span_id: str
    flags: int
    event_name: str
    resource: dict[str, Any]
    """The resource's attributes."""
    scope_name: str
    scope_version: str
    scope_attributes: dict[str, Any]


Predicate = Callable[[LogRecord], bool]


def plain(value: dict[str, Any]) -> Any:
    """An OTLP AnyValue (protobuf JSON) as plain Python; an empty one is None."""
    if "stringValue" in value:
        return str(value["stringValue"])
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])  # int64: a string in protobuf JSON
    if "doubleValue" in value:
        return float(value["doubleValue"])  # also "NaN", "Infinity", "-Infinity"
    if "bytesValue" in value:
        return base64.b64decode(value["bytesValue"])
    if "arrayValue" in value:
        return [plain(item) for item in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return attributes(value["kvlistValue"].get("values", []))
    return None


def attributes(pairs: list[dict[str, Any]]) -> dict[str, Any]:
    """OTLP KeyValue pairs as a dict of plain values."""
    return {pair["key"]: plain(pair.get("value", {})) for pair in pairs}


def log_records(request: dict[str, Any]) -> list[LogRecord]:
    """The log records of one ExportLogsServiceRequest in protobuf JSON form, flattened."""
    found: list[LogRecord] = []
    for resource_logs in request.get("resourceLogs", []):
        resource = attributes(resource_logs.get("resource", {}).get("attributes", []))
        for scope_logs in resource_logs.get("scopeLogs", []):
            scope = scope_logs.get("scope", {})
            for record in scope_logs.get("logRecords", []):
                found.append(
                    LogRecord(
                        body=plain(record.get("body", {})),
                        attributes=attributes(record.get("attributes", [])),
                        severity_number=int(record.get("severityNumber", 0)),
                        severity_text=str(record.get("severityText", "")),
                        time_unix_nano=int(record.get("timeUnixNano", 0)),
                        observed_time_unix_nano=int(record.get("observedTimeUnixNano", 0)),
                        trace_id=str(record.get("traceId", "")),
                        span_id=str(record.get("spanId", "")),
                        flags=int(record.get("flags", 0)),
                        event_name=str(record.get("eventName", "")),
                        resource=resource,
                        scope_name=str(scope.get("name", "")),
                        scope_version=str(scope.get("version", "")),
                        scope_attributes=attributes(scope.get("attributes", [])),
                    )
                )
    return found


class Collector:
    """The collector with its own config in `workdir` (a temporary directory, removed on stop, when None).
    Its ports are chosen on construction, so that what sends to it can be configured before it starts.
    A context manager: `with Collector(...) as collector:` starts it and stops it."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        batch_timeout: str = "100ms",
        debug: bool = False,
        start_timeout: float = 60,
    ) -> None:
        """`batch_timeout`: the batch processor's (a Go duration); `debug`: also print every record to the
        collector's log (`Collector.log`), through the debug exporter."""
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="tollway-otelcol-")) if workdir is None else workdir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.batch_timeout = batch_timeout
        self.debug = debug
        self.start_timeout = start_timeout
        directory = self.workdir / f"otelcol-{self.grpc_port}"
        self.config_file = directory / "config.yaml"
        self.output = directory / "logs.jsonl"
        """The file exporter's output: one ExportLogsServiceRequest in protobuf JSON a line."""
        self.log = directory / "otelcol.log"
        """The collector's own output (stdout and stderr)."""
        self.process: Process | None = None

    @property
    def grpc_address(self) -> str:
        """The OTLP gRPC receiver, as host:port."""
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        """The OTLP HTTP receiver's base URL (logs are posted to /v1/logs under it)."""
        return f"http://127.0.0.1:{self.http_port}"

    def config(self) -> dict[str, Any]:
        """The collector's configuration (JSON is YAML, which the collector reads)."""
        exporters: dict[str, Any] = {"file": {"path": str(self.output), "format": "json"}}
        if self.debug:
            exporters["debug"] = {"verbosity": "detailed"}
        return {
            "receivers": {
                "otlp": {
                    "protocols": {
                        "grpc": {"endpoint": self.grpc_address},
                        "http": {"endpoint": f"127.0.0.1:{self.http_port}"},
                    }
                }
            },
            "processors": {"batch": {"timeout": self.batch_timeout}},
            "exporters": exporters,
            "service": {
                # No metrics server of its own: its default port would be shared by every collector.
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
                "pipelines": {
                    "logs": {"receivers": ["otlp"], "processors": ["batch"], "exporters": list(exporters)}
                },
            },
        }

    def start(self) -> Collector:
        """Start it and wait until both receivers accept connections; AssertionError with its log if it
        exits or does not within `start_timeout` seconds."""
        self.config_file.parent.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(json.dumps(self.config(), indent=2))
        grpc_up, http_up = answers_tcp(self.grpc_port), answers_tcp(self.http_port)
        self.process = start(
            "otelcol",
            [str(tool_binary("otelcol", "otelcol")), f"--config=file:{self.config_file}"],
            self.log,
            lambda: grpc_up() and http_up(),
            timeout=self.start_timeout,
        )
        return self

    def stop(self) -> None:
        """Stop it (SIGTERM: the batch in flight is written first); the temporary workdir goes too."""
        if self.process is not None:
            self.process.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def all_records(self) -> list[LogRecord]:
        """Every record written so far, in the order written (a line still being written is left out)."""
        if not self.output.exists():
            return []
        text = self.output.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [record for line in complete.splitlines() if line for record in log_records(json.loads(line))]

    def records(self, predicate: Predicate | None = None, timeout: float = 10) -> list[LogRecord]:
        """The records that match `predicate` (all of them when None), once at least one does or when
        `timeout` seconds have passed (then possibly none)."""

        def matching() -> list[LogRecord]:
            return [record for record in self.all_records() if predicate is None or predicate(record)]

        return poll(matching, timeout, interval=0.05) or []

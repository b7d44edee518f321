"""`tollway run | render | crds | validate | openai-server …`: the same core behind every command."""

from __future__ import annotations

import argparse
import csv
import ipaddress
import json
import os
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from tollway import documents
from tollway.api import KINDS, RESOURCES, ApiTier, ModelDeployment, Resource
from tollway.api.crd import custom_resource_definition
from tollway.api.parse import InvalidResource, parse
from tollway.api.reference import reference
from tollway.ir.gateway import CAPACITY_FILE, Endpoint, Runtime
from tollway.ir.names import CACHE_PASSWORD_VARIABLE, TRITON_GRPC_PORT
from tollway.ir.network import OPERATOR, PROMETHEUS, NetworkPeers, Peer
from tollway.observe import prometheus
from tollway.render.autoscaling import adapter_config_map, adapter_rules
from tollway.render.gateway import NOTICES_FILE, gateway_files
from tollway.settings import Settings
from tollway.translate import translate_all, translate_gateway
from tollway.translate.cost import plan_cost
from tollway.translate.cost import report_rows as cost_report_rows
from tollway.translate.gateway import GatewayOptions
from tollway.translate.sla import excluded_minutes, period_bounds, period_of, plan_sla, report_rows

ResourceKind = TypeVar("ResourceKind", bound=Resource)

#: How clients may reach a gateway's Envoy (ExternalName would point the Service elsewhere).
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")


def crds(arguments: argparse.Namespace) -> int:
    definitions = [custom_resource_definition(resource) for resource in RESOURCES]
    if arguments.out is None:
        sys.stdout.write("---\n".join(documents.dump(definition) for definition in definitions))
        return 0
    out = Path(arguments.out)
    out.mkdir(parents=True, exist_ok=True)
    for definition in definitions:
        (out / f"{definition['metadata']['name']}.yaml").write_text(documents.dump(definition))
    return 0


def validate(arguments: argparse.Namespace) -> int:
    failures = 0
    for document in documents.load(arguments.filename):
        kind = KINDS.get(str(document.get("kind")))
        if kind is None:
            continue
        name = (document.get("metadata") or {}).get("name", "")
        try:
            parse(kind, document)
            print(f"{kind.kind_name}/{name}: valid")
        except InvalidResource as invalid:
            failures += 1
            for problem in invalid.problems:
                print(f"{kind.kind_name}/{name}: {problem}", file=sys.stderr)
    return 1 if failures else 0


def render(arguments: argparse.Namespace) -> int:
    """Everything Tollway would apply for the given resources, without a cluster."""
    rendered: list[dict[str, Any]] = []
    failed = False
    translation = translate_all(
        documents.load(arguments.filename), datetime.now(UTC), fresh=secrets.token_hex(32)
    )
    for document, result in translation.resources:
        for problem in result.problems:
            failed = True
            print(f"{document['kind']}/{document['metadata'].get('name', '')}: {problem}", file=sys.stderr)
        rendered += result.manifests
    for gateway in translation.gateways.values():
        rendered += gateway.manifests
    if any(manifest["kind"] == "HorizontalPodAutoscaler" for manifest in rendered):
        rendered.append(adapter_config_map(arguments.adapter_namespace))
    if arguments.out is None:
        sys.stdout.write("---\n".join(documents.dump(manifest) for manifest in rendered))
    else:
        out = Path(arguments.out)
        out.mkdir(parents=True, exist_ok=True)
        for manifest in rendered:
            meta = manifest["metadata"]
            (out / f"{meta['namespace']}-{manifest['kind'].lower()}-{meta['name']}.yaml").write_text(
                documents.dump(manifest)
            )
    return 1 if failed else 0


def gateway_config(arguments: argparse.Namespace) -> int:
    """The files Envoy and the ratelimit service read, so the real binaries can run without a cluster."""
    loaded = documents.load(arguments.filename)
    namespaces = sorted({_namespace(document) for document in loaded if document.get("kind") == "ApiTier"})
    namespace = arguments.namespace or (namespaces[0] if len(namespaces) == 1 else None)
    if namespace is None:
        print(
            f"the files hold ApiTiers in {namespaces or 'no namespace'}: pick one with --namespace",
            file=sys.stderr,
        )
        return 2
    out = Path(arguments.out).resolve()
    upstreams = {}
    for upstream in arguments.upstream:
        model, _, addresses = upstream.partition("=")
        upstreams[model] = tuple(_endpoint(address) for address in addresses.split(","))
    runtime = Runtime(
        envoy_replicas=arguments.replicas,
        ratelimit_address=arguments.ratelimit,
        jwks_ca_file=arguments.jwks_ca,
        tls=(arguments.tls_cert, arguments.tls_key) if arguments.tls_cert else None,
        config_dir=str(out / "envoy"),
        capacity_file=str(out / "capacity" / CAPACITY_FILE),
        listen_port=arguments.port,
        metrics_port=arguments.metrics_port,
        admin_port=arguments.admin_port,
        mtls_port=arguments.tls_port,
        sample_sink=arguments.sample_sink,
        **_client_options(arguments),
    )
    options = GatewayOptions(runtime=runtime, upstreams=upstreams)
    ours = [document for document in loaded if _namespace(document) == namespace]
    resources = [document for document in ours if document.get("kind") in KINDS]
    secrets = [document for document in ours if document.get("kind") == "Secret"]
    now = arguments.now or datetime.now(UTC)
    result = translate_gateway(namespace, resources, secrets, now, options)
    for tier, report in result.plan.reports.items():
        for problem in report.problems:
            print(f"ApiTier/{tier}: {problem}", file=sys.stderr)
    if result.plan.gateway is None:
        print(f"no valid ApiTier in namespace {namespace}: no gateway", file=sys.stderr)
        return 1
    files = gateway_files(result.plan.gateway, now)
    (out / "envoy").mkdir(parents=True, exist_ok=True)
    (out / "ratelimit" / "config").mkdir(parents=True, exist_ok=True)
    (out / "capacity").mkdir(parents=True, exist_ok=True)
    (out / "alertmanager").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        target = {
            "ratelimit.yaml": out / "ratelimit" / "config" / "tollway.yaml",
            CAPACITY_FILE: out / "capacity" / CAPACITY_FILE,  # not in Envoy's watched directory: no reload
            NOTICES_FILE: out / "alertmanager" / NOTICES_FILE,
        }.get(name, out / "envoy" / name)
        _replace(target, text)
    if NOTICES_FILE not in files:
        (out / "alertmanager" / NOTICES_FILE).unlink(missing_ok=True)
    print(out)
    return 0


def sla_report(arguments: argparse.Namespace) -> int:
    """Each SLA tier's (and consumer's) figures of a calendar month, from the gateway's series in
    Prometheus."""
    period, start, end = _reported_period(arguments.period)
    rows: list[dict[str, str]] = []
    for tier in _parsed(arguments.filename, ApiTier):
        if tier.spec.sla is None:
            continue
        sla = plan_sla(tier.spec.sla)
        namespace, name = tier.metadata.namespace, tier.metadata.name
        bounds = (int(start.timestamp()), int(end.timestamp()))
        counts = {
            **prometheus.sla_counts(arguments.prometheus, namespace, name, *bounds),
            **prometheus.sla_counts(arguments.prometheus, namespace, name, *bounds, by="consumer"),
        }
        rows += report_rows(tier, sla, period, counts, excluded_minutes(sla, start, end))
    _write_rows(rows, arguments.format)
    return 0


def cost_report(arguments: argparse.Namespace) -> int:
    """Each costed model's serving cost over a calendar month, and each tier's share of it, revenue and
    margin, from Triton's and the gateway's series in Prometheus."""
    period, start, end = _reported_period(arguments.period)
    tiers = _parsed(arguments.filename, ApiTier)
    rows: list[dict[str, str]] = []
    for model in _parsed(arguments.filename, ModelDeployment):
        cost = plan_cost(model)
        if cost is None:
            continue
        namespace = model.metadata.namespace
        counts = prometheus.cost_counts(
            arguments.prometheus, namespace, model.model_name, int(start.timestamp()), int(end.timestamp())
        )
        priced = {tier.metadata.name: tier for tier in tiers if tier.metadata.namespace == namespace}
        rows += cost_report_rows(model, cost, priced, period, counts)
    _write_rows(rows, arguments.format)
    return 0


def _reported_period(period: str | None) -> tuple[str, datetime, datetime]:
    """A report's period (this month without one) and its bounds, the end no later than now."""
    now = datetime.now(UTC)
    period = period or period_of(now)
    start, end = period_bounds(period)
    return period, start, min(end, now)


def _parsed(filenames: list[str], kind: type[ResourceKind]) -> list[ResourceKind]:
    """The resources of `kind` in the files (kubectl's `-o yaml` lists included), each validated."""
    loaded = documents.load(filenames)
    items = [item for document in loaded for item in document.get("items") or [document]]
    return [parse(kind, item) for item in items if item.get("kind") == kind.kind_name]


def _write_rows(rows: list[dict[str, str]], form: str) -> None:
    """Rows as an aligned table, CSV or JSON, on standard output."""
    if form == "json":
        print(json.dumps(rows, indent=1))
        return
    columns = list(rows[0]) if rows else []
    if form == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    widths = {column: max(len(column), *(len(row[column]) for row in rows)) for column in columns}
    for line in [dict(zip(columns, columns, strict=True)), *rows]:
        print("  ".join(line[column].ljust(widths[column]) for column in columns).rstrip())


def api_reference(_: argparse.Namespace) -> int:
    """The API reference in Markdown, from the models (docs/api-reference.md)."""
    sys.stdout.write(reference(RESOURCES))
    return 0


def adapter_config(_: argparse.Namespace) -> int:
    """prometheus-adapter's rules for the metrics Tollway's HPAs read (its --config file)."""
    sys.stdout.write(documents.dump(adapter_rules()))
    return 0


def _replace(path: Path, text: str) -> None:
    """Write by rename, so a watching Envoy or ratelimit service never reads half a file."""
    partial = path.with_name(f".{path.name}.tmp")
    partial.write_text(text)
    partial.replace(path)


def _peer(text: str) -> Peer:
    try:
        return Peer.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def _moment(text: str) -> datetime:
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} names no time zone (end it with Z or an offset)")
    return moment


def _endpoint(address: str) -> Endpoint:
    """HOST:PORT[:GRPC_PORT[:OPENAI_PORT]] (the gRPC port defaults to Triton's; no OpenAI port: none)."""
    host, _, ports = address.partition(":")
    http, _, rest = ports.partition(":")
    grpc, _, openai = rest.partition(":")
    return Endpoint(host, int(http), int(grpc or TRITON_GRPC_PORT), int(openai) if openai else None)


def _namespace(document: dict[str, Any]) -> str:
    return str((document.get("metadata") or {}).get("namespace", "default"))


SAMPLE_SINK_HELP = (
    "HOST:PORT of an OTLP/gRPC logs receiver (an OpenTelemetry Collector): quality samples, feedback"
)


def _add_client_flags(command: argparse.ArgumentParser) -> None:
    """How the gateway tells who its clients are and what those without a credential may do."""
    trusted = command.add_mutually_exclusive_group()
    trusted.add_argument(
        "--trusted-proxy-hops",
        type=_count,
        default=Runtime.trusted_proxy_hops,
        help="proxies in front of Envoy that append to X-Forwarded-For: the client is the address that many "
        "entries from its right end (0: the connection's peer)",
    )
    trusted.add_argument(
        "--trusted-proxy-cidr",
        action="append",
        default=[],
        type=_network,
        help="a network of the proxy in front of Envoy (repeatable): a request from it comes from the last "
        "X-Forwarded-For address",
    )
    command.add_argument(
        "--unauthenticated-rpm-per-ip",
        type=_count,
        default=Runtime.unauthenticated_rpm_per_ip,
        help="requests per minute from one client address without a valid credential (0: unlimited)",
    )


def _client_options(arguments: argparse.Namespace) -> dict[str, Any]:
    """Runtime's fields of _add_client_flags."""
    return {
        "trusted_proxy_hops": arguments.trusted_proxy_hops,
        "trusted_proxy_cidrs": tuple(arguments.trusted_proxy_cidr),
        "unauthenticated_rpm_per_ip": arguments.unauthenticated_rpm_per_ip or None,
    }


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is no whole number of 0 or more")
    return int(text)


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is no whole number above 0")
    return int(text)


def _cache_store(text: str) -> str:
    """`pod`, or `redis://HOST:PORT`."""
    if text == "pod":
        return text
    try:
        address = urlsplit(text)
        well_formed = address.scheme == "redis" and bool(address.hostname) and address.port is not None
    except ValueError:
        well_formed = False
    if (
        not well_formed
        or address.path not in ("", "/")
        or address.query
        or address.username
        or address.password
    ):
        raise argparse.ArgumentTypeError(f"{text!r} is neither pod nor redis://HOST:PORT")
    return text


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is no CIDR range") from error


def _metrics_url(text: str) -> str:
    """A template of a pod's metrics page: only {pod_ip}, {pod} and {namespace} to fill in (or empty)."""
    try:
        text.format(pod_ip="10.0.0.1", pod="pod", namespace="namespace")
    except (KeyError, IndexError, ValueError) as error:
        raise argparse.ArgumentTypeError(
            f"{text!r}: a template may name only {{pod_ip}}, {{pod}} and {{namespace}} ({error})"
        ) from error
    return text


def run(arguments: argparse.Namespace) -> int:
    from tollway.runner import run_operator  # noqa: PLC0415 (kopf is slow to import; only `run` needs it)

    settings = Settings(
        namespaces=tuple(arguments.namespace),
        resync_seconds=arguments.resync_seconds,
        liveness_endpoint=arguments.liveness or None,
        peering=arguments.peering,
        triton_address=arguments.triton_address,
        triton_metrics_url=arguments.triton_metrics_url or None,
        storage_initializer_image=arguments.storage_initializer_image,
        tollway_image=arguments.tollway_image,
        prometheus_url=arguments.prometheus_url or None,
        alertmanager_url=arguments.alertmanager_url or None,
        gateway=GatewayOptions(
            runtime=Runtime(
                envoy_replicas=arguments.gateway_replicas,
                service_type=arguments.gateway_service_type,
                redis_address=arguments.redis_address or None,
                tls_secret=arguments.gateway_tls_secret or None,
                sample_sink=arguments.sample_sink or None,
                **_client_options(arguments),
            )
        ),
        network=NetworkPeers(operator=arguments.operator_pods, prometheus=arguments.prometheus_pods),
    )
    run_operator(settings, verbose=arguments.verbose)
    return 0


def openai_server(arguments: argparse.Namespace) -> int:
    """The OpenAI side of one model, beside its Triton (imported here: the operator never needs it)."""
    from tollway.openai.protocol import ChatTemplate  # noqa: PLC0415 (only this command needs them: aiohttp,
    from tollway.openai.server import ModelSide, serve  # noqa: PLC0415 tritonclient's gRPC are slow to import)
    from tollway.openai.store import CacheSettings  # noqa: PLC0415
    from tollway.openai.tokens import TokenCounter  # noqa: PLC0415

    template = None
    if arguments.chat_template:
        template = ChatTemplate(Path(arguments.chat_template).read_text())
    elif arguments.tokenizer_config:
        template = ChatTemplate.from_tokenizer_config(
            json.loads(Path(arguments.tokenizer_config).read_text())
        )
    if arguments.kind == "chat" and template is None:
        print("a chat model needs --chat-template or --tokenizer-config", file=sys.stderr)
        return 2
    side = ModelSide(
        name=arguments.model,
        kind=arguments.kind,
        default_max_tokens=arguments.default_max_tokens,
        text_input=arguments.text_input,
        text_output=arguments.text_output,
        max_tokens_input=arguments.max_tokens_input,
        stream_input=arguments.stream_input,
        embedding_output=arguments.embedding_output,
        template=template,
        tokenizer=TokenCounter.from_file(Path(arguments.tokenizer)) if arguments.tokenizer else None,
    )
    cache = None
    if arguments.cache_store:
        cache = CacheSettings(
            store=arguments.cache_store,
            ttl_seconds=arguments.cache_ttl_seconds,
            sampled=arguments.cache_sampled,
            revision=arguments.cache_revision,
            pod_bytes=arguments.cache_bytes,
            # from the environment: a password on the command line would show in the pod's spec and ps
            redis_password=os.environ.get(CACHE_PASSWORD_VARIABLE) or None,
        )
    serve(side, arguments.triton, arguments.host, arguments.port, cache)
    return 0


def model_config(arguments: argparse.Namespace) -> int:
    """The model directory Triton reads, before it starts: config.pbtxt merged (the repository's, with the
    fields Tollway owns from the rendered one), and, from a read-only claim, each version linked."""
    from google.protobuf.text_format import ParseError  # noqa: PLC0415 (protobuf: this command only)

    from tollway.render.model_config import merge_config  # noqa: PLC0415

    target = Path(arguments.model_dir)
    source = Path(arguments.source) if arguments.source else target
    rendered = Path(arguments.rendered).read_text()
    found = source / "config.pbtxt"
    try:
        config = merge_config(found.read_text(), rendered) if found.is_file() else rendered
    except ParseError as error:
        print(f"{found} is not a Triton model config: {error}", file=sys.stderr)
        return 1
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.pbtxt").write_text(config)
    for version in arguments.versions if arguments.source else ():
        link = target / version
        link.unlink(missing_ok=True)
        link.symlink_to(source / version)
    return 0


def _add_model_config(commands: Any) -> None:
    command = commands.add_parser(
        "model-config",
        help="write a model directory's config.pbtxt: the repository's merged with Tollway's rendered one",
    )
    command.add_argument("--rendered", required=True, help="the config.pbtxt Tollway rendered")
    command.add_argument("--model-dir", required=True, help="the model directory Triton reads")
    command.add_argument(
        "--source", help="the model's directory on a read-only claim: its config.pbtxt, its versions linked"
    )
    command.add_argument("versions", nargs="*", help="with --source: the version directories to link")
    command.set_defaults(handler=model_config)


def _add_run(commands: Any) -> None:
    command = commands.add_parser("run", help="run the operator")
    command.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        help="watch this namespace (repeatable); default: all namespaces",
    )
    command.add_argument("--resync-seconds", type=float, default=Settings.resync_seconds)
    command.add_argument(
        "--liveness", default=Settings.liveness_endpoint, help="liveness URL to serve; empty turns it off"
    )
    command.add_argument("--peering", default=None, help="kopf peering name, to run several replicas")
    command.add_argument(
        "--triton-address",
        default=Settings.triton_address,
        help="how to reach a model's Triton HTTP port; {service} and {namespace} are filled in",
    )
    command.add_argument(
        "--triton-metrics-url",
        type=_metrics_url,
        default=Settings.triton_metrics_url,
        help="where to read one Triton pod's queue for the burst floor; {pod_ip}, {pod} and {namespace} are "
        "filled in; empty turns the burst floor off (the HPA alone scales)",
    )
    command.add_argument(
        "--storage-initializer-image",
        default=Settings.storage_initializer_image,
        help="image that downloads s3://, gs:// and as:// model directories",
    )
    command.add_argument(
        "--tollway-image",
        default=Settings.tollway_image,
        help="Tollway's own image, for the OpenAI server beside a language model's Triton",
    )
    command.add_argument(
        "--prometheus-url",
        default="",
        help="Prometheus for status.metrics and KEDA triggers; empty reads none",
    )
    command.add_argument(
        "--alertmanager-url",
        default="",
        help="Alertmanager to tell of suspended keys (their consumers' notices); empty tells none",
    )
    command.add_argument(
        "--gateway-replicas",
        type=int,
        default=Runtime.envoy_replicas,
        help="Envoy replicas per gateway",
    )
    command.add_argument(
        "--gateway-service-type",
        choices=SERVICE_TYPES,
        default=Runtime.service_type,
        help="Service type of each gateway's Envoy",
    )
    command.add_argument(
        "--redis-address",
        default="",
        help="host:port of the Redis the ratelimit service uses; empty: one per gateway",
    )
    command.add_argument(
        "--gateway-tls-secret",
        default="",
        help="kubernetes.io/tls Secret for the mTLS listener (mTLS tiers need it)",
    )
    command.add_argument(
        "--operator-pods",
        type=_peer,
        default=OPERATOR,
        help="NAMESPACE/KEY=VALUE,...: this operator's pods, which NetworkPolicies let reach Triton",
    )
    command.add_argument(
        "--prometheus-pods",
        type=_peer,
        default=PROMETHEUS,
        help="NAMESPACE/KEY=VALUE,... ('*/...': any namespace): Prometheus's pods, let in to metrics ports",
    )
    command.add_argument(
        "--sample-sink",
        default="",
        help=SAMPLE_SINK_HELP,
    )
    _add_client_flags(command)
    command.add_argument("-v", "--verbose", action="store_true")
    command.set_defaults(handler=run)


def _add_openai_server(commands: Any) -> None:
    command = commands.add_parser(
        "openai-server", help="answer the OpenAI API for one model, beside its Triton (spec.model.openai)"
    )
    command.add_argument("--model", required=True, help="the Triton model name")
    command.add_argument("--kind", choices=("chat", "completion", "embedding"), required=True)
    command.add_argument("--triton", default="127.0.0.1:8001", help="Triton's gRPC address")
    command.add_argument("--host", default="0.0.0.0")
    command.add_argument("--port", type=int, default=9000)
    command.add_argument("--default-max-tokens", type=int, default=256)
    command.add_argument("--text-input", default="text_input")
    command.add_argument("--text-output", default="text_output")
    command.add_argument("--max-tokens-input", default="max_tokens")
    command.add_argument("--stream-input", default="stream")
    command.add_argument("--embedding-output", default="embedding")
    command.add_argument("--chat-template", help="file holding the chat template (Jinja)")
    command.add_argument(
        "--tokenizer-config", help="the model's tokenizer_config.json, for its chat template"
    )
    command.add_argument(
        "--tokenizer", help="the model's tokenizer.json, if it has one: counts tokens when the model does not"
    )
    cache = command.add_argument_group("response cache (off without --cache-store)")
    cache.add_argument(
        "--cache-store",
        type=_cache_store,
        help="pod: in this server's memory; redis://HOST:PORT: a Redis all the model's replicas share "
        f"(its password, if any, from ${CACHE_PASSWORD_VARIABLE})",
    )
    cache.add_argument(
        "--cache-bytes",
        type=_positive,
        default=268435456,
        help="the pod store's bound: its entries' encoded sizes (least recently used dropped first)",
    )
    cache.add_argument(
        "--cache-ttl-seconds", type=_positive, default=3600, help="an entry older than this is never served"
    )
    cache.add_argument(
        "--cache-sampled",
        action="store_true",
        help="cache requests that sample too (neither temperature 0 nor a seed)",
    )
    cache.add_argument(
        "--cache-revision",
        default="",
        help="the operator's digest of the model's config, versions and chat template: part of every key",
    )
    command.set_defaults(handler=openai_server)


def _add_report(
    commands: Any, name: str, handler: Callable[[argparse.Namespace], int], *, about: str, reads: str
) -> None:
    """A monthly report's command: its resources from files, its series from Prometheus."""
    command = commands.add_parser(name, help=about)
    command.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        help=f"{reads}: file or folder (or kubectl -o yaml)",
    )
    command.add_argument("--prometheus", required=True, help="the URL of the Prometheus holding the series")
    command.add_argument("--period", type=_period, help="YYYY-MM (default: this month, so far)")
    command.add_argument("--format", choices=("table", "csv", "json"), default="table")
    command.set_defaults(handler=handler)


def _period(text: str) -> str:
    period_bounds(text)  # ValueError: argparse reports the period as invalid
    return text


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="tollway", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    _add_run(commands)
    _add_model_config(commands)

    command = commands.add_parser("render", help="print (or write to --out) what Tollway would apply")
    command.add_argument("-f", "--filename", action="append", required=True, help="file or folder")
    command.add_argument("--out", help="folder to write one file per object into")
    command.add_argument(
        "--adapter-namespace",
        default="monitoring",
        help="where prometheus-adapter runs (its rules' ConfigMap goes there when an HPA needs them)",
    )
    command.set_defaults(handler=render)

    command = commands.add_parser(
        "gateway-config", help="write the files Envoy and the ratelimit service read, to run them locally"
    )
    command.add_argument("-f", "--filename", action="append", required=True, help="file or folder")
    command.add_argument("--out", required=True, help="folder: envoy/ and ratelimit/config/ go in it")
    command.add_argument("-n", "--namespace", help="the namespace whose gateway to write (when several)")
    command.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="MODEL=HOST:PORT[:GRPC_PORT[:OPENAI_PORT]][,...]",
        help="where a model's Tritons (and OpenAI servers) listen, instead of its Service (repeatable)",
    )
    command.add_argument("--ratelimit", default="127.0.0.1:8081", help="the ratelimit service's gRPC address")
    command.add_argument("--port", type=int, default=8080, help="Envoy's listener port")
    command.add_argument("--admin-port", type=int, default=Runtime.admin_port)
    command.add_argument(
        "--metrics-port", type=int, default=Runtime.metrics_port, help="Envoy's /stats/prometheus port"
    )
    command.add_argument(
        "--tls-port",
        type=int,
        default=Runtime.mtls_port,
        help="the first mTLS tier's port (one per tier)",
    )
    command.add_argument("--tls-cert", help="server certificate file for the mTLS listener")
    command.add_argument("--tls-key", help="its private key file")
    command.add_argument("--jwks-ca", default=Runtime.jwks_ca_file, help="CA bundle for JWKS servers")
    command.add_argument("--sample-sink", help=SAMPLE_SINK_HELP)
    _add_client_flags(command)
    command.add_argument(
        "--replicas", type=int, default=1, help="Envoy replicas sharing concurrency caps (default 1)"
    )
    command.add_argument(
        "--now",
        type=_moment,
        help="render as of this RFC 3339 time instead of the clock's (which keys have expired, which "
        "versions are switched off): reproducible files",
    )
    command.set_defaults(handler=gateway_config)

    _add_report(
        commands,
        "sla-report",
        sla_report,
        about="each SLA tier's and consumer's attainment and credit over a calendar month",
        reads="ApiTiers",
    )
    _add_report(
        commands,
        "cost-report",
        cost_report,
        about="each costed model's GPU-hours, serving cost, and each tier's tokens, revenue and margin over "
        "a calendar month",
        reads="ModelDeployments and ApiTiers",
    )

    command = commands.add_parser("api-reference", help="print the API reference (Markdown) from the models")
    command.set_defaults(handler=api_reference)

    command = commands.add_parser(
        "adapter-config", help="print prometheus-adapter's rules for the metrics Tollway's HPAs read"
    )
    command.set_defaults(handler=adapter_config)

    command = commands.add_parser("crds", help="print the CustomResourceDefinitions, or write them to --out")
    command.add_argument("--out", help="folder to write one file per CRD into")
    command.set_defaults(handler=crds)

    _add_openai_server(commands)

    command = commands.add_parser("validate", help="check resources as the API server and operator would")
    command.add_argument("-f", "--filename", action="append", required=True, help="file or folder")
    command.set_defaults(handler=validate)
    return top


def main(argv: list[str] | None = None) -> int:
    arguments = parser().parse_args(argv)
    return int(arguments.handler(arguments))


if __name__ == "__main__":
    sys.exit(main())

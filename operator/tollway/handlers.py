"""kopf registrations, nothing else: each handler is one line into `reconcile`.

Level-based: every watch event (any change to the resource, its status included) and a periodic resync
(`reconcile.Resync`, started here) run the same reconcile, which writes nothing when nothing changed.
The change handlers return None, so kopf writes no handler results into status (the index handlers
return what kopf keeps in its indexes). They are coroutines that only hand the reconcile over to the
reconciler's own threads (`reconcile.Coalescer`), so kopf's event loop never waits for one. No handler
needs a finalizer, so resources stay deletable while the operator is away. kopf indexes the ApiTiers and
ModelDeployments by namespace from its watch, so the reconciles find a namespace's without listing them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import kopf

from tollway.api import GROUP, RESOURCES, VERSION, Resource
from tollway.k8s.cache import WatchCache, index_id, seen_by_namespace
from tollway.k8s.client import RECONCILE_THREADS
from tollway.k8s.cluster import KubeCluster
from tollway.k8s.watched import (
    CHILD_KINDS,
    DEPLOYMENTS_INDEX,
    INDEX_IDS,
    OURS,
    POD_PROBLEMS_INDEX,
    READY_PODS_INDEX,
    SECRETS_INDEX,
    WatchedChildren,
    deployment_of,
    pod_problems_of,
    ready_pod_of,
    secret_of,
    version_of,
)
from tollway.observe.live import LiveTelemetry
from tollway.reconcile import Burst, Clock, Logger, Reconciler, Resync
from tollway.settings import Settings

#: The kinds of children watched so that an edited or deleted child is restored at once (Secrets are watched
#: whatever their labels: API keys too), and pods, whose troubles show up in the owner's Degraded condition.
CHILDREN = (
    *((kind.group, kind.version, kind.plural) for kind in CHILD_KINDS if kind.plural != "secrets"),
    ("", "v1", "pods"),
)
#: Secrets: Envoy's config (a child) and the API keys that tiers select, by labels of the users' choosing.
SECRETS = ("", "v1", "secrets")
STOP_SECONDS = 20
"""How long the operator may take to stop after SIGTERM before kopf kills it (the pod's grace is 30 s)."""


def registry(settings: Settings, clock: Clock) -> kopf.OperatorRegistry:
    handlers = kopf.OperatorRegistry()

    @kopf.on.login(registry=handlers)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)  # the same credentials as our own kubernetes client

    @kopf.on.startup(registry=handlers)
    def start(memo: kopf.Memo, logger: Logger, **kwargs: Any) -> None:
        _start(kwargs, memo, logger, settings, clock)  # kwargs: kopf's own settings, and the indexes

    @kopf.on.cleanup(registry=handlers)
    def stop(memo: kopf.Memo, **_: Any) -> None:
        memo.resync.stop()
        if memo.burst is not None:
            memo.burst.stop()

    for kind in RESOURCES:
        _index(handlers, kind)
        _watch(handlers, kind)
    for group, version, plural in CHILDREN:
        _watch_child(handlers, group, version, plural)
    _index_children(handlers)
    _watch_secrets(handlers)
    return handlers


def _index(handlers: kopf.OperatorRegistry, kind: type[Resource]) -> None:
    """kopf's index of `kind` by namespace (an indexing handler returns what kopf keeps in memory)."""

    async def index(body: kopf.Body, **_: Any) -> dict[str, Any]:
        return seen_by_namespace(body)

    kopf.index(GROUP, VERSION, kind.plural, id=index_id(kind), registry=handlers)(index)


def _index_children(handlers: kopf.OperatorRegistry) -> None:
    """What a reconcile reads of its children, kept from the watches (`tollway.k8s.watched`)."""
    for kind in CHILD_KINDS:
        _index_child(handlers, (kind.group, kind.version, kind.plural), kind.index_id, version_of)
    _index_child(handlers, ("apps", "v1", "deployments"), DEPLOYMENTS_INDEX, deployment_of)
    _index_child(handlers, ("", "v1", "pods"), POD_PROBLEMS_INDEX, pod_problems_of)
    _index_child(handlers, ("", "v1", "pods"), READY_PODS_INDEX, ready_pod_of)
    _index_child(handlers, SECRETS, SECRETS_INDEX, secret_of)


def _index_child(
    handlers: kopf.OperatorRegistry,
    resource: tuple[str, str, str],
    index_id: str,
    keep: Callable[[Mapping[str, Any]], Mapping[Any, Any]],
) -> None:
    async def index(body: kopf.Body, **_: Any) -> Mapping[Any, Any]:
        return keep(body)

    kopf.index(*resource, labels=OURS, id=index_id, registry=handlers)(index)


def _watch(handlers: kopf.OperatorRegistry, kind: type[Resource]) -> None:
    """Every watch event of `kind` runs the reconcile (the periodic resync runs it too: `Resync`)."""

    async def run(body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
        memo.reconciler.resource_changed(kind, body, logger)

    kopf.on.event(GROUP, VERSION, kind.plural, id=f"{kind.plural}-event", registry=handlers)(run)


def _watch_secrets(handlers: kopf.OperatorRegistry) -> None:
    async def run(body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
        memo.reconciler.secret_changed(body, logger)

    kopf.on.event(*SECRETS, id="secrets", when=_news, registry=handlers)(run)


def _watch_child(handlers: kopf.OperatorRegistry, group: str, version: str, plural: str) -> None:
    async def run(body: kopf.Body, memo: kopf.Memo, logger: Logger, **_: Any) -> None:
        memo.reconciler.child_changed(body, logger)

    kopf.on.event(group, version, plural, labels=OURS, id=f"{plural}-child", when=_news, registry=handlers)(
        run
    )


def _news(body: kopf.Body, memo: kopf.Memo, **_: Any) -> bool:
    """kopf's filter, on its event loop: not the echo of the operator's own apply (`Reconciler.is_echo`)."""
    return not memo.reconciler.is_echo(body)


def _start(kwargs: dict[str, Any], memo: kopf.Memo, logger: Logger, settings: Settings, clock: Clock) -> None:
    """The reconciler, its resync and its burst floor, on kopf's memo: every handler's `memo` is a copy of the
    one startup handlers get, made after them, so each finds the same reconciler there."""
    _configure(kwargs["settings"])  # kopf names its own settings `settings`
    cache = WatchCache({index_id(kind): kwargs[index_id(kind)] for kind in RESOURCES})
    children = WatchedChildren({name: kwargs[name] for name in INDEX_IDS})
    cluster = KubeCluster(cache, children)
    memo.reconciler = Reconciler(settings, cluster, LiveTelemetry(), clock, threads=RECONCILE_THREADS)
    memo.resync = Resync(memo.reconciler, logger)
    memo.resync.start()
    url = settings.triton_metrics_url
    memo.burst = Burst(memo.reconciler, url, logger) if url else None  # None: the HPA alone scales
    if memo.burst is not None:
        memo.burst.start()


def _configure(settings: kopf.OperatorSettings) -> None:
    # kopf would post every log line of a handler as a Kubernetes Event too: a request per line, doubling the
    # events the reconciles record themselves, one per condition change (`reconcile/status.py`).
    settings.posting.enabled = False
    settings.watching.server_timeout = 300  # re-list at least every 5 minutes, whatever the network does
    # A stop drops the queued reconciles (Resync.stop), but a running one may wait on a loaded API server for
    # long: past this, kopf kills the process, well inside the pod's 30 s grace period. Nothing is lost: every
    # reconcile is level-based and idempotent, so the next start converges what this one left.
    settings.process.ultimate_exiting_timeout = STOP_SECONDS

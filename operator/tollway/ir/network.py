"""Who may reach what Tollway runs inside the cluster: the peers its NetworkPolicies admit."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Peer:
    """Pods that a NetworkPolicy admits, by their namespace and labels."""

    namespace: str | None
    """The namespace the pods run in; None: any namespace."""
    pod_labels: tuple[tuple[str, str], ...]
    """Labels every admitted pod carries (empty: every pod of the namespace)."""

    @classmethod
    def parse(cls, text: str) -> Peer:
        """'NAMESPACE/KEY=VALUE,KEY=VALUE' ('*/…' or '/…': any namespace): the operator's flags."""
        namespace, slash, labels = text.partition("/")
        if not slash:
            raise ValueError(f"{text!r}: expected NAMESPACE/KEY=VALUE[,KEY=VALUE...]")
        pairs = []
        for item in filter(None, labels.split(",")):
            key, equals, value = item.partition("=")
            if not equals or not key:
                raise ValueError(f"{text!r}: {item!r} is not KEY=VALUE")
            pairs.append((key, value))
        return cls(namespace=None if namespace in ("", "*") else namespace, pod_labels=tuple(pairs))


#: The chart's operator pods in the namespace the README installs it into.
OPERATOR = Peer("tollway-system", (("app.kubernetes.io/name", "tollway"),))
#: prometheus-operator's Prometheus pods (and most charts' Prometheus), in any namespace.
PROMETHEUS = Peer(None, (("app.kubernetes.io/name", "prometheus"),))


@dataclass(frozen=True)
class NetworkPeers:
    """The pods besides the gateway's own that Tollway's NetworkPolicies let in."""

    operator: Peer = field(default=OPERATOR)
    """The operator: it reads each model's state from Triton's HTTP port, and its queue from each pod's
    metrics port (the burst floor)."""
    prometheus: Peer = field(default=PROMETHEUS)
    """Prometheus: it scrapes Triton's and the ratelimit service's metrics ports."""

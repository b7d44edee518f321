"""What spec.cache becomes: Triton's response cache for a model Triton serves whole, the OpenAI server's
flags for a chat or completion model, and, for `store: shared`, a Redis of the model's own that only its
pods reach, which goes when the spec stops asking for it."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

from tollway.api import ModelDeployment
from tollway.ir.names import CACHE_PASSWORD
from tollway.render.credentials import derived
from tollway.translate import Context, Result, translate

from builders import model_deployment

NOW = datetime(2025, 1, 1, tzinfo=UTC)
LLM = {"spec.model.backend": "vllm", "spec.model.openai": {"kind": "chat", "chatTemplate": "{{ messages }}"}}
CACHE_CHILDREN = {
    ("apps/v1", "Deployment", "chat-cache"),
    ("v1", "Service", "chat-cache"),
    ("networking.k8s.io/v1", "NetworkPolicy", "chat-cache"),
}


def _translated(**changes: Any) -> Result:
    document = model_deployment("chat", **changes)
    return translate(ModelDeployment, document, NOW, Context(admin_key="the-admin-key"))


def _find(result: Result, kind: str, name: str) -> dict[str, Any]:
    return next(m for m in result.manifests if (m["kind"], m["metadata"]["name"]) == (kind, name))


def _openai_container(result: Result) -> dict[str, Any]:
    pod = _find(result, "Deployment", "chat-triton")["spec"]["template"]["spec"]
    return next(container for container in pod["containers"] if container["name"] == "openai")


def _triton_args(result: Result) -> list[str]:
    pod = _find(result, "Deployment", "chat-triton")["spec"]["template"]["spec"]
    return list(pod["containers"][0]["args"])


def test_a_model_triton_serves_whole_uses_tritons_response_cache() -> None:
    result = _translated(**{"spec.cache": {"enabled": True, "sizeBytes": 1024}})
    assert "--cache-config=local,size=1024" in _triton_args(result)
    assert "response_cache" in _find(result, "ConfigMap", "chat-model-config")["data"]["config.pbtxt"]


def test_a_chat_model_is_cached_by_its_openai_server_in_the_pod() -> None:
    cache = {"enabled": True, "sizeBytes": 1024, "ttlSeconds": 60, "sampled": True}
    result = _translated(**LLM, **{"spec.cache": cache})
    args = _openai_container(result)["args"]
    assert args[-5:-2] == ["--cache-store=pod", "--cache-bytes=1024", "--cache-ttl-seconds=60"]
    assert args[-2].startswith("--cache-revision=") and args[-1] == "--cache-sampled"
    assert not any(arg.startswith("--cache-config") for arg in _triton_args(result))  # decoupled: none
    assert "env" not in _openai_container(result)
    assert result.stale == tuple(sorted(CACHE_CHILDREN))  # a shared cache from before goes


def test_a_config_change_changes_the_revision_in_every_key() -> None:
    def revision(**changes: Any) -> str:
        args = _openai_container(_translated(**{**LLM, "spec.cache.enabled": True, **changes}))["args"]
        return next(arg for arg in args if arg.startswith("--cache-revision="))

    assert revision() == revision()
    assert revision() != revision(**{"spec.versions": [{"version": "3"}, {"version": "2"}]})
    template = {"kind": "chat", "chatTemplate": "{{ messages }}!"}
    assert revision() != revision(**{"spec.model.openai": template})


def test_a_shared_cache_is_a_redis_of_the_models_own_reached_by_its_pods_only() -> None:
    cache = {"enabled": True, "store": "shared", "sizeBytes": 1048576}
    result = _translated(**LLM, **{"spec.cache": cache})
    assert {(m["apiVersion"], m["kind"], m["metadata"]["name"]) for m in result.manifests} >= CACHE_CHILDREN
    assert result.stale == ()
    redis = _find(result, "Deployment", "chat-cache")["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][redis["args"].index("--maxmemory") + 1] == "1048576"
    assert redis["args"][redis["args"].index("--maxmemory-policy") + 1] == "allkeys-lru"
    server = _openai_container(result)
    assert "--cache-store=redis://chat-cache.ai.svc.cluster.local:6379" in server["args"]
    # Both read the password from the model's key Secret, derived from (not equal to) the admin key.
    for container in (server, redis):
        assert container["env"][0]["valueFrom"]["secretKeyRef"] == {
            "name": "chat-triton",
            "key": CACHE_PASSWORD,
        }
    stored = _find(result, "Secret", "chat-triton")["data"][CACHE_PASSWORD]
    assert base64.b64decode(stored).decode() == derived("the-admin-key", CACHE_PASSWORD) != "the-admin-key"
    policy = _find(result, "NetworkPolicy", "chat-cache")["spec"]
    assert policy["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "answer-cache"
    (rule,) = policy["ingress"]
    assert rule["from"] == [
        {
            "podSelector": {
                "matchLabels": {"app.kubernetes.io/name": "triton", "app.kubernetes.io/instance": "chat"}
            }
        }
    ]


def test_a_cache_turned_off_leaves_nothing_of_the_shared_one() -> None:
    result = _translated(**LLM)
    assert result.stale == tuple(sorted(CACHE_CHILDREN))
    assert not any(arg.startswith("--cache") for arg in _openai_container(result)["args"])
    assert CACHE_PASSWORD not in _find(result, "Secret", "chat-triton")["data"]

"""What a language model's pods get for the OpenAI API: `tollway openai-server` beside Triton, its port on the
Services and through the NetworkPolicy, its chat template in the model-config ConfigMap."""

from __future__ import annotations

from typing import Any

from tollway.api import ModelDeployment
from tollway.api.parse import parse
from tollway.ir.network import NetworkPeers
from tollway.render import serving as render_serving
from tollway.translate.serving import plan_serving

from builders import model_deployment

TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %}"


def rendered(openai: dict[str, Any] | None, **changes: Any) -> dict[str, dict[str, Any]]:
    document = model_deployment(
        "llm", **{"spec.model.openai": openai, "spec.cache": {"enabled": False}, **changes}
    )
    if openai is None:
        del document["spec"]["model"]["openai"]
    plan = plan_serving(
        parse(ModelDeployment, document), (), "unused", tollway_image="registry.test/tollway:1"
    )
    objects = render_serving.render(plan, NetworkPeers(), "key")
    return {f"{item['kind']}/{item['metadata']['name']}": item for item in objects}


def containers(objects: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = objects["Deployment/llm-triton"]["spec"]["template"]["spec"]
    return {container["name"]: container for container in pod["containers"]}


def test_a_chat_model_gets_the_openai_server_beside_triton_with_its_template() -> None:
    objects = rendered({"kind": "chat", "chatTemplate": TEMPLATE, "textInput": "prompt"})
    server = containers(objects)["openai"]
    assert server["image"] == "registry.test/tollway:1"
    assert server["args"][:3] == ["openai-server", "--model=llm", "--kind=chat"]
    assert "--triton=127.0.0.1:8001" in server["args"] and "--text-input=prompt" in server["args"]
    assert server["args"][-1] == "--chat-template=/etc/tollway/chat_template.jinja"
    assert objects["ConfigMap/llm-model-config"]["data"]["chat_template.jinja"] == TEMPLATE
    for service in ("Service/llm-triton", "Service/llm-triton-pods"):
        assert {"name": "openai", "port": 9000, "targetPort": "openai", "protocol": "TCP"} in objects[
            service
        ]["spec"]["ports"]
    from_gateway = objects["NetworkPolicy/llm-triton"]["spec"]["ingress"][0]["ports"]
    assert [port["port"] for port in from_gateway] == [8000, 8001, 9000]


def test_without_a_template_the_chat_model_reads_the_repositorys_tokenizer_config() -> None:
    server = containers(rendered({"kind": "chat"}))["openai"]
    assert server["args"][-1] == "--tokenizer-config=/models/llm/tokenizer_config.json"


def test_a_completion_model_needs_no_template() -> None:
    server = containers(rendered({"kind": "completion"}))["openai"]
    assert not any(arg.startswith(("--chat-template", "--tokenizer-config")) for arg in server["args"])


def test_an_embedding_model_gets_the_server_for_its_vectors() -> None:
    server = containers(rendered({"kind": "embedding", "embeddingOutput": "vector"}))["openai"]
    assert "--kind=embedding" in server["args"] and "--embedding-output=vector" in server["args"]
    assert not any(arg.startswith(("--default-max-tokens", "--stream-input")) for arg in server["args"])


def test_a_model_without_the_openai_api_gets_no_openai_server_and_no_openai_port() -> None:
    objects = rendered(None)
    assert list(containers(objects)) == ["triton"]
    assert all(port["name"] != "openai" for port in objects["Service/llm-triton"]["spec"]["ports"])


def test_the_pods_restart_when_the_chat_template_changes() -> None:
    def checksum(template: str) -> str:
        deployment = rendered({"kind": "chat", "chatTemplate": template})["Deployment/llm-triton"]
        return str(
            deployment["spec"]["template"]["metadata"]["annotations"][render_serving.CHECKSUM_ANNOTATION]
        )

    assert checksum(TEMPLATE) != checksum(TEMPLATE + " ")

"""A tiny decoupled Triton Python-backend model that streams text like an LLM, for the OpenAI tests.

Inputs follow Triton's vLLM backend: `text_input` (the prompt), optional `max_tokens` and `stream`. It
"generates" `max_tokens` (default 16) tokens: the prompt's words again, in turn, each followed by a space.
Streaming, it sends one response per token, `parameters.delay_ms` (default 20) apart, so that the time to
the first token and the total differ by a known amount, and stops when the request is cancelled (its caller
left), noting how many tokens it had sent in the file `cancelled` of its model directory; not streaming, one
response with all of them. While the file `held` exists in its model directory, a stream pauses after its
first token, so that a test can see that token reach the client while the rest is still to come; a hold
longer than HOLD_LIMIT_S ends the answer there, which the test sees as a short answer. The last response
carries `num_input_tokens` (the prompt's words) and `num_output_tokens`, as the vLLM backend does when
asked, and the final flag; a model whose name ends in `-uncounted` stands in for one that reports no counts
(such as TensorRT-LLM's), and declares neither those outputs nor the inputs that ask for them.
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

HOLD_LIMIT_S = 30


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "text_input", "data_type": "TYPE_STRING", "dims": [1]})
        config.add_input({"name": "max_tokens", "data_type": "TYPE_INT32", "dims": [1], "optional": True})
        config.add_input({"name": "stream", "data_type": "TYPE_BOOL", "dims": [1], "optional": True})
        config.add_output({"name": "text_output", "data_type": "TYPE_STRING", "dims": [-1]})
        if _counted(config.as_dict()["name"]):
            for name in ("return_num_input_tokens", "return_num_output_tokens"):  # the vLLM backend's
                config.add_input({"name": name, "data_type": "TYPE_BOOL", "dims": [1], "optional": True})
            for name in ("num_input_tokens", "num_output_tokens"):
                config.add_output({"name": name, "data_type": "TYPE_UINT32", "dims": [1]})
        return config

    def initialize(self, args):
        self.counted = _counted(args["model_name"])
        # where it notes each request whose caller went away mid-stream (so that tests can see it stopped)
        self.cancelled = Path(args["model_repository"]) / "cancelled"
        self.held = Path(args["model_repository"]) / "held"

    def execute(self, requests):  # decoupled: each request is answered through its sender, not returned
        for request in requests:
            self._generate(request)

    def _generate(self, request):
        sender = request.get_response_sender()
        prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)[0]
        words = (prompt.decode() if isinstance(prompt, bytes) else str(prompt)).split() or ["…"]
        count = _scalar(request, "max_tokens", 16)
        stream = bool(_scalar(request, "stream", False))
        delay = float(json.loads(request.parameters() or "{}").get("delay_ms", 20)) / 1000
        tokens = [words[index % len(words)] + " " for index in range(count)]
        if stream:
            for sent, token in enumerate(tokens):
                if sent == 1 and not self._released():
                    break
                time.sleep(delay)
                if request.is_cancelled():  # nobody waits for the rest: stop generating
                    with self.cancelled.open("a") as noted:
                        noted.write(f"{sent}\n")
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                sender.send(pb_utils.InferenceResponse(output_tensors=[_text(token)]))
            pieces = [_text("")]
        else:
            time.sleep(delay * count)
            pieces = [_text("".join(tokens))]
        counts = [
            pb_utils.Tensor("num_input_tokens", np.array([len(words)], dtype=np.uint32)),
            pb_utils.Tensor("num_output_tokens", np.array([count], dtype=np.uint32)),
        ]
        if not self.counted:
            counts = []
        sender.send(
            pb_utils.InferenceResponse(output_tensors=pieces + counts),
            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def _released(self):
        """Waits while the test holds the stream; False when the hold outlasted HOLD_LIMIT_S."""
        deadline = time.monotonic() + HOLD_LIMIT_S
        while self.held.exists():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True


def _counted(model_name):
    return not model_name.endswith("-uncounted")


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else tensor.as_numpy().reshape(-1)[0].item()


def _text(text):
    return pb_utils.Tensor("text_output", np.array([text.encode()], dtype=np.object_))

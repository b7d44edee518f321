"""A tiny guardrail model for the gateway's prompt checks (ApiTier spec.promptChecks[].guardrailModel):
TEXT (BYTES, dims [1]) in, FLAGGED (BOOL) out: true when the text names one of a few forbidden things, or
asks for a system prompt, in any case. A text that says "slowly" takes a second, as a loaded model would.

It counts its executions in a file beside it (`executions`), so that a test can see whether the gateway
asked it at all."""

import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

FORBIDDEN = ("napalm", "nerve agent", "system prompt")


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "TEXT", "data_type": "TYPE_STRING", "dims": [1]})
        config.add_output({"name": "FLAGGED", "data_type": "TYPE_BOOL", "dims": [1]})
        return config

    def initialize(self, args):
        self.counter = Path(args["model_repository"]) / "executions"

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = pb_utils.get_input_tensor_by_name(request, "TEXT").as_numpy()
            if any(b"slowly" in text.lower() for [text] in texts):
                time.sleep(1.0)
            flagged = [[any(word.encode() in text.lower() for word in FORBIDDEN)] for [text] in texts]
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("FLAGGED", np.array(flagged))])
            )
        with self.counter.open("a") as counted:
            counted.write(f"{len(requests)}\n")
        return responses

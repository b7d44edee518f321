"""A tiny Triton Python-backend model: OUTPUT = INPUT times the version number, plus token usage counts.

It reports the input's length as prompt tokens and `parameters.max_tokens` (else the input's length) as
completion tokens; `parameters.sleep_ms` makes each batch take that long, so tests can saturate its queue.

Each version directory holds a copy-free link to this file (see hack/testbed/triton.py); a version whose
directory holds `broken` fails to initialise, so tests can see how a failed version is reported.
"""

import json
import time
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "INPUT", "data_type": "TYPE_FP32", "dims": [-1]})
        config.add_output({"name": "OUTPUT", "data_type": "TYPE_FP32", "dims": [-1]})
        config.add_output({"name": "USAGE", "data_type": "TYPE_STRING", "dims": [1]})
        return config

    def initialize(self, args):
        directory = Path(args["model_repository"]) / args["model_version"]
        if (directory / "broken").exists():
            raise RuntimeError(f"version {args['model_version']} is broken on purpose")
        self.factor = float(args["model_version"])

    def execute(self, requests):
        responses = []
        parameters = [json.loads(request.parameters() or "{}") for request in requests]
        time.sleep(max(float(given.get("sleep_ms", 0)) for given in parameters) / 1000)
        for request, given in zip(requests, parameters, strict=True):
            values = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            prompt = int(values.shape[-1])
            usage = json.dumps(
                {"prompt_tokens": prompt, "completion_tokens": int(given.get("max_tokens", prompt))}
            )
            outputs = [
                pb_utils.Tensor("OUTPUT", (values * self.factor).astype(np.float32)),
                pb_utils.Tensor("USAGE", np.array([[usage.encode()]] * values.shape[0], dtype=np.object_)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

"""A tiny Triton Python-backend model: OUTPUT = INPUT times the version number, plus token usage counts.

Each version directory holds a copy-free link to this file (see tests/integration/triton.py); a version whose
directory holds `broken` fails to initialise, so tests can see how a failed version is reported.
"""

import json
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
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, "INPUT").as_numpy()
            usage = json.dumps(
                {"prompt_tokens": int(values.shape[-1]), "completion_tokens": int(values.shape[-1])}
            )
            outputs = [
                pb_utils.Tensor("OUTPUT", (values * self.factor).astype(np.float32)),
                pb_utils.Tensor("USAGE", np.array([[usage.encode()]] * values.shape[0], dtype=np.object_)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

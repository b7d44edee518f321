"""A tiny Triton Python-backend stand-in for an embedding model, for the OpenAI tests.

Each text of `text_input` (a batch of strings) becomes a vector of 4: its words, its characters, its
letters 'a', and 1. The texts' words are reported as `num_input_tokens` (and 0 as `num_output_tokens`), as
the vLLM backend reports counts when asked.
"""

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        config.add_input({"name": "text_input", "data_type": "TYPE_STRING", "dims": [-1]})
        for name in ("return_num_input_tokens", "return_num_output_tokens"):
            config.add_input({"name": name, "data_type": "TYPE_BOOL", "dims": [1], "optional": True})
        config.add_output({"name": "embedding", "data_type": "TYPE_FP32", "dims": [-1, 4]})
        for name in ("num_input_tokens", "num_output_tokens"):
            config.add_output({"name": name, "data_type": "TYPE_UINT32", "dims": [1]})
        return config

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = [
                value.decode() if isinstance(value, bytes) else str(value)
                for value in pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)
            ]
            vectors = [[len(text.split()), len(text), text.count("a"), 1.0] for text in texts]
            words = sum(len(text.split()) for text in texts)
            outputs = [
                pb_utils.Tensor("embedding", np.array(vectors, dtype=np.float32)),
                pb_utils.Tensor("num_input_tokens", np.array([words], dtype=np.uint32)),
                pb_utils.Tensor("num_output_tokens", np.array([0], dtype=np.uint32)),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

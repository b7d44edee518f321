"""A tiny Triton Python-backend stand-in for an embedding model, for the OpenAI tests.

Each text of `text_input` (a batch of strings) becomes a vector of 4: its words, its characters, its
letters 'a', and 1. The texts' words are reported as `num_input_tokens` (and 0 as `num_output_tokens`), as
the vLLM backend reports counts when asked. Served with a max_batch_size above 0, it batches as an ONNX
embedding model does: a row a text (its vector, its counts).
"""

import json

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        batched = config.as_dict().get("max_batch_size", 0) > 0  # then each dims is one row's
        config.add_input({"name": "text_input", "data_type": "TYPE_STRING", "dims": [1] if batched else [-1]})
        for name in ("return_num_input_tokens", "return_num_output_tokens"):
            config.add_input({"name": name, "data_type": "TYPE_BOOL", "dims": [1], "optional": True})
        config.add_output(
            {"name": "embedding", "data_type": "TYPE_FP32", "dims": [4] if batched else [-1, 4]}
        )
        for name in ("num_input_tokens", "num_output_tokens"):
            config.add_output({"name": name, "data_type": "TYPE_UINT32", "dims": [1]})
        return config

    def initialize(self, args):
        self.batched = json.loads(args["model_config"]).get("max_batch_size", 0) > 0

    def execute(self, requests):
        responses = []
        for request in requests:
            texts = [
                value.decode() if isinstance(value, bytes) else str(value)
                for value in pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)
            ]
            vectors = [[len(text.split()), len(text), text.count("a"), 1.0] for text in texts]
            words = np.array([len(text.split()) for text in texts], dtype=np.uint32)
            if self.batched:  # a row a text
                counts = (words.reshape(-1, 1), np.zeros((len(texts), 1), dtype=np.uint32))
            else:
                counts = (np.array([words.sum()], dtype=np.uint32), np.array([0], dtype=np.uint32))
            outputs = [
                pb_utils.Tensor("embedding", np.array(vectors, dtype=np.float32)),
                pb_utils.Tensor("num_input_tokens", counts[0]),
                pb_utils.Tensor("num_output_tokens", counts[1]),
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
        return responses

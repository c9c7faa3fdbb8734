"""A sentence embedder run by ONNX Runtime on CPU: what `p2p serve` embeds profiles with, to make adapters on the spot.

The sentence-transformers model's own encoder is exported once, when the embedder loads, to an ONNX graph kept in
memory (nothing is written to disk); its own tokenizer, mean pooling and normalisation are kept. Why not run the
model in PyTorch, as the embed stage does: in a server the embedding runs on its own thread while other threads
(HTTP, the engine) run Python, and eager PyTorch takes the GIL back after every one of the encoder's few hundred
ops, so one busy Python thread stretches a profile's embedding from ~70 ms to ~2 s on 2 cores. One ONNX Runtime call
releases the GIL once for the whole forward (~0.2 s beside the same busy thread, which still has a core), and alone
it is ~20% faster than the eager model (docs/benchmarks.md, "Serving"). The vectors are the sentence-transformers ones
to ~1e-6: the embedder compares both on probe texts when it loads and refuses to load where they differ.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from p2p.profiles.embeddings import SentenceEmbedder

#: Texts of several lengths (one with padding in its batch, one with outer spaces) that a loaded graph must embed
#: as the sentence-transformers model does.
PROBES = ["A user who rates films harshly.", "  tags: sci-fi 12, comedy 3, drama 1  ",
          "Recent reviews: " + "a slow, thoughtful film about memory and loss; " * 8]
#: The largest difference from the sentence-transformers vectors accepted at load (they differ by ~2e-7).
TOLERANCE = 1e-4


class UnsupportedEmbedder(ValueError):
    """The model is not one this embedder can run the same way (its modules are not encoder, mean, normalise)."""


class OnnxSentenceEmbedder:
    """`encode` as `base.encode` (the same batches: `base.batches`), through ONNX Runtime.

    ONNX Runtime runs one forward on torch's number of threads; its idle threads sleep instead of spinning, so they
    leave the cores to the decode loop that runs between two embeddings.
    """

    def __init__(self, base: SentenceEmbedder):
        import onnx  # noqa: F401  (torch.onnx.export needs it: missing, it is an ImportError here, not mid-export)
        import onnxruntime as ort
        import torch

        st = base.model
        modules = [type(module).__name__ for module in st]
        pooling = getattr(st[1], "pooling_mode", None) if len(modules) > 1 else None
        if modules not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]) or pooling != "mean":
            raise UnsupportedEmbedder(f"{base.model_id}: modules {modules} (pooling {pooling}); only encoder + mean "
                                      f"pooling (+ normalise) runs in ONNX Runtime")
        self.base, self.normalise = base, modules[-1] == "Normalize"
        self.model_id, self.dim = base.model_id, base.dim
        example = self._features(PROBES[:2])  # two lengths: the traced graph applies the padding mask
        self.inputs = list(example)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(_export(st[0].auto_model, example), options,
                                            providers=["CPUExecutionProvider"])
        differs = float(np.abs(self.encode(PROBES) - base.encode(PROBES)).max())
        if not differs <= TOLERANCE:
            raise UnsupportedEmbedder(f"{base.model_id}: its ONNX graph gives other vectors than the model "
                                      f"(largest difference {differs:.2e} > {TOLERANCE})")

    def _features(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The model's own tokenization (its truncation, padding and stripping), as int64 arrays."""
        features = self.base.model.preprocess(texts)
        return {name: features[name].numpy().astype(np.int64)
                for name in ("input_ids", "attention_mask", "token_type_ids") if name in features}

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        size = self.base.batch_size
        for batch in (whole[i:i + size] for whole in self.base.batches(texts) for i in range(0, len(whole), size)):
            features = self._features([texts[i] for i in batch])
            tokens = self.session.run(None, {name: features[name] for name in self.inputs})[0]
            mask = features["attention_mask"][..., None].astype(np.float32)
            rows = (tokens * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)
            if self.normalise:
                rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
            out[batch] = rows
        return out


def _export(encoder, example: dict[str, np.ndarray]) -> bytes:
    """The encoder's forward (token ids in, last hidden state out) as ONNX bytes, batch and length dynamic."""
    import torch

    names = list(example)

    class Forward(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = encoder

        def forward(self, *tensors):
            return self.encoder(**dict(zip(names, tensors))).last_hidden_state

    buffer = io.BytesIO()
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, "tokens"]}
    with torch.no_grad(), warnings.catch_warnings():
        # The tracer warns about Python branches on shapes in the mask code; for an encoder they take the same way
        # at every length, and the probe check after loading would catch a graph that does not.
        warnings.simplefilter("ignore")
        torch.onnx.export(Forward().eval(), tuple(torch.from_numpy(example[name]) for name in names), buffer,
                          input_names=names, output_names=["tokens"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    return buffer.getvalue()

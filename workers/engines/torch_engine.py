"""sentence-transformers on torch: fp16 on CUDA, fp32 on CPU."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from workers.engines.base import ModelSpec
from workers.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: texts per forward pass on CPU (measured: 16 is ~1.9x faster than 64 on paragraphs)
CPU_ENCODE_BATCH_SIZE = 16


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class TorchEngine:
    def __init__(self, spec: ModelSpec, path: str, *, device: str = "auto", threads: int = 0,
                 encode_batch_size: int = 0):
        try:
            import torch
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:  # pragma: no cover - install hint
            raise ModelLoadError(
                "the torch engine needs torch and sentence-transformers: pip install pgfleet"
            ) from exc
        if threads > 0:
            torch.set_num_threads(threads)
        self.spec = spec
        self.device = pick_device(device)
        try:
            self.model = SentenceTransformer(path, device=self.device)
        except Exception as exc:  # the library raises many kinds for a bad path
            raise ModelLoadError(f"cannot load model {spec.label} from {path!r}: {exc}") from exc
        if self.device.startswith("cuda"):
            self.model.half()
        get_dims = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        self.dimensions = int(get_dims() or spec.dimensions)
        if self.dimensions != spec.dimensions:
            raise ModelLoadError(
                f"model {spec.label} produces {self.dimensions}-dimensional vectors but the "
                f"registry says {spec.dimensions}")
        self.max_seq_length = int(self.model.max_seq_length or spec.max_seq_length or 512)
        self._tokenizer = self.model.tokenizer
        on_gpu = self.device.startswith("cuda")
        self.encode_batch_size = encode_batch_size or (0 if on_gpu else CPU_ENCODE_BATCH_SIZE)
        logger.info("loaded %s on %s (%s dims, max %s tokens)", spec.label, self.device,
                    self.dimensions, self.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        # sentence-transformers sorts by length inside encode, so each forward pass of
        # encode_batch_size texts holds texts of similar length and pads little
        vectors = self.model.encode(
            list(texts), batch_size=self.encode_batch_size or len(texts),
            normalize_embeddings=True,
            convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        encoded = self._tokenizer(list(texts), add_special_tokens=True, truncation=False,
                                  return_attention_mask=False, return_token_type_ids=False,
                                  verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

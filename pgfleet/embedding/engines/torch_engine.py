"""sentence-transformers on torch: fp16 on CUDA, fp32 on CPU.

Texts are grouped by a token budget before each forward pass (see
:func:`pgfleet.embedding.batching.token_budget_groups`): sorted by length, a pass holds as many texts
as fit ``count × longest ≤ budget``, so short texts go many at a time and little compute is
spent on padding. Measured here on documentation paragraphs (2 cores): ~62 docs/s against
~50 for ``model.encode(batch_size=16)`` and ~36 for ``batch_size=64``.
"""

from __future__ import annotations

import logging

import numpy as np

from pgfleet.embedding.engines.base import BudgetedEncoder, ModelSpec
from pgfleet.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: padded tokens per forward pass, by device (0 in settings picks these)
CPU_TOKEN_BUDGET = 1024
CUDA_TOKEN_BUDGET = 262_144


def pick_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


class TorchEngine(BudgetedEncoder):
    def __init__(self, spec: ModelSpec, path: str, *, device: str = "auto", threads: int = 0,
                 token_budget: int = 0):
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
        on_gpu = self.device.startswith("cuda")
        if on_gpu:
            self.model.half()
        get_dims = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.dimensions = int(get_dims() or spec.dimensions)
        if self.dimensions != spec.dimensions:
            raise ModelLoadError(
                f"model {spec.label} produces {self.dimensions}-dimensional vectors but the "
                f"registry says {spec.dimensions}")
        self.max_seq_length = int(self.model.max_seq_length or spec.max_seq_length or 512)
        self.token_budget = token_budget or (CUDA_TOKEN_BUDGET if on_gpu else CPU_TOKEN_BUDGET)
        self.tokenizer = self.model.tokenizer
        logger.info("loaded %s on %s (%s dims, max %s tokens, %s tokens per pass)", spec.label,
                    self.device, self.dimensions, self.max_seq_length, self.token_budget)

    def _encode_group(self, texts: list[str]) -> np.ndarray:
        # sentence-transformers tokenizes inside encode: the whole pass holds the tokenizer
        # (a torch engine runs one pass at a time; a count waits for at most one)
        with self.tokenizer_lock:
            vectors = self.model.encode(texts, batch_size=len(texts),
                                        normalize_embeddings=True, convert_to_numpy=True,
                                        show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

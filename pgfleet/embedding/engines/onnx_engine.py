"""ONNX Runtime engine (fp32 or INT8) for models exported by ``pgfleet train quantize``.

Same interface and output as the torch engine: the transformer runs in ONNX Runtime, then
the source model's pooling (mean over the attention mask, as recorded at export) and L2
normalization give float32 unit vectors. Texts are grouped by the same token budget.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from pgfleet.embedding.engines.base import BudgetedEncoder, ModelSpec
from pgfleet.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: written next to the ONNX files at export: how to pool and what to expect
EXPORT_CONFIG = "pgfleet_onnx.json"
CPU_TOKEN_BUDGET = 512


def onnx_file(directory: Path, model_format: str) -> Path:
    return directory / ("model_int8.onnx" if model_format == "onnx-int8" else "model.onnx")


class OnnxEngine(BudgetedEncoder):
    def __init__(self, spec: ModelSpec, path: str, *, threads: int = 0, token_budget: int = 0,
                 spin: bool = False):
        try:
            import onnxruntime as ort
            from transformers import AutoTokenizer
        except ImportError as exc:  # pragma: no cover - install hint
            raise ModelLoadError("the ONNX engine needs onnxruntime: pip install onnxruntime"
                                 ) from exc
        self.spec = spec
        directory = Path(path)
        model_path = onnx_file(directory, spec.format)
        config_path = directory / EXPORT_CONFIG
        if not model_path.is_file() or not config_path.is_file():
            raise ModelLoadError(f"model version {spec.label}: no {model_path.name} and "
                                 f"{EXPORT_CONFIG} in {directory}")
        try:
            config = json.loads(config_path.read_text("utf-8"))
        except ValueError as exc:
            raise ModelLoadError(f"model version {spec.label}: {config_path} is not JSON") from exc
        if config.get("pooling") not in ("mean", "cls"):
            raise ModelLoadError(f"model version {spec.label}: unknown pooling "
                                 f"{config.get('pooling')!r} in {config_path}")
        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if not spin:
            # idle threads sleep instead of spinning: in a worker that shares its cores with
            # the database and the consumer, spinning steals their time
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(model_path), options,
                                                providers=["CPUExecutionProvider"])
            self.tokenizer = AutoTokenizer.from_pretrained(str(directory))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"model version {spec.label}: cannot load {model_path}: "
                                 f"{str(exc).splitlines()[0][:300]}") from exc
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.pooling = config["pooling"]
        self.normalize = bool(config.get("normalize", True))
        self.dimensions = int(config["dimensions"])
        if self.dimensions != spec.dimensions:
            raise ModelLoadError(f"model version {spec.label}: the ONNX model produces "
                                 f"{self.dimensions} dimensions but the registry says "
                                 f"{spec.dimensions}")
        self.max_seq_length = int(config.get("max_seq_length") or spec.max_seq_length or 256)
        self.token_budget = token_budget or CPU_TOKEN_BUDGET
        logger.info("loaded %s from %s (%s, %s dims)", spec.label, model_path.name, spec.format,
                    self.dimensions)

    def _encode_group(self, texts: list[str]) -> np.ndarray:
        batch = self.tokenize(texts, padding=True, truncation=True,
                              max_length=self.max_seq_length, return_tensors="np")
        feeds = {k: v.astype(np.int64) for k, v in batch.items() if k in self.input_names}
        hidden = self.session.run(None, feeds)[0]
        mask = batch["attention_mask"].astype(np.float32)[..., None]
        if self.pooling == "mean":
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        else:
            pooled = hidden[:, 0]
        if self.normalize:
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float32)

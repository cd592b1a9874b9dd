"""The text-to-SQL model: a T5 encoder-decoder that reads ``question | table : col , ...``
and writes SQL.

With no model hub (the default here), :func:`build` makes a small T5 from a config with a
byte-level tokenizer (``ByT5Tokenizer``, which needs no vocabulary file): nothing is
downloaded. ``base_model`` names a pretrained one instead (``t5-small``,
``google/flan-t5-base`` or a local directory); it must be loadable offline or the error says
so. Models are saved and loaded with ``save_pretrained`` / ``from_pretrained``.
torch and transformers are imported inside the functions: importing this module is cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pgfleet.errors import ModelLoadError

logger = logging.getLogger(__name__)

#: a T5 small enough to train on two CPU cores (about 1.3 M parameters with the BPE
#: vocabulary); measured against wider ones in docs/text2sql.md
SCRATCH_CONFIG: dict[str, Any] = {
    "d_model": 128, "d_kv": 32, "d_ff": 384, "num_layers": 3, "num_decoder_layers": 3,
    "num_heads": 4, "dropout_rate": 0.1, "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128, "feed_forward_proj": "relu",
}
MAX_INPUT_TOKENS = 512
#: what pgfleet needs to know about a saved model beyond transformers' files
SETTINGS_FILE = "pgfleet-text2sql.json"
MAX_TARGET_TOKENS = 320


@dataclass
class Seq2Seq:
    model: Any       # transformers' T5ForConditionalGeneration (or another seq2seq LM)
    tokenizer: Any
    source: str      # "scratch" or what base_model named
    #: whether the model reads questions with their values masked (pgfleet.text2sql.values)
    mask_values: bool = False
    #: whether it reads the columns the question names, listed (pgfleet.text2sql.inputs)
    link_columns: bool = False


def scratch_tokenizer():
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer(extra_ids=0)


def bpe_tokenizer(texts: list[str], vocab_size: int = 1000):
    """A byte-level BPE tokenizer trained on ``texts`` (the training inputs and SQL): every
    text stays encodable (unknown words fall back to bytes), and sequences are about four
    times shorter than with bytes, so a model from scratch trains about as much faster.
    Digits stay single tokens, so that values are copied, not recalled."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # one token per digit: a number or a date in the question is then the same tokens in the
    # SQL, and copying it is what the model must learn (merged digits differ by context)
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", clean_up_tokenization_spaces=False)


def build(base_model: str = "", *, config: dict[str, Any] | None = None,
          seed: int = 0, tokenizer=None) -> Seq2Seq:
    """A new model: loaded from ``base_model`` when given, else built from ``config``
    (:data:`SCRATCH_CONFIG` with its keys overridden) with random weights, reading with
    ``tokenizer`` (default: bytes, :func:`scratch_tokenizer`)."""
    if base_model:
        return load(base_model)
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = tokenizer if tokenizer is not None else scratch_tokenizer()
    settings = {**SCRATCH_CONFIG, **(config or {})}
    # T5Config takes decoder_start_token_id at run time (@strict hands keywords it does not
    # declare to PreTrainedConfig), but its dataclass signature does not name it
    cfg = T5Config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                   eos_token_id=tokenizer.eos_token_id,
                   decoder_start_token_id=tokenizer.pad_token_id,  # type: ignore[call-arg]
                   **settings)
    torch.manual_seed(seed)
    return Seq2Seq(T5ForConditionalGeneration(cfg), tokenizer, "scratch")


def load(path_or_id: str) -> Seq2Seq:
    """A saved or pretrained seq2seq model and its tokenizer, without touching the network
    unless the environment allows it; :class:`~pgfleet.errors.ModelLoadError` otherwise."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    local = Path(path_or_id).expanduser()
    looks_local = path_or_id.startswith(("/", ".", "~")) or local.exists()
    if looks_local and not (local / "config.json").is_file():
        raise ModelLoadError(f"base model {path_or_id!r}: no such model directory (expected a "
                             "directory written by save_pretrained, with config.json)")
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(str(local) if looks_local else path_or_id)
        tokenizer = AutoTokenizer.from_pretrained(str(local) if looks_local else path_or_id)
    except Exception as exc:  # the library raises many kinds for a missing or bad model
        hint = ("" if looks_local else " (a hub id needs a model hub or a local cache; with "
                "HF_HUB_OFFLINE=1 only cached models load — give a local path, or leave "
                "base_model empty to train a small T5 from scratch)")
        raise ModelLoadError(f"cannot load base model {path_or_id!r}: "
                             f"{type(exc).__name__}: {exc}{hint}") from exc
    if not getattr(model.config, "is_encoder_decoder", False):
        raise ModelLoadError(f"base model {path_or_id!r} is not an encoder-decoder "
                             f"({model.config.model_type}); text-to-SQL needs one, e.g. T5")
    model.eval()
    saved: dict[str, Any] = {}
    if looks_local and (local / SETTINGS_FILE).is_file():
        saved = json.loads((local / SETTINGS_FILE).read_text("utf-8"))
    return Seq2Seq(model, tokenizer, path_or_id, bool(saved.get("mask_values", False)),
                   bool(saved.get("link_columns", False)))


def save(seq: Seq2Seq, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    seq.model.save_pretrained(str(directory))
    seq.tokenizer.save_pretrained(str(directory))
    (directory / SETTINGS_FILE).write_text(json.dumps({"mask_values": seq.mask_values,
                                                       "link_columns": seq.link_columns}), "utf-8")


def parameters(seq: Seq2Seq) -> int:
    return int(sum(p.numel() for p in seq.model.parameters()))


def encode(seq: Seq2Seq, inputs: list[str], targets: list[str] | None = None, *,
           max_input: int = MAX_INPUT_TOKENS, max_target: int = MAX_TARGET_TOKENS,
           device: str = "cpu") -> dict[str, Any]:
    """Padded tensors for a batch; padding in the labels is -100 (ignored by the loss)."""
    batch = seq.tokenizer(inputs, max_length=max_input, truncation=True, padding=True,
                          return_tensors="pt")
    features = {"input_ids": batch["input_ids"].to(device),
                "attention_mask": batch["attention_mask"].to(device)}
    if targets is not None:
        labels = seq.tokenizer(text_target=targets, max_length=max_target, truncation=True,
                               padding=True, return_tensors="pt")["input_ids"]
        labels[labels == seq.tokenizer.pad_token_id] = -100
        features["labels"] = labels.to(device)
    return features


def generate(seq: Seq2Seq, inputs: list[str], *, beams: int = 4, candidates: int | None = None,
             max_new_tokens: int | None = None, device: str = "cpu") -> list[list[str]]:
    """For each input, ``candidates`` (default: ``beams``) SQL strings, best first.
    ``beams=1`` is greedy decoding. Generation stops at ``max_new_tokens``: by default the
    model's own (training sets it from the longest SQL it saw), else MAX_TARGET_TOKENS."""
    import torch

    count = beams if candidates is None else min(candidates, beams)
    if max_new_tokens is None:
        max_new_tokens = seq.model.generation_config.max_new_tokens or MAX_TARGET_TOKENS
    features = encode(seq, inputs, device=device)
    with torch.inference_mode():
        out = seq.model.generate(**features, num_beams=beams, num_return_sequences=count,
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 early_stopping=beams > 1)
    texts = [t.strip() for t in seq.tokenizer.batch_decode(out, skip_special_tokens=True)]
    return [texts[i * count:(i + 1) * count] for i in range(len(inputs))]

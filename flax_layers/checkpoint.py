"""Loading Hugging Face BERT checkpoints (``config.json`` + ``model.safetensors``) into NNX.

No network and no PyTorch: the weights are read with ``safetensors.numpy``
(an optional peer, imported lazily). Keys are matched to :class:`BertModel`
parameters; anything missing (e.g. the MLM head of a sentence-embedding
checkpoint such as all-MiniLM-L6-v2) keeps its random initialisation and is
listed in the returned :class:`LoadReport`, as is anything unexpected (e.g. a
next-sentence-prediction head). The vocabulary can be trimmed on the fly with
``keep_tokens`` as in bert4keras, for small-vocabulary fine-tuning.

Reference: the HF ``BertModel`` / ``BertForMaskedLM`` parameter layout
(huggingface/transformers, ``modeling_bert.py``); bert4keras ``build_transformer_model
(..., keep_tokens=...)`` (Su, kexue.fm/archives/7147).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_layers.bert import BertConfig, BertModel

__all__ = ["LoadReport", "bert_param_map", "load_hf_bert", "load_safetensors"]

logger = logging.getLogger(__name__)

# Buffers, never parameters of their own.
_IGNORED = (re.compile(r"^embeddings\.position_ids$"),)
_DECODER = "cls.predictions.decoder.weight"  # tied to the word embeddings in BERT
_WORD = "embeddings.word_embeddings.weight"


@dataclasses.dataclass(frozen=True)
class LoadReport:
    """What :func:`load_hf_bert` did with each weight.

    Args:
      loaded: checkpoint keys copied into the model.
      missing: model parameters (as HF keys) absent from the checkpoint; they keep
        their random initialisation.
      unexpected: checkpoint keys with no counterpart in the model.
      ignored: buffers or tied copies skipped on purpose (``position_ids``, a
        ``cls.predictions.decoder.weight`` equal to the word embeddings; an untied
        decoder is listed in ``unexpected`` since the model always ties it).

    Returns:
      An immutable report; ``str(report)`` is a one-paragraph summary and
      ``report.ok`` is True when nothing is missing or unexpected.

    Example:
      >>> r = LoadReport(loaded=("a",), missing=("cls.predictions.bias",),
      ...                unexpected=(), ignored=())
      >>> r.ok
      False
      >>> print(r)
      loaded 1 weights; missing (initialised): cls.predictions.bias
    """

    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when every model parameter was loaded and every key was used."""
        return not self.missing and not self.unexpected

    def __str__(self) -> str:
        parts = [f"loaded {len(self.loaded)} weights"]
        if self.missing:
            parts.append("missing (initialised): " + ", ".join(self.missing))
        if self.unexpected:
            parts.append("unexpected (unused): " + ", ".join(self.unexpected))
        if self.ignored:
            parts.append("ignored: " + ", ".join(self.ignored))
        return "; ".join(parts)


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Reads a ``.safetensors`` file into numpy arrays (needs the ``safetensors`` peer).

    Args:
      path: the file, or a directory holding ``model.safetensors``.

    Returns:
      A ``{name: array}`` dictionary.

    Raises:
      ImportError: if ``safetensors`` is not installed.
      FileNotFoundError: if the file does not exist.

    Example:
      >>> import tempfile, os
      >>> from safetensors.numpy import save_file
      >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> save_file({"x": np.ones((2, 3), np.float32)}, p)
      >>> load_safetensors(p)["x"].shape
      (2, 3)
    """
    try:
        from safetensors.numpy import load_file
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "Loading Hugging Face checkpoints needs the optional 'safetensors' package: "
            "pip install safetensors (or optax-flax-contrib[peers])."
        ) from err
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.exists(path):
        raise FileNotFoundError(f"load_safetensors: no such file {path!r}.")
    return load_file(path)


def _linear(prefix: str, layer: nnx.Linear) -> dict[str, tuple[nnx.Variable, bool]]:
    # HF stores torch Linear weights as [out, in]; NNX kernels are [in, out].
    return {f"{prefix}.weight": (layer.kernel, True), f"{prefix}.bias": (layer.bias, False)}


def _layer_norm(prefix: str, norm: nnx.LayerNorm) -> dict[str, tuple[nnx.Variable, bool]]:
    return {f"{prefix}.weight": (norm.scale, False), f"{prefix}.bias": (norm.bias, False)}


def bert_param_map(model: BertModel) -> dict[str, tuple[nnx.Variable, bool]]:
    """Maps Hugging Face BERT weight names to the model's parameters.

    Args:
      model: a :class:`BertModel`.

    Returns:
      ``{hf_key: (param, transpose)}`` where ``transpose`` says whether the HF
      array is ``[out, in]`` and must be transposed into the NNX kernel.

    Example:
      >>> cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> keys = bert_param_map(BertModel(cfg, rngs=nnx.Rngs(0)))
      >>> len(keys), "encoder.layer.0.attention.self.query.weight" in keys
      (28, True)
    """
    m: dict[str, tuple[nnx.Variable, bool]] = {}
    e = model.embeddings
    m["embeddings.word_embeddings.weight"] = (e.word_embeddings.embedding, False)
    m["embeddings.position_embeddings.weight"] = (e.position_embeddings.embedding, False)
    m["embeddings.token_type_embeddings.weight"] = (e.token_type_embeddings.embedding, False)
    m.update(_layer_norm("embeddings.LayerNorm", e.norm))
    for i, layer in enumerate(model.layers):
        p = f"encoder.layer.{i}"
        m.update(_linear(f"{p}.attention.self.query", layer.query))
        m.update(_linear(f"{p}.attention.self.key", layer.key))
        m.update(_linear(f"{p}.attention.self.value", layer.value))
        m.update(_linear(f"{p}.attention.output.dense", layer.attention_output))
        m.update(_layer_norm(f"{p}.attention.output.LayerNorm", layer.attention_norm))
        m.update(_linear(f"{p}.intermediate.dense", layer.intermediate))
        m.update(_linear(f"{p}.output.dense", layer.output))
        m.update(_layer_norm(f"{p}.output.LayerNorm", layer.output_norm))
    if model.pooler is not None:
        m.update(_linear("pooler.dense", model.pooler))
    if model.mlm_transform is not None:
        m.update(_linear("cls.predictions.transform.dense", model.mlm_transform))
        m.update(_layer_norm("cls.predictions.transform.LayerNorm", model.mlm_norm))
        m["cls.predictions.bias"] = (model.mlm_bias, False)
    return m


def _canonical_key(key: str) -> str:
    """Strips task-model prefixes and renames TF-era LayerNorm gamma/beta."""
    for prefix in ("bert.", "model."):
        if key.startswith(prefix) and not key.startswith(prefix + "cls."):
            key = key[len(prefix) :]
            break
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    if key == "cls.predictions.decoder.bias":
        key = "cls.predictions.bias"
    return key


def _check_keep_tokens(keep_tokens: Sequence[int], vocab_size: int) -> np.ndarray:
    keep = np.asarray(keep_tokens)
    if keep.ndim != 1 or keep.size == 0 or not np.issubdtype(keep.dtype, np.integer):
        raise ValueError(
            f"keep_tokens must be a non-empty 1-D sequence of integer token ids, got {keep!r}."
        )
    if keep.min() < 0 or keep.max() >= vocab_size:
        raise ValueError(
            f"keep_tokens must lie in [0, vocab_size={vocab_size}), got range "
            f"[{keep.min()}, {keep.max()}]."
        )
    return keep


def load_hf_bert(
    path: str | os.PathLike[str],
    *,
    keep_tokens: Sequence[int] | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    with_mlm_head: bool = True,
    with_pooler: bool = True,
    strict: bool = False,
    rngs: nnx.Rngs | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[BertModel, LoadReport]:
    """Builds a :class:`BertModel` from a Hugging Face BERT directory.

    Reads ``config.json`` and ``model.safetensors`` (no network, no PyTorch),
    optionally keeps only the rows ``keep_tokens`` of the word embeddings and of
    the MLM bias (new id ``i`` = old id ``keep_tokens[i]``; bert4keras
    ``keep_tokens``), copies every matching weight (transposing ``Linear``
    weights) and reports the rest. Parameters absent from the checkpoint keep
    their random (truncated-normal, LayerNorm = identity) initialisation and are
    listed in ``report.missing`` and logged as a warning.

    Args:
      path: directory with ``config.json`` and ``model.safetensors``.
      keep_tokens: optional 1-D list of token ids to keep, in the new order.
      dtype: compute dtype of the model (e.g. ``jnp.bfloat16``).
      param_dtype: storage dtype of the parameters.
      with_mlm_head: build (and load, when present) the MLM head.
      with_pooler: build (and load, when present) the pooler.
      strict: raise instead of warning when weights are missing or unexpected.
      rngs: random streams for initialising missing weights and for dropout
        (default ``nnx.Rngs(0)``).
      config_overrides: extra :class:`BertConfig` fields (e.g. dropout rates).
      weights: already-loaded ``{hf_key: array}`` to use instead of reading
        ``model.safetensors`` (``config.json`` is still read from ``path``).
      log: function receiving the report summary (default: ``logging.warning``
        when something is missing/unexpected, ``logging.info`` otherwise).

    Returns:
      ``(model, report)``.

    Raises:
      ValueError: on a shape mismatch, invalid ``keep_tokens`` or, with
        ``strict=True``, on missing/unexpected weights.
      ImportError: if ``safetensors`` is needed and not installed.

    Reference: huggingface/transformers ``BertModel``; bert4keras ``keep_tokens``.

    Example:
      >>> import json, os, tempfile
      >>> from safetensors.numpy import save_file
      >>> d = tempfile.mkdtemp()
      >>> cfg = dict(vocab_size=10, hidden_size=4, num_hidden_layers=1,
      ...            num_attention_heads=2, intermediate_size=8, max_position_embeddings=6)
      >>> with open(os.path.join(d, "config.json"), "w") as f:
      ...     json.dump(cfg, f)
      >>> w = np.arange(40, dtype=np.float32).reshape(10, 4)
      >>> save_file({"bert.embeddings.word_embeddings.weight": w},
      ...           os.path.join(d, "model.safetensors"))
      >>> model, report = load_hf_bert(d, keep_tokens=[0, 3], log=lambda s: None)
      >>> model.embeddings.word_embeddings.embedding[...].tolist()
      [[0.0, 1.0, 2.0, 3.0], [12.0, 13.0, 14.0, 15.0]]
      >>> report.loaded, len(report.missing)
      (('embeddings.word_embeddings.weight',), 27)
    """
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.exists(config_path):
        raise FileNotFoundError(
            f"load_hf_bert: path must be a directory holding config.json, got {path!r}."
        )
    raw_config = BertConfig.from_json(config_path)
    fields: dict[str, Any] = dict(
        dtype=dtype, param_dtype=param_dtype, with_mlm_head=with_mlm_head, with_pooler=with_pooler
    )
    fields.update(config_overrides or {})
    keep = None
    if keep_tokens is not None:
        keep = _check_keep_tokens(keep_tokens, raw_config.vocab_size)
        fields["vocab_size"] = int(keep.size)
    config = dataclasses.replace(raw_config, **fields)

    if weights is None:
        weights = load_safetensors(path)
    model = BertModel(config, rngs=rngs if rngs is not None else nnx.Rngs(0))
    targets = bert_param_map(model)

    loaded, unexpected, ignored = [], [], []
    canonical = {_canonical_key(k): k for k in weights}
    for raw_key, array in weights.items():
        key = _canonical_key(raw_key)
        if any(p.match(key) for p in _IGNORED):
            ignored.append(raw_key)
            continue
        if key == _DECODER:
            # the model ties the MLM decoder to the word embeddings: a tied copy is
            # ignored, an untied decoder cannot be represented and is reported
            word = weights.get(canonical.get(_WORD, ""))
            tied = word is not None and np.array_equal(np.asarray(array), np.asarray(word))
            (ignored if tied else unexpected).append(raw_key)
            continue
        if key not in targets:
            unexpected.append(raw_key)
            continue
        param, transpose = targets[key]
        value = np.asarray(array)
        if transpose:
            value = value.T
        if keep is not None and key in (
            "embeddings.word_embeddings.weight",
            "cls.predictions.bias",
        ):
            value = value[keep]
        expected = tuple(param[...].shape)
        if value.shape != expected:
            raise ValueError(
                f"load_hf_bert: weight {raw_key!r} has shape {value.shape} "
                f"(after transpose/trimming) but the model expects {expected}."
            )
        param[...] = jnp.asarray(value, dtype=param[...].dtype)
        loaded.append(key)
    missing = tuple(k for k in targets if k not in set(loaded))
    report = LoadReport(tuple(loaded), missing, tuple(unexpected), tuple(ignored))
    if strict and not report.ok:
        raise ValueError(f"load_hf_bert(strict=True): {report}")
    if log is None:
        log = logger.warning if not report.ok else logger.info
    log(f"load_hf_bert({path}): {report}")
    return model, report

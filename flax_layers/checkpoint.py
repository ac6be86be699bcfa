"""Hugging Face BERT checkpoints (``config.json`` + safetensors) in and out of NNX.

:func:`load_hf_bert` reads every layout ``transformers``' ``save_pretrained``
writes: one ``model.safetensors`` or a sharded ``model.safetensors.index.json``
with its shards; float32, bfloat16 or float16 weights; ``BertModel`` keys
(``embeddings.*``, ``encoder.layer.N.*``, ``pooler.dense.*``) or the
``bert.``-prefixed keys of ``BertForMaskedLM`` / ``BertForPreTraining`` with the
MLM head ``cls.predictions.transform.{dense,LayerNorm}.*`` +
``cls.predictions.bias`` (decoder tied to the word embeddings); TF-era
``LayerNorm.gamma``/``beta`` names. No network and no PyTorch: the weights are
read with ``safetensors`` (an optional peer, imported lazily) one tensor at a
time, so loading holds little more than the model itself. Anything missing (e.g.
the MLM head of a sentence-embedding checkpoint such as all-MiniLM-L6-v2) keeps
the random initialisation ``BertModel(config, rngs=rngs)`` would give it and is
listed in the returned :class:`LoadReport`, as is anything unexpected (e.g. the
next-sentence head ``cls.seq_relationship.*``). The vocabulary can be trimmed on
the fly with ``keep_tokens`` as in bert4keras. :func:`save_hf_bert` writes a
model back in the layout ``transformers`` loads.

Reference: the HF ``BertModel`` / ``BertForMaskedLM`` / ``BertForPreTraining``
parameter layout (huggingface/transformers, ``modeling_bert.py``) and
``PreTrainedModel.save_pretrained`` sharding; bert4keras ``build_transformer_model
(..., keep_tokens=...)`` (Su, kexue.fm/archives/7147).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flax_layers import _partial_init, _safetensors
from flax_layers.bert import BertConfig, BertModel

__all__ = ["LoadReport", "bert_param_map", "load_hf_bert", "load_safetensors", "save_hf_bert"]

logger = logging.getLogger(__name__)

# Buffers, never parameters of their own.
_IGNORED = (re.compile(r"^embeddings\.position_ids$"),)
_WORD = "embeddings.word_embeddings.weight"
_BIAS = "cls.predictions.bias"
# Tied to the word embeddings and to the MLM bias in BERT.
_DECODER = "cls.predictions.decoder.weight"
_DECODER_BIAS = "cls.predictions.decoder.bias"
_VOCAB_ROWS = (_WORD, _BIAS)  # trimmed by keep_tokens
# Dtypes save_hf_bert writes (as in transformers' torch_dtype / dtype).
_SAVE_DTYPES = {np.dtype(jnp.float32), np.dtype(jnp.bfloat16), np.dtype(jnp.float16)}


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
    """Reads a safetensors checkpoint into numpy arrays (needs the ``safetensors`` peer).

    Args:
      path: a ``.safetensors`` file, or a directory holding ``model.safetensors``
        or a sharded ``model.safetensors.index.json`` with its shards.

    Returns:
      A ``{name: array}`` dictionary, arrays in their stored dtype (bfloat16 as
      ``ml_dtypes.bfloat16``).

    Raises:
      ImportError: if ``safetensors`` is not installed.
      FileNotFoundError: if there is no checkpoint at ``path`` or a shard is missing.
      ValueError: if a file or the index is malformed.

    Example:
      >>> import tempfile, os
      >>> from safetensors.numpy import save_file
      >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
      >>> save_file({"x": np.ones((2, 3), np.float32)}, p)
      >>> load_safetensors(p)["x"].shape
      (2, 3)
    """
    reader = _safetensors.open_checkpoint(path)
    return {key: reader.read(key) for key in reader.keys}


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


def _canonical_key(key: str) -> str:
    """Strips task-model prefixes and renames TF-era LayerNorm gamma/beta."""
    for prefix in ("bert.", "model."):
        if key.startswith(prefix) and not key.startswith(prefix + "cls."):
            key = key[len(prefix) :]
            break
    key = re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", key)
    key = re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", key)
    return key


def _canonical_keys(keys: Sequence[str]) -> dict[str, str]:
    """``{canonical key: checkpoint key}``, in checkpoint order; duplicates are an error."""
    canonical: dict[str, str] = {}
    for raw in keys:
        key = _canonical_key(raw)
        if key in canonical:
            raise ValueError(
                f"load_hf_bert: checkpoint keys {canonical[key]!r} and {raw!r} both name the "
                f"weight {key!r}."
            )
        canonical[key] = raw
    if _DECODER_BIAS in canonical and _BIAS not in canonical:
        # older BertForMaskedLM checkpoints store the MLM bias only as the decoder's bias
        canonical[_BIAS] = canonical.pop(_DECODER_BIAS)
    return canonical


def _is_tied_copy(reader: _safetensors.TensorReader, key: str, source: str | None) -> bool:
    """Whether checkpoint tensor ``key`` equals tensor ``source`` (a tied duplicate)."""
    if source is None or reader.infos[key].shape != reader.infos[source].shape:
        return False
    return bool(np.array_equal(reader.read(key), reader.read(source)))


_TRACED: dict[Any, _partial_init.TracedConstructor] = {}


def _traced_bert(
    config: BertConfig, rngs_graphdef: Any, rngs_state: Any
) -> _partial_init.TracedConstructor:
    """``BertModel(config, rngs)`` traced once per configuration and ``rngs`` structure.

    Named variables are the HF keys of :func:`bert_param_map`. A few recent
    entries are kept: tracing the constructor costs about half a second.
    """
    avals = tuple((x.shape, x.dtype) for x in jax.tree.leaves(rngs_state))
    key = (config, rngs_graphdef, avals)
    if key not in _TRACED:
        while len(_TRACED) >= 8:
            del _TRACED[next(iter(_TRACED))]
        _TRACED[key] = _partial_init.trace_constructor(
            lambda rngs: BertModel(config, rngs=rngs),
            lambda model: {k: v for k, (v, _) in bert_param_map(model).items()},
            rngs_graphdef,
            rngs_state,
        )
    return _TRACED[key]


@jax.jit(static_argnums=(1, 2))
def _transpose_cast(value: jax.Array, transpose: bool, dtype: np.dtype) -> jax.Array:
    return (value.T if transpose else value).astype(dtype)


def _to_param(value: np.ndarray, transpose: bool, dtype: np.dtype) -> jax.Array:
    """A checkpoint array as a parameter value: transposed (``[out, in]`` to ``[in, out]``)
    and cast in one XLA operation (faster than numpy's strided copy), or handed over as is."""
    if not transpose and value.dtype == dtype:
        return jax.device_put(value, may_alias=True)
    return _transpose_cast(value, transpose, dtype)


def _check_float_dtype(name: str, dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"load_hf_bert: {name} must be a floating dtype, got {dtype!r}.") from None
    if not jnp.issubdtype(dt, jnp.floating):
        raise ValueError(f"load_hf_bert: {name} must be a floating dtype, got {dt.name}.")
    return dt


def load_hf_bert(
    path: str | os.PathLike[str],
    *,
    keep_tokens: Sequence[int] | None = None,
    dtype: Any = jnp.float32,
    param_dtype: Any = jnp.float32,
    with_mlm_head: bool | None = True,
    with_pooler: bool | None = True,
    strict: bool = False,
    rngs: nnx.Rngs | None = None,
    config_overrides: Mapping[str, Any] | None = None,
    weights: Mapping[str, np.ndarray] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[BertModel, LoadReport]:
    """Builds a :class:`BertModel` from a Hugging Face BERT directory, in evaluation mode.

    Reads ``config.json`` and the weights (``model.safetensors`` or a sharded
    ``model.safetensors.index.json``; float32, bfloat16 or float16; ``BertModel``,
    ``BertForMaskedLM`` or ``BertForPreTraining`` keys) without network or
    PyTorch. Keys are matched after stripping the ``bert.`` prefix and renaming
    ``LayerNorm.gamma``/``beta`` to ``weight``/``bias``; ``Linear`` weights are
    transposed from ``[out, in]`` to ``[in, out]``; optionally only the rows
    ``keep_tokens`` of the word embeddings and of the MLM bias are kept (new id
    ``i`` = old id ``keep_tokens[i]``; bert4keras ``keep_tokens``; a kept
    ``pad_token_id`` is renumbered likewise). All key
    names, shapes and dtypes are checked from the file headers before any
    tensor is read; then the tensors are read one at a time and converted to
    ``param_dtype``, so peak host memory stays close to the model's own size.
    Parameters absent from the checkpoint get the random (truncated-normal,
    LayerNorm = identity) initialisation ``BertModel(config, rngs=rngs)`` would
    give them, are listed in ``report.missing`` and logged as a warning.

    Like ``transformers``' ``from_pretrained``, the model comes back in
    evaluation mode (dropout off); call ``model.train()`` to fine-tune.

    Args:
      path: directory with ``config.json`` and the safetensors weights.
      keep_tokens: optional 1-D list of token ids to keep, in the new order.
      dtype: compute dtype of the model (e.g. ``jnp.bfloat16``).
      param_dtype: storage dtype of the parameters (floating); stored weights
        are converted to it.
      with_mlm_head: build (and load, when present) the MLM head; ``None``:
        build it when the checkpoint has one.
      with_pooler: build (and load, when present) the pooler; ``None``: build
        it when the checkpoint has one.
      strict: raise instead of warning when weights are missing or unexpected.
      rngs: random streams for initialising missing weights and for dropout
        (default ``nnx.Rngs(0)``); advanced as ``BertModel(config, rngs=rngs)``
        would advance them.
      config_overrides: extra :class:`BertConfig` fields (e.g. dropout rates).
      weights: already-loaded ``{hf_key: array}`` to use instead of reading the
        safetensors files (``config.json`` is still read from ``path``).
      log: function receiving the report summary (default: ``logging.warning``
        when something is missing/unexpected, ``logging.info`` otherwise).

    Returns:
      ``(model, report)``; ``model`` is in evaluation mode.

    Raises:
      FileNotFoundError: without ``config.json``, without weights, or when the
        index names a shard file that does not exist.
      ValueError: on a weight whose shape differs from the configuration's (the
        message names the key, the actual and the expected shape), a weight
        stored in a non-floating dtype, a malformed file or index, a checkpoint
        with no BERT weight at all, invalid ``keep_tokens`` or, with
        ``strict=True``, missing/unexpected weights (all named).
      ImportError: if ``safetensors`` is needed and not installed.

    Reference: huggingface/transformers ``BertModel.from_pretrained``; bert4keras
    ``keep_tokens``.

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
      >>> model.embeddings.dropout.deterministic  # evaluation mode
      True
    """
    path = os.fspath(path)
    config_path = os.path.join(path, "config.json")
    if not os.path.isdir(path) or not os.path.exists(config_path):
        raise FileNotFoundError(
            f"load_hf_bert: path must be a directory holding config.json, got {path!r}."
        )
    _check_float_dtype("dtype", dtype)
    _check_float_dtype("param_dtype", param_dtype)
    raw_config = BertConfig.from_json(config_path)
    reader = (
        _safetensors.reader_from_arrays(weights)
        if weights is not None
        else _safetensors.open_checkpoint(path)
    )
    canonical = _canonical_keys(reader.keys)
    if with_mlm_head is None:
        with_mlm_head = any(k.startswith("cls.predictions.") for k in canonical)
    if with_pooler is None:
        with_pooler = any(k.startswith("pooler.") for k in canonical)
    fields: dict[str, Any] = dict(
        dtype=dtype, param_dtype=param_dtype, with_mlm_head=with_mlm_head, with_pooler=with_pooler
    )
    fields.update(config_overrides or {})
    keep = None
    if keep_tokens is not None:
        keep = _check_keep_tokens(keep_tokens, raw_config.vocab_size)
        fields["vocab_size"] = int(keep.size)
        kept_pad = np.flatnonzero(keep == raw_config.pad_token_id)
        if kept_pad.size:  # the padding token's new id
            fields.setdefault("pad_token_id", int(kept_pad[0]))
    config = dataclasses.replace(raw_config, **fields)

    # The model's structure without computing anything; values are filled in below.
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    rngs_graphdef, rngs_state = nnx.split(rngs)
    traced = _traced_bert(config, rngs_graphdef, rngs_state)
    model = traced.abstract_module()
    targets = bert_param_map(model)

    # Match keys and check shapes and dtypes from the headers, before reading data.
    plan: list[tuple[str, str]] = []
    unexpected, ignored = [], []
    for key, raw in canonical.items():
        if any(p.match(key) for p in _IGNORED):
            ignored.append(raw)
            continue
        if key in (_DECODER, _DECODER_BIAS):
            # the model ties the MLM decoder to the word embeddings and the MLM bias:
            # a tied copy is ignored, an untied one cannot be represented
            source = canonical.get(_WORD if key == _DECODER else _BIAS)
            (ignored if _is_tied_copy(reader, raw, source) else unexpected).append(raw)
            continue
        if key not in targets:
            unexpected.append(raw)
            continue
        info = reader.infos[raw]
        if info.dtype not in _safetensors.FLOAT_DTYPES:
            raise ValueError(
                f"load_hf_bert: weight {raw!r} in {reader.origin} is stored as {info.dtype}; "
                f"only floating weights ({', '.join(_safetensors.FLOAT_DTYPES)}) can be loaded."
            )
        param, transpose = targets[key]
        expected = tuple(param.get_value().shape)
        if transpose:
            expected = expected[::-1]
        if keep is not None and key in _VOCAB_ROWS:
            expected = (raw_config.vocab_size, *expected[1:])
        if info.shape != expected:
            raise ValueError(
                f"load_hf_bert: weight {raw!r} in {reader.origin} has shape {info.shape}, but "
                f"the model built from {config_path} expects {expected}."
            )
        plan.append((raw, key))
    if not plan:
        raise ValueError(
            f"load_hf_bert: none of the {len(reader.keys)} tensors in {reader.origin} is a BERT "
            f"weight (first keys: {list(reader.keys[:3])}); expected names such as {_WORD!r}, "
            "optionally prefixed with 'bert.'."
        )
    loaded = tuple(key for _, key in plan)
    missing = tuple(k for k in targets if k not in set(loaded))
    report = LoadReport(loaded, missing, tuple(unexpected), tuple(ignored))
    if strict and not report.ok:
        raise ValueError(f"load_hf_bert(strict=True): {report}")

    # Missing parameters and dropout streams, exactly as BertModel(config, rngs) makes them.
    values, model_rngs, rngs_state = _partial_init.initial_values(traced, rngs_state, missing)
    for key, value in values.items():
        targets[key][0].set_value(value)
    nnx.update(model, model_rngs)
    nnx.update(rngs, rngs_state)

    # One tensor at a time: read, trim, transpose, convert, hand to JAX.
    for raw, key in plan:
        param, transpose = targets[key]
        value = reader.read(raw)
        if keep is not None and key in _VOCAB_ROWS:
            value = value[keep]
        param.set_value(_to_param(value, transpose, np.dtype(param.get_value().dtype)))
        del value

    unset = [
        "/".join(map(str, path))
        for path, var in nnx.to_flat_state(nnx.state(model))
        if isinstance(var.get_value(), jax.ShapeDtypeStruct)
    ]
    if unset:  # a BertModel variable that bert_param_map does not cover
        raise RuntimeError(f"load_hf_bert: no value for the model variables {unset}.")
    model.eval()
    if log is None:
        log = logger.warning if not report.ok else logger.info
    log(f"load_hf_bert({path}): {report}")
    return model, report


def _hf_config(model: BertModel, stored: np.dtype) -> dict[str, Any]:
    """The ``config.json`` of ``model`` in ``transformers``' ``BertConfig`` names."""
    cfg = model.config
    names = (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "hidden_act",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "initializer_range",
        "pad_token_id",
    )
    out: dict[str, Any] = {
        "architectures": ["BertForMaskedLM" if model.mlm_transform is not None else "BertModel"],
        "model_type": "bert",
        "position_embedding_type": "absolute",
        "tie_word_embeddings": True,
        "dtype": stored.name,
    }
    out.update({name: getattr(cfg, name) for name in names})
    if not 0 <= cfg.pad_token_id < cfg.vocab_size:
        out["pad_token_id"] = None  # e.g. [PAD] trimmed away; transformers needs it in range
    return out


def save_hf_bert(
    model: BertModel,
    path: str | os.PathLike[str],
    *,
    max_shard_size: int | str | None = None,
    dtype: Any = None,
) -> tuple[str, ...]:
    """Writes ``model`` as a Hugging Face BERT checkpoint that ``transformers`` loads.

    Writes ``config.json`` and the weights in safetensors, in the layout of
    ``transformers``' ``save_pretrained``: a model with an MLM head as
    ``BertForMaskedLM`` (keys prefixed ``bert.``, head under
    ``cls.predictions.*``, decoder tied to the word embeddings and therefore not
    stored; a pooler, when present, as ``bert.pooler.*``), a model without one
    as ``BertModel`` (bare keys). ``Linear`` kernels are stored ``[out, in]``.
    With ``max_shard_size`` the tensors are split greedily in key order into
    ``model-0000i-of-0000N.safetensors`` of at most that many bytes (a larger
    tensor gets a shard of its own) plus ``model.safetensors.index.json``
    (``{"metadata": {"total_size": ...}, "weight_map": {key: file}}``); one shard
    is written as ``model.safetensors``. One shard is converted at a time.
    Weight files of an earlier save in ``path`` that this one does not rewrite
    are removed, as ``save_pretrained`` does. A vocabulary trimmed with
    ``keep_tokens`` is saved at its trimmed size; only the model is written, so
    save the matching ``vocab.txt`` (the kept tokens in their new order) next to
    it. A ``pad_token_id`` outside the vocabulary is written as ``null``.

    Args:
      model: the :class:`BertModel` to save.
      path: the output directory (created if needed).
      max_shard_size: ``None`` (one file), an int (bytes) or a string such as
        ``"200MB"`` (10^6 bytes) or ``"1GiB"`` (2^30 bytes).
      dtype: stored dtype, ``jnp.float32``, ``jnp.bfloat16`` or ``jnp.float16``;
        ``None`` keeps the parameters' dtype. ``config.json`` records it as
        ``"dtype"``.

    Returns:
      The names of the files written, relative to ``path``.

    Raises:
      TypeError: if ``model`` is not a :class:`BertModel` or ``dtype`` is not a dtype.
      ValueError: on another ``dtype`` or a malformed ``max_shard_size``.
      ImportError: if ``safetensors`` is not installed.

    Reference: huggingface/transformers ``PreTrainedModel.save_pretrained`` and
    ``modeling_bert.py``; huggingface_hub ``split_state_dict_into_shards``.

    Example:
      >>> import tempfile
      >>> cfg = BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=16)
      >>> model = BertModel(cfg, rngs=nnx.Rngs(0))
      >>> d = tempfile.mkdtemp()
      >>> files = save_hf_bert(model, d, max_shard_size=1000, dtype=jnp.bfloat16)
      >>> files[0], files[-1], len(files)  # config, 3 shards, index
      ('config.json', 'model.safetensors.index.json', 5)
      >>> again, report = load_hf_bert(d)
      >>> report.ok, again.layers[0].query.kernel[...].dtype
      (True, dtype('float32'))
      >>> bool(jnp.all(again.layers[0].query.kernel[...]
      ...              == model.layers[0].query.kernel[...].astype(jnp.bfloat16)))
      True
    """
    if not isinstance(model, BertModel):
        raise TypeError(f"save_hf_bert: model must be a BertModel, got {type(model).__name__}.")
    allowed = "jnp.float32, jnp.bfloat16, jnp.float16 or None"
    target = None
    if dtype is not None:
        try:
            target = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"save_hf_bert: dtype must be {allowed}, got {dtype!r}.") from None
        if target not in _SAVE_DTYPES:
            raise ValueError(f"save_hf_bert: dtype must be {allowed}, got {target.name}.")
    limit = None if max_shard_size is None else _safetensors.parse_size(max_shard_size)
    _safetensors.load_safe_open()  # fail before writing anything when safetensors is missing
    path = os.fspath(path)
    os.makedirs(path, exist_ok=True)

    head = model.mlm_transform is not None
    params = {}
    for key, (param, transpose) in bert_param_map(model).items():
        name = key if key.startswith("cls.") or not head else "bert." + key
        params[name] = (param, transpose)
    stored = {name: target or np.dtype(p[...].dtype) for name, (p, _) in params.items()}
    if len(set(stored.values())) != 1:
        raise ValueError(
            "save_hf_bert: the parameters have several dtypes "
            f"{sorted({d.name for d in stored.values()})}; pass dtype= to store one."
        )

    def produce(name: str) -> np.ndarray:
        param, transpose = params[name]
        value = np.asarray(param[...])
        return np.ascontiguousarray(value.T if transpose else value, stored[name])

    sizes = [
        (name, _safetensors.nbytes(p[...].shape, stored[name])) for name, (p, _) in params.items()
    ]
    config = _hf_config(model, next(iter(stored.values())))
    with open(os.path.join(path, "config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    files = _safetensors.write_checkpoint(path, sizes, produce, limit)
    return ("config.json", *files)

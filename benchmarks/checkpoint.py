"""Checkpoint loading benchmark (CPU): peak host memory and load time, ours vs. transformers.

Run ``python -m benchmarks.checkpoint`` (or ``--quick``: the float32 file only, one repeat).

A random checkpoint of BERT-base shape (``BertModel`` keys, 30522 x 768 word
embeddings, 12 layers, pooler: 109.5M parameters, 438 MB in float32) is written
to a temporary directory in three layouts: one float32 ``model.safetensors``,
float32 shards of at most 100 MB with ``model.safetensors.index.json``, and one
bfloat16 file. Each measurement runs in a fresh child process, which imports its
libraries, resets its peak resident set (``/proc/self/clear_refs``), then loads:

* ours: ``flax_layers.checkpoint.load_hf_bert`` (float32 parameters);
* peer: ``transformers.BertModel.from_pretrained(path, dtype=torch.float32)``.

The memory figures are the growth of the peak resident set (``VmHWM`` minus
``VmRSS`` before loading), after loading and after one forward pass on a
1 x 16 batch. ``transformers`` keeps its float32 tensors in the memory-mapped
safetensors file, whose pages become resident as they are read: its after-load
figure leaves out weights not read yet, and after a forward pass only the unused
rows of the embedding tables (about 90 MB here) are still out. The limit is
1.5x the bytes of the loaded float32 parameters. A 1-layer, 32-wide checkpoint
shows each loader's fixed costs (for ours, the JAX runtime: tracing the model's
constructor once, compiling the few conversions). Load time is the wall time of
the first load in the process (``cold``: one-time tracing and imports inside the
libraries) and of a second load in the same process (``warm``), medians over
the repeats with the two sides sampled in turn (``benchmarks.timing``).
Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks.timing import round_robin_medians

BASE = dict(
    vocab_size=30522,
    hidden_size=768,
    num_hidden_layers=12,
    intermediate_size=3072,
    max_position_embeddings=512,
    num_attention_heads=12,
)
TINY = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=1,
    intermediate_size=64,
    max_position_embeddings=32,
    num_attention_heads=2,
)
MB = 1e6


def random_bert_weights(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights with the keys and shapes of a transformers ``BertModel``."""
    rng = np.random.default_rng(seed)
    e, inter = cfg["hidden_size"], cfg["intermediate_size"]

    def normal(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)

    def norm(prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}.weight": 1 + normal(e), f"{prefix}.bias": normal(e)}

    w = {
        "embeddings.word_embeddings.weight": normal(cfg["vocab_size"], e),
        "embeddings.position_embeddings.weight": normal(cfg["max_position_embeddings"], e),
        "embeddings.token_type_embeddings.weight": normal(2, e),
        **norm("embeddings.LayerNorm"),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        for name, d_in, d_out in (
            ("attention.self.query", e, e),
            ("attention.self.key", e, e),
            ("attention.self.value", e, e),
            ("attention.output.dense", e, e),
            ("intermediate.dense", e, inter),
            ("output.dense", inter, e),
        ):
            w[f"{p}.{name}.weight"] = normal(d_out, d_in)
            w[f"{p}.{name}.bias"] = normal(d_out)
        w.update(norm(f"{p}.attention.output.LayerNorm"))
        w.update(norm(f"{p}.output.LayerNorm"))
    w["pooler.dense.weight"] = normal(e, e)
    w["pooler.dense.bias"] = normal(e)
    return w


def write_layouts(cfg: dict, root: str, layouts: list[str]) -> tuple[dict[str, str], int]:
    """Writes the checkpoint in each layout; returns ``({layout: dir}, float32 bytes)``.

    Shards are planned by ``huggingface_hub``'s ``split_state_dict_into_shards_factory``
    (what ``save_pretrained`` uses) and written with ``safetensors.numpy.save_file``.
    """
    import ml_dtypes
    from huggingface_hub.serialization import split_state_dict_into_shards_factory
    from safetensors.numpy import save_file

    weights = random_bert_weights(cfg)
    config = {"architectures": ["BertModel"], "model_type": "bert", **cfg}
    dirs = {}
    for layout in layouts:
        d = os.path.join(root, layout)
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config, f)
        dtype = ml_dtypes.bfloat16 if layout.startswith("bf16") else np.float32
        stored = {k: v.astype(dtype) for k, v in weights.items()}
        split = split_state_dict_into_shards_factory(
            stored,
            get_storage_size=lambda a: a.nbytes,
            filename_pattern="model{suffix}.safetensors",
            max_shard_size="100MB" if "sharded" in layout else "50GB",
        )
        for name, keys in split.filename_to_tensors.items():
            tensors = {k: stored[k] for k in keys}
            save_file(tensors, os.path.join(d, name), metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump(index, f)
        del stored
        dirs[layout] = d
    return dirs, sum(v.nbytes for v in weights.values())


def _status() -> dict[str, float]:
    with open("/proc/self/status") as f:
        return {
            line.split(":")[0]: int(line.split()[1]) * 1024 / MB
            for line in f
            if line.startswith(("VmHWM", "VmRSS"))
        }


def child(impl: str, path: str) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    ids = np.arange(1, 17, dtype=np.int64)[None]
    if impl == "ours":
        import jax
        import jax.numpy as jnp

        from flax_layers.checkpoint import load_hf_bert

        def load():
            return load_hf_bert(path, with_mlm_head=False, log=lambda s: None)[0]

        def forward(model):
            jax.block_until_ready(model(jnp.asarray(ids)))
    else:
        import torch
        import transformers

        torch.set_num_threads(2)
        cls = transformers.BertModel
        transformers.logging.set_verbosity_error()

        def load():
            return cls.from_pretrained(path, dtype=torch.float32).eval()

        def forward(model):
            with torch.no_grad():
                model(torch.tensor(ids))

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set
    before = _status()["VmRSS"]
    t0 = time.perf_counter()
    model = load()
    cold = time.perf_counter() - t0
    after_load = _status()["VmHWM"] - before
    forward(model)
    after_forward = _status()["VmHWM"] - before
    del model
    t0 = time.perf_counter()
    load()
    warm = time.perf_counter() - t0
    print(json.dumps(dict(cold=cold, warm=warm, load=after_load, forward=after_forward)))


def measure(impl: str, path: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.checkpoint", "--child", impl, path],
        check=True,
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="float32 file only, one repeat")
    parser.add_argument("--child", nargs=2, metavar=("IMPL", "PATH"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        child(*opts.child)
        return
    repeats = 1 if opts.quick else 3
    layouts = ["f32"] if opts.quick else ["f32", "f32-sharded-100MB", "bf16"]
    with tempfile.TemporaryDirectory() as root:
        dirs, weight_bytes = write_layouts(BASE, os.path.join(root, "base"), layouts)
        tiny, _ = write_layouts(TINY, os.path.join(root, "tiny"), ["f32"])
        limit = f"{1.5 * weight_bytes / MB:.0f}"
        print(
            f"BERT-base-shaped random checkpoint: {weight_bytes / MB:.0f} MB of float32 weights; "
            f"{os.cpu_count()} CPUs; each row the median of {repeats} fresh process(es). The "
            "last rows load a 1-layer, 32-wide BERT: the loaders' fixed costs.\n"
        )
        print(
            "| checkpoint | loader | peak RSS growth, load (MB) | peak RSS growth, load + "
            "forward (MB) | limit 1.5x weights (MB) | weights (MB) | load, cold (s) | "
            "load, warm (s) |"
        )
        print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        rows = [(f"BERT-base {x}", dirs[x], limit, f"{weight_bytes / MB:.0f}") for x in layouts]
        rows.append(("tiny f32", tiny["f32"], "", "0.03"))
        for name, path, row_limit, size in rows:
            results: dict[str, list[dict[str, float]]] = {"ours": [], "transformers": []}

            def sampler(impl: str, path: str = path, results=results):
                def sample() -> float:
                    r = measure("ours" if impl == "ours" else "hf", path)
                    results[impl].append(r)
                    return r["cold"]

                return sample

            round_robin_medians([sampler("ours"), sampler("transformers")], repeats)
            for impl, rs in results.items():
                med = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
                print(
                    f"| {name} | {impl} | {med['load']:.0f} | {med['forward']:.0f} | "
                    f"{row_limit} | {size} | {med['cold']:.2f} | {med['warm']:.2f} |"
                )


if __name__ == "__main__":
    main()

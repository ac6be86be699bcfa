"""Reference tests of flax_layers.LinearChainCRF and of masks with holes in the CRF/MEMM functions.

References (never the implementation itself):

* a float64 numpy enumerator of all K**L paths of a row's *compacted* sequence (its valid
  positions v_1 < ... < v_L), giving log Z, per-position and pairwise marginals, sorted path
  scores, entropy, cross-entropy, KL and the MBR path;
* a numpy MEMM on the compacted sequence;
* exact concentration bounds for the sampler (Jensen + McDiarmid for the total variation,
  Hoeffding for the marginal frequencies).
"""

from __future__ import annotations

import functools
import inspect
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from flax_layers import (
    CRF,
    LinearChainCRF,
    allowed_transitions,
    crf_log_likelihood,
    crf_log_partition,
    crf_marginals,
    memm_log_likelihood,
    viterbi_decode,
    viterbi_nbest,
)
from tests.chain_reference import Brute, logsumexp

ALGORITHMS = ("rescaled", "sequential", "parallel")
DIRECTIONS = ("forward", "backward", "both")
PROBLEMS = ("plain", "constrained")
T, K = 6, 3
TOP = 5  # top_k / viterbi_nbest slots (more than the feasible paths of the short rows)
SAMPLE_SHAPE = (2, 2)  # one sample shape for the small sampling checks (one compilation)
RTOL = ATOL = 1e-5
ATOL_ENTROPY = 1e-4

MASK = np.array(
    [
        [1, 1, 1, 1, 1, 1],  # all valid (L = 6, 729 paths)
        [0, 1, 1, 1, 1, 1],  # masked first position
        [1, 1, 0, 0, 1, 1],  # a gap in the middle
        [1, 1, 1, 0, 0, 0],  # right padding
        [0, 0, 1, 0, 0, 0],  # one valid position
        [0, 0, 0, 0, 0, 0],  # no valid position
        [0, 1, 0, 1, 0, 1],  # several holes
        [1, 0, 1, 1, 0, 0],  # holes and right padding
    ],
    bool,
)
B = len(MASK)
NUM_VALID = MASK.sum(1)
LENGTHS = np.array([6, 5, 4, 3, 1, 0, 2, 6])  # for the right-padded (lengths=) layout
RIGHT_MASK = np.arange(T) < LENGTHS[:, None]


def _close(actual, desired, atol=ATOL, rtol=RTOL, msg=""):
    np.testing.assert_allclose(
        np.asarray(actual, np.float64), desired, rtol=rtol, atol=atol, err_msg=msg
    )


def _random_scores(rng, constrained):
    g = rng.normal(size=(K, K)).astype(np.float32)
    start = rng.normal(size=K).astype(np.float32)
    end = rng.normal(size=K).astype(np.float32)
    if constrained:  # every row stays feasible: start in {0, 2}, end in {1, 2}, 0 -> 1 allowed
        g[0, 2] = g[2, 1] = -np.inf
        start[1] = -np.inf
        end[0] = -np.inf
    return g, start, end


@functools.cache
def _problem(name: str, layout: str = "holes"):
    """Emissions/scores of p and q on one mask, tags, and the brute-force references.

    ``plain``: no start/end (None), finite transitions. ``constrained``: start/end scores,
    forbidden transitions 0->2 and 2->1, forbidden start tag 1 and end tag 0. q always has
    finite scores (its support contains p's). Masked emissions get +30: they must be ignored.
    """
    mask = MASK if layout == "holes" else RIGHT_MASK
    rng = np.random.default_rng({"plain": 0, "constrained": 1}[name])
    em = rng.normal(size=(B, T, K)).astype(np.float32)
    em[~mask] += 30.0
    g, start, end = _random_scores(rng, name == "constrained")
    if name == "plain":
        start = end = None
    q_em = rng.normal(size=(B, T, K)).astype(np.float32)
    q_g, q_start, q_end = _random_scores(rng, False)
    brute = [Brute(em[b], g, start, end, mask[b]) for b in range(B)]
    q_brute = [Brute(q_em[b], q_g, q_start, q_end, mask[b]) for b in range(B)]
    tags = np.where(mask, rng.integers(0, K, (B, T)), -1)
    garbage = np.where(mask, tags, rng.integers(0, K, (B, T)))  # in-range junk when masked
    best = np.stack([br.tags(br.order[0]) for br in brute])
    return SimpleNamespace(
        name=name,
        mask=mask,
        em=em,
        g=g,
        start=start,
        end=end,
        q_em=q_em,
        q_g=q_g,
        q_start=q_start,
        q_end=q_end,
        brute=brute,
        q_brute=q_brute,
        tags=tags,
        garbage=garbage,
        best=best,
    )


def _dist(pr, batch_shape=(B,), *, q=False, mask=None, **kwargs):
    em, g, start, end = (
        (pr.q_em, pr.q_g, pr.q_start, pr.q_end) if q else (pr.em, pr.g, pr.start, pr.end)
    )
    if "lengths" not in kwargs:
        kwargs["mask"] = jnp.asarray((pr.mask if mask is None else mask).reshape(*batch_shape, T))
    return LinearChainCRF(
        jnp.asarray(em.reshape(*batch_shape, T, K)), jnp.asarray(g), start=start, end=end, **kwargs
    )


def _flat(x, batch_shape, suffix):
    x = np.asarray(x)
    assert x.shape == (*batch_shape, *suffix), (x.shape, batch_shape, suffix)
    return x.reshape(B, *suffix)


# ------------------------------------------------------------------- check helpers


def _check_path(row, score, br: Brute, values, want, what):
    """``row`` is a feasible path of ``br`` with -1 exactly at masked positions, whose
    value (``values[path]``) equals the reported ``score``, which equals ``want``."""
    row = np.asarray(row)
    assert np.all(row[~br.mask] == -1), f"{what}: not -1 at masked positions: {row}"
    idx = br.index(row)
    assert br.scores[idx] > -np.inf, f"{what}: path {row} uses a forbidden score"
    _close(score, want, msg=f"{what}: score")
    _close(values[idx], float(score), msg=f"{what}: score of the returned path {row}")


def _check_nbest(tags, scores, brute, batch_shape, k, what):
    tags = _flat(tags, batch_shape, (k, T))
    scores = _flat(scores, batch_shape, (k,))
    for b, br in enumerate(brute):
        want = np.full(k, -np.inf)
        n = min(k, len(br.sorted_scores))
        want[:n] = br.sorted_scores[:n]
        _close(scores[b], want, msg=f"{what}: scores of row {b}")
        seen = set()
        for r in range(k):
            if scores[b, r] == -np.inf:
                assert np.all(tags[b, r] == -1), f"{what}: row {b} slot {r}: {tags[b, r]}"
                continue
            _check_path(tags[b, r], scores[b, r], br, br.scores, want[r], f"{what} {b}/{r}")
            idx = br.index(tags[b, r])
            assert idx not in seen, f"{what}: row {b}: path {tags[b, r]} returned twice"
            seen.add(idx)


def _dist_outputs(d, q, tags, garbage, best):
    return {
        "log_partition": d.log_partition(),
        "log_prob": d.log_prob(jnp.asarray(tags)),
        "log_prob_garbage": d.log_prob(jnp.asarray(garbage)),
        "log_prob_best": d.log_prob(jnp.asarray(best)),
        "marginals": d.marginals(),
        "transition_marginals": d.transition_marginals(),
        "argmax": d.argmax(),
        "top_k": d.top_k(TOP),
        "entropy": d.entropy(),
        "cross_entropy": d.cross_entropy(q),
        "kl": d.kl_divergence(q),
        "kl_self": d.kl_divergence(d),
        "mbr": d.mbr_decode(),
    }


def _check_dist_outputs(out, pr, batch_shape=(B,)):
    bs = batch_shape
    lz = _flat(out["log_partition"], bs, ())
    lp = _flat(out["log_prob"], bs, ())
    lp_garbage = _flat(out["log_prob_garbage"], bs, ())
    lp_best = _flat(out["log_prob_best"], bs, ())
    marg = _flat(out["marginals"], bs, (T, K))
    pair = _flat(out["transition_marginals"], bs, (T, K, K))
    am_tags, am_score = out["argmax"]
    assert am_tags.dtype == jnp.int32
    am_tags, am_score = _flat(am_tags, bs, (T,)), _flat(am_score, bs, ())
    ent = _flat(out["entropy"], bs, ())
    ce = _flat(out["cross_entropy"], bs, ())
    kl = _flat(out["kl"], bs, ())
    kl_self = _flat(out["kl_self"], bs, ())
    mbr_tags, mbr_score = _flat(out["mbr"][0], bs, (T,)), _flat(out["mbr"][1], bs, ())
    for b, (br, qb) in enumerate(zip(pr.brute, pr.q_brute)):
        m = f"row {b} ({MASK[b].astype(int) if pr.mask is MASK else LENGTHS[b]})"
        _close(lz[b], br.log_z, msg=f"log_partition {m}")
        _close(lp[b], br.log_prob(pr.tags[b]), msg=f"log_prob {m}")
        _close(lp_garbage[b], br.log_prob(pr.tags[b]), msg=f"log_prob (junk when masked) {m}")
        _close(lp_best[b], br.log_prob(pr.best[b]), msg=f"log_prob of the best path {m}")
        _close(marg[b], br.marg, msg=f"marginals {m}")
        _close(pair[b], br.pair, msg=f"transition_marginals {m}")
        _check_path(am_tags[b], am_score[b], br, br.scores, br.sorted_scores[0], f"argmax {m}")
        _close(ent[b], br.entropy, atol=ATOL_ENTROPY, msg=f"entropy {m}")
        _close(ce[b], br.cross_entropy(qb), atol=ATOL_ENTROPY, msg=f"cross_entropy {m}")
        _close(kl[b], br.kl(qb), atol=ATOL_ENTROPY, msg=f"kl_divergence {m}")
        _close(kl_self[b], 0.0, atol=ATOL_ENTROPY, msg=f"kl_divergence(p, p) {m}")
        _check_path(mbr_tags[b], mbr_score[b], br, br.mbr_values, br.mbr_best, f"mbr_decode {m}")
    _check_nbest(*out["top_k"], pr.brute, bs, TOP, "top_k")


def _fn_outputs(pr, algorithm, batch_shape=(B,), mask=None):
    em = jnp.asarray(pr.em.reshape(*batch_shape, T, K))
    mask = jnp.asarray((pr.mask if mask is None else mask).reshape(*batch_shape, T))
    args = (pr.g, mask, pr.start, pr.end)
    shaped = lambda x: jnp.asarray(x.reshape(*batch_shape, T))
    return {
        "log_partition": crf_log_partition(em, *args, algorithm=algorithm),
        "log_likelihood": crf_log_likelihood(em, shaped(pr.tags), *args, algorithm=algorithm),
        "log_likelihood_best": crf_log_likelihood(em, shaped(pr.best), *args, algorithm=algorithm),
        "marginals": crf_marginals(em, *args, algorithm=algorithm),
    }


def _check_fn_outputs(out, pr, batch_shape=(B,), what=""):
    lz = _flat(out["log_partition"], batch_shape, ())
    ll = _flat(out["log_likelihood"], batch_shape, ())
    ll_best = _flat(out["log_likelihood_best"], batch_shape, ())
    marg = _flat(out["marginals"], batch_shape, (T, K))
    for b, br in enumerate(pr.brute):
        _close(lz[b], br.log_z, msg=f"{what} crf_log_partition row {b}")
        _close(ll[b], br.log_prob(pr.tags[b]), msg=f"{what} crf_log_likelihood row {b}")
        _close(ll_best[b], br.log_prob(pr.best[b]), msg=f"{what} crf_log_likelihood row {b}")
        _close(marg[b], br.marg, msg=f"{what} crf_marginals row {b}")


def _check_viterbi(pr, batch_shape=(B,), mask=None):
    em = jnp.asarray(pr.em.reshape(*batch_shape, T, K))
    mask = jnp.asarray((pr.mask if mask is None else mask).reshape(*batch_shape, T))
    tags, score = viterbi_decode(em, pr.g, mask, pr.start, pr.end)
    assert tags.dtype == jnp.int32
    tags, score = _flat(tags, batch_shape, (T,)), _flat(score, batch_shape, ())
    for b, br in enumerate(pr.brute):
        _check_path(tags[b], score[b], br, br.scores, br.sorted_scores[0], f"viterbi row {b}")
    _check_nbest(
        *viterbi_nbest(em, pr.g, TOP, mask, pr.start, pr.end),
        pr.brute,
        batch_shape,
        TOP,
        "viterbi_nbest",
    )


def _expected_grads(brute, tags=None):
    """Brute-force gradients of Σ_b log Z_b (or of Σ_b log P(tags_b) if tags are given)
    with respect to (emissions, transitions, start, end). Rows without a feasible path
    contribute zero."""
    d_em = np.stack([br.marg for br in brute])
    d_g = sum(br.pair.sum(0) for br in brute)
    d_start, d_end = np.zeros(K), np.zeros(K)
    for br in brute:
        if br.length:
            d_start += br.marg[br.first]
            d_end += br.marg[br.last]
    if tags is None:
        return d_em, d_g, d_start, d_end
    counts_em, counts_g = np.zeros((B, T, K)), np.zeros((K, K))
    counts_start, counts_end = np.zeros(K), np.zeros(K)
    for b, br in enumerate(brute):
        if not br.feasible:
            continue
        y = tags[b][br.valid]
        counts_em[b, br.valid, y] = 1
        np.add.at(counts_g, (y[:-1], y[1:]), 1)
        if br.length:
            counts_start[y[0]] += 1
            counts_end[y[-1]] += 1
    return counts_em - d_em, counts_g - d_g, counts_start - d_start, counts_end - d_end


def _grads(kind, algorithm, em, g, start, end, mask, tags=None):
    """Gradients of Σ_b log Z_b or Σ_b log P(tags_b) w.r.t. (emissions, transitions, start,
    end); ``kind`` is "log_partition", "log_likelihood" (functions) or "dist_*" (methods).
    Always all four arguments, so every caller reuses the same compiled derivatives."""

    def f(em, g, s, e):
        if kind == "log_partition":
            out = crf_log_partition(em, g, mask, s, e, algorithm=algorithm)
        elif kind == "log_likelihood":
            out = crf_log_likelihood(em, tags, g, mask, s, e, algorithm=algorithm)
        elif kind == "dist_log_partition":
            out = LinearChainCRF(em, g, mask=mask, start=s, end=e).log_partition()
        else:
            out = LinearChainCRF(em, g, mask=mask, start=s, end=e).log_prob(tags)
        return jnp.sum(out)

    zeros = np.zeros(K, np.float32)
    start = zeros if start is None else start
    end = zeros if end is None else end
    return jax.grad(f, argnums=(0, 1, 2, 3))(em, g, start, end)


def _check_grads(grads, want, what):
    for got, w, arg in zip(grads, want, ("emissions", "transitions", "start", "end")):
        assert np.all(np.isfinite(got)), f"{what}: d/d{arg} not finite: {got}"
        _close(got, w, msg=f"{what}: d/d{arg}")


def _arrays(pr, batch_shape=(B,), layout="mask"):
    """The inputs of :func:`_all_outputs` (start/end zeros when None)."""
    zeros = np.zeros(K, np.float32)
    a = {
        "em": pr.em,
        "g": pr.g,
        "start": zeros if pr.start is None else pr.start,
        "end": zeros if pr.end is None else pr.end,
        "q_em": pr.q_em,
        "q_g": pr.q_g,
        "q_start": pr.q_start,
        "q_end": pr.q_end,
        "tags": pr.tags,
        "garbage": pr.garbage,
        "best": pr.best,
    }
    for k in ("em", "q_em", "tags", "garbage", "best"):
        a[k] = a[k].reshape(*batch_shape, *a[k].shape[1:])
    if layout == "mask":
        a["mask"] = pr.mask.reshape(*batch_shape, T)
    else:
        a["lengths"] = pr.mask.sum(-1).reshape(batch_shape)
    a["key"] = jax.random.key(4)
    return jax.tree_util.tree_map(jnp.asarray, a)


def _all_outputs(a, algorithms=("rescaled",), directions=("both",)):
    """Every distribution method, Viterbi, n-best, and the crf functions / MEMM for the given
    algorithms / directions (mask or lengths, whichever ``a`` holds). Few algorithms and
    directions keep the jitted program (one compilation) small."""
    where = {"mask": a.get("mask"), "lengths": a.get("lengths")}
    d = LinearChainCRF(a["em"], a["g"], start=a["start"], end=a["end"], **where)
    q = LinearChainCRF(a["q_em"], a["q_g"], start=a["q_start"], end=a["q_end"], **where)
    out = _dist_outputs(d, q, a["tags"], a["garbage"], a["best"])
    out["sample"] = d.sample(a["key"], SAMPLE_SHAPE)
    scores = dict(start=a["start"], end=a["end"], **where)
    for alg in algorithms:
        out[f"fn/{alg}"] = {
            "log_partition": crf_log_partition(a["em"], a["g"], algorithm=alg, **scores),
            "log_likelihood": crf_log_likelihood(
                a["em"], a["tags"], a["g"], algorithm=alg, **scores
            ),
            "log_likelihood_best": crf_log_likelihood(
                a["em"], a["best"], a["g"], algorithm=alg, **scores
            ),
            "marginals": crf_marginals(a["em"], a["g"], algorithm=alg, **scores),
        }
    out["viterbi"] = viterbi_decode(a["em"], a["g"], **scores)
    out["nbest"] = viterbi_nbest(a["em"], a["g"], TOP, **scores)
    for direction in directions:
        out[f"memm/{direction}"] = memm_log_likelihood(
            a["em"], a["tags"], a["g"], direction=direction, **where
        )
    return out


_jit_all_outputs = jax.jit(_all_outputs, static_argnames=("algorithms", "directions"))


def _check_all_outputs(out, pr, batch_shape=(B,)):
    _check_dist_outputs(out, pr, batch_shape)
    for alg in ALGORITHMS:
        if f"fn/{alg}" in out:
            _check_fn_outputs(out[f"fn/{alg}"], pr, batch_shape, alg)
    tags, score = out["viterbi"]
    assert tags.dtype == jnp.int32
    tags, score = _flat(tags, batch_shape, (T,)), _flat(score, batch_shape, ())
    for b, br in enumerate(pr.brute):
        _check_path(tags[b], score[b], br, br.scores, br.sorted_scores[0], f"viterbi row {b}")
    _check_nbest(*out["nbest"], pr.brute, batch_shape, TOP, "viterbi_nbest")
    for direction in (d for d in DIRECTIONS if f"memm/{d}" in out):
        got = _flat(out[f"memm/{direction}"], batch_shape, ())
        _close(got, _memm_reference(pr.em, pr.tags, pr.g, pr.mask, direction), msg=direction)
    s = np.asarray(out["sample"])
    assert s.shape == (*SAMPLE_SHAPE, *batch_shape, T) and s.dtype == np.int32
    s = s.reshape(-1, B, T)
    assert np.all(s[:, ~pr.mask] == -1)
    for b, br in enumerate(pr.brute):
        assert all(br.scores[br.index(row)] > -np.inf for row in s[:, b]), f"sample row {b}"


# -------------------------------------------------------- functions vs brute force


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_crf_functions_with_holes_match_brute_force(name, algorithm):
    pr = _problem(name)
    _check_fn_outputs(_fn_outputs(pr, algorithm), pr, what=algorithm)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("name", PROBLEMS)
def test_crf_gradients_with_holes_match_brute_force(name, algorithm):
    """∂ΣlogZ/∂f = marginals, ∂/∂g = Σ pairwise marginals, ∂/∂start, ∂/∂end = first/last
    marginals; for log-likelihoods of feasible gold paths, counts minus expectations (the
    default algorithm's custom_vjp only, to keep compilations few)."""
    pr = _problem(name)
    args = (pr.em, pr.g, pr.start, pr.end, jnp.asarray(MASK))
    grads = _grads("log_partition", algorithm, *args)
    _check_grads(grads, _expected_grads(pr.brute), f"{algorithm} log Z")
    if algorithm == "rescaled":  # log P = score - log Z: the log Z part is checked above
        grads = _grads("log_likelihood", algorithm, *args, tags=pr.best)
        _check_grads(grads, _expected_grads(pr.brute, pr.best), f"{algorithm} log P")


@pytest.mark.parametrize("name", PROBLEMS)
def test_viterbi_decode_and_nbest_with_holes_match_brute_force(name):
    _check_viterbi(_problem(name))


# ----------------------------------------------------- distribution vs brute force


@pytest.mark.parametrize("name", PROBLEMS)
def test_distribution_matches_brute_force(name):
    pr = _problem(name)
    out = _dist_outputs(_dist(pr), _dist(pr, q=True), pr.tags, pr.garbage, pr.best)
    _check_dist_outputs(out, pr)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_distribution_algorithm_argument(algorithm):
    """The constructor's optional ``algorithm`` (not in the minimal contract) agrees too."""
    if "algorithm" not in inspect.signature(LinearChainCRF).parameters:
        pytest.skip("LinearChainCRF has no algorithm argument")
    pr = _problem("constrained")
    d = _dist(pr, algorithm=algorithm)
    _close(d.log_partition(), [br.log_z for br in pr.brute], msg="log_partition")
    want = [br.log_prob(row) for br, row in zip(pr.brute, pr.tags)]
    _close(d.log_prob(jnp.asarray(pr.tags)), want, msg="log_prob")
    _close(d.marginals(), np.stack([br.marg for br in pr.brute]), msg="marginals")


def test_distribution_gradients_match_brute_force():
    pr = _problem("constrained")
    args = (pr.em, pr.g, pr.start, pr.end, jnp.asarray(MASK))
    grads = _grads("dist_log_partition", None, *args)
    _check_grads(grads, _expected_grads(pr.brute), "log_partition")
    grads = _grads("dist_log_prob", None, *args, tags=pr.best)
    _check_grads(grads, _expected_grads(pr.brute, pr.best), "log_prob")


def test_empty_row_is_the_one_empty_path():
    pr = _problem("constrained")
    d = _dist(pr)
    b = 5
    assert NUM_VALID[b] == 0
    assert float(d.log_partition()[b]) == 0.0
    assert float(d.log_prob(jnp.asarray(pr.tags))[b]) == 0.0
    tags, score = d.argmax()
    assert float(score[b]) == 0.0 and np.all(np.asarray(tags[b]) == -1)
    _close(d.entropy()[b], 0.0)
    top_tags, top_scores = d.top_k(TOP)
    assert np.asarray(top_scores[b]).tolist() == [0.0] + [-np.inf] * (TOP - 1)
    assert np.all(np.asarray(top_tags[b]) == -1)
    assert np.all(np.asarray(d.marginals()[b]) == 0)
    assert np.all(np.asarray(d.transition_marginals()[b]) == 0)
    samples = d.sample(jax.random.key(0), SAMPLE_SHAPE)
    assert np.all(np.asarray(samples)[..., b, :] == -1)


def test_jit_with_traced_holey_mask_and_leading_batch_dims():
    """Everything under one jax.jit, traced mask with holes, batch [2, 4]: equals the brute
    force and the eager results on the flat batch [8]."""
    pr = _problem("constrained")
    shape = (2, 4)
    jitted = jax.tree_util.tree_map(np.asarray, _jit_all_outputs(_arrays(pr, shape)))
    assert {"fn/rescaled", "memm/both", "sample"} <= set(jitted)
    _check_all_outputs(jitted, pr, shape)
    eager = jax.tree_util.tree_map(np.asarray, _all_outputs(_arrays(pr)))
    _check_all_outputs(eager, pr)
    flat_j, tree_j = jax.tree_util.tree_flatten(jitted)
    flat_e, tree_e = jax.tree_util.tree_flatten(eager)
    assert tree_j == tree_e
    for (path, got), want in zip(jax.tree_util.tree_flatten_with_path(jitted)[0], flat_e):
        what = f"jit vs eager: {jax.tree_util.keystr(path)}"
        if "sample" in what:
            continue
        got = got.reshape(want.shape)
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(got, want, err_msg=what)
        else:
            _close(got, want, atol=ATOL_ENTROPY, msg=what)


def test_lengths_equal_right_padded_mask():
    pr = _problem("constrained", "right")
    _check_all_outputs(_jit_all_outputs(_arrays(pr, layout="lengths"), (), ()), pr)
    _close(_dist(pr).log_partition(), np.array([br.log_z for br in pr.brute]))  # mask


@pytest.mark.parametrize("name", PROBLEMS)
def test_holey_rows_equal_their_compacted_rows(name):
    """The distribution on a row with holes is the distribution on its compacted row
    (right-padded, lengths=L); per-position outputs scatter to the valid positions."""
    pr = _problem(name)
    rng = np.random.default_rng(11)
    c = _arrays(pr, layout="lengths")
    c = {k: np.array(v) for k, v in c.items() if k != "key"}
    c["em"] = rng.normal(size=(B, T, K)).astype(np.float32) * 5  # junk in the padding
    c["q_em"] = rng.normal(size=(B, T, K)).astype(np.float32) * 5
    c["tags"], c["garbage"], c["best"] = (np.full((B, T), -1) for _ in range(3))
    for b in range(B):
        v, n = np.flatnonzero(MASK[b]), NUM_VALID[b]
        c["em"][b, :n], c["q_em"][b, :n] = pr.em[b, v], pr.q_em[b, v]
        c["tags"][b, :n], c["garbage"][b, :n] = pr.tags[b, v], pr.tags[b, v]
        c["best"][b, :n] = pr.best[b, v]
    c["key"] = jax.random.key(4)
    outc = jax.tree_util.tree_map(np.asarray, _jit_all_outputs(c, (), ()))
    d, q = _dist(pr), _dist(pr, q=True)
    out = jax.tree_util.tree_map(np.asarray, _dist_outputs(d, q, pr.tags, pr.garbage, pr.best))
    for key in ("log_partition", "log_prob", "log_prob_best", "cross_entropy", "kl"):
        _close(out[key], outc[key], msg=key)
    _close(out["entropy"], outc["entropy"], atol=ATOL_ENTROPY, msg="entropy")
    for b in range(B):
        v, n = np.flatnonzero(MASK[b]), NUM_VALID[b]
        _close(out["marginals"][b, v], outc["marginals"][b, :n], msg=f"marginals {b}")
        _close(
            out["transition_marginals"][b, v],
            outc["transition_marginals"][b, :n],
            msg=f"transition_marginals {b}",
        )
        for key in ("argmax", "mbr"):
            np.testing.assert_array_equal(out[key][0][b, v], outc[key][0][b, :n], err_msg=key)
            _close(out[key][1][b], outc[key][1][b], msg=key)
        np.testing.assert_array_equal(out["top_k"][0][b][:, v], outc["top_k"][0][b][:, :n])
        _close(out["top_k"][1][b], outc["top_k"][1][b], msg=f"top_k scores {b}")


def test_cross_entropy_and_kl_are_inf_where_q_forbids_p_mass():
    pr = _problem("plain")
    g_q = pr.q_g.copy()
    g_q[0, 1] = -np.inf  # p (finite scores) puts mass on 0 -> 1 in every row with L >= 2
    p = _dist(pr)
    q = LinearChainCRF(jnp.asarray(pr.q_em), jnp.asarray(g_q), mask=jnp.asarray(MASK))
    ce, kl = np.asarray(p.cross_entropy(q)), np.asarray(p.kl_divergence(q))
    kl_qp = np.asarray(q.kl_divergence(p))  # q's support is inside p's: finite
    for b, br in enumerate(pr.brute):
        qb = Brute(pr.q_em[b], g_q, None, None, MASK[b])
        if NUM_VALID[b] >= 2:
            assert ce[b] == np.inf and kl[b] == np.inf, (b, ce[b], kl[b])
        _close(ce[b], br.cross_entropy(qb), atol=ATOL_ENTROPY, msg=f"cross_entropy {b}")
        _close(kl[b], br.kl(qb), atol=ATOL_ENTROPY, msg=f"kl {b}")
        _close(kl_qp[b], qb.kl(br), atol=ATOL_ENTROPY, msg=f"kl(q, p) {b}")
        assert np.isfinite(kl_qp[b])


# ---------------------------------------------------------------------- sampling


def test_sample_matches_exact_path_distribution():
    """20 000 exact samples per row. Bounds: E[TV] <= ½ Σ_y sqrt(p_y (1 - p_y) / n)
    (Jensen per path), and TV changes by at most 1/n when one sample changes, so by
    McDiarmid P(TV > E[TV] + ε) <= exp(-2 n ε²) = 1e-6 for ε = sqrt(ln(1e6) / (2n)) ≈ 0.019.
    Per-position frequencies: Hoeffding, P(|freq - P| > 0.02) <= 2 exp(-2 n 0.02²) ≈ 2e-7
    per entry (< 1e-4 over all entries)."""
    pr = _problem("constrained")
    n = 20_000
    samples = np.asarray(_dist(pr).sample(jax.random.key(0), (n,)))
    assert samples.shape == (n, B, T) and samples.dtype == np.int32
    assert np.all(samples[:, ~MASK] == -1)
    assert np.all((samples[:, MASK] >= 0) & (samples[:, MASK] < K))
    eps = math.sqrt(math.log(1e6) / (2 * n))
    for b, br in enumerate(pr.brute):
        y = samples[:, b][:, br.valid]
        idx = np.sum(y * K ** np.arange(br.length - 1, -1, -1), axis=1)
        freq = np.bincount(idx, minlength=K**br.length) / n
        assert np.all(freq[br.p == 0] == 0), f"row {b}: samples use forbidden scores"
        tv = 0.5 * np.abs(freq - br.p).sum()
        bound = 0.5 * np.sum(np.sqrt(br.p * (1 - br.p) / n)) + eps
        assert tv <= bound, f"row {b} (L={br.length}): TV {tv:.4f} > bound {bound:.4f}"
        if br.length <= 3:  # small supports: the bound is tight enough to mean something
            assert bound < 0.04
        emp = np.zeros((T, K))
        for t in br.valid:
            emp[t] = np.bincount(samples[:, b, t], minlength=K) / n
        _close(emp, br.marg, atol=0.02, rtol=0, msg=f"row {b}: per-position frequencies")


def test_sample_shapes_and_masks():
    """(Batch [2, 4] with sample_shape (2, 2) is checked under jit above.)"""
    pr = _problem("plain")
    d = _dist(pr)
    key = jax.random.key(1)
    for sample_shape in ((), SAMPLE_SHAPE):
        s = np.asarray(d.sample(key, sample_shape))
        assert s.shape == (*sample_shape, B, T) and s.dtype == np.int32
        s = s.reshape(-1, B, T)
        assert np.all(s[:, ~MASK] == -1)
        assert np.all((s[:, MASK] >= 0) & (s[:, MASK] < K))
    s1 = np.asarray(d.sample(key, SAMPLE_SHAPE))
    np.testing.assert_array_equal(s1, np.asarray(d.sample(key, SAMPLE_SHAPE)))  # deterministic
    assert not np.array_equal(s1, np.asarray(d.sample(jax.random.key(2), SAMPLE_SHAPE)))


# -------------------------------------------------------------------- non-finite


NAN_CASES = {
    # name: (where the NaN goes, entries, rows expected NaN)
    "emission_valid": ("em", [(2, 4, 1), (4, 2, 0)], {2, 4}),
    "emission_masked": ("em", [(1, 0, 0), (3, 4, 0), (6, 2, 2), (5, 3, 1)], set()),
    "transitions": ("g", [(1, 2)], set(np.flatnonzero(NUM_VALID >= 2))),
    "start": ("start", [(0,)], set(np.flatnonzero(NUM_VALID >= 1))),
    "end": ("end", [(2,)], set(np.flatnonzero(NUM_VALID >= 1))),
}


@pytest.mark.parametrize("case", list(NAN_CASES))
def test_nan_inputs_poison_exactly_the_rows_they_enter(case):
    pr = _problem("constrained")
    arrays = {k: getattr(pr, k).copy() for k in ("em", "g", "start", "end")}
    where, entries, nan_rows = NAN_CASES[case]
    for e in entries:
        arrays[where][e] = np.nan
    em, g, start, end = (jnp.asarray(arrays[k]) for k in ("em", "g", "start", "end"))
    mask = jnp.asarray(MASK)
    tags = jnp.asarray(pr.best)
    out = {}
    for a in ALGORITHMS:
        out[f"crf_log_partition/{a}"] = crf_log_partition(em, g, mask, start, end, algorithm=a)
        out[f"crf_log_likelihood/{a}"] = crf_log_likelihood(
            em, tags, g, mask, start, end, algorithm=a
        )
        out[f"crf_marginals/{a}"] = crf_marginals(em, g, mask, start, end, algorithm=a)
    out["viterbi_decode score"] = viterbi_decode(em, g, mask, start, end)[1]
    d = LinearChainCRF(em, g, mask=mask, start=start, end=end)
    out["log_partition"] = d.log_partition()
    out["log_prob"] = d.log_prob(tags)
    out["marginals"] = d.marginals()
    out["argmax score"] = d.argmax()[1]
    out["entropy"] = d.entropy()
    failures = []
    for key, value in out.items():
        value = np.asarray(value)
        for b, br in enumerate(pr.brute):
            if key.startswith(("crf_log_partition", "log_partition")):
                want = br.log_z
            elif key.startswith(("crf_log_likelihood", "log_prob")):
                want = br.log_prob(pr.best[b])
            elif key.startswith(("crf_marginals", "marginals")):
                want = br.marg
            elif key.endswith("score"):
                want = br.sorted_scores[0]
            else:
                want = br.entropy
            if b in nan_rows:
                got = value[b][MASK[b]] if "marginals" in key else value[b]
                if not np.all(np.isnan(got)):
                    failures.append(f"{key} row {b} should be NaN: {got}")
            else:
                atol = ATOL_ENTROPY if key == "entropy" else ATOL
                if not np.allclose(value[b], want, rtol=RTOL, atol=atol, equal_nan=False):
                    failures.append(f"{key} row {b}: {value[b]} != {want}")
    assert not failures, f"{case}:\n" + "\n".join(failures)


def _no_path_problem():
    """Transitions all -inf: rows with L >= 2 have no feasible path."""
    pr = _problem("plain")
    g = np.full((K, K), -np.inf, np.float32)
    start, end = np.array([0.3, -0.2, 0.1], np.float32), np.array([0.0, 0.5, -1.0], np.float32)
    brute = [Brute(pr.em[b], g, start, end, MASK[b]) for b in range(B)]
    return pr.em, g, start, end, brute


def test_rows_without_feasible_path_give_minus_inf_and_zero_gradients():
    em, g, start, end, brute = _no_path_problem()
    infeasible = NUM_VALID >= 2
    assert [not br.feasible for br in brute] == infeasible.tolist()
    tags = _problem("plain").tags
    mask = jnp.asarray(MASK)
    want_z, want_ll = _expected_grads(brute), _expected_grads(brute, tags)
    assert np.all(want_z[0][infeasible] == 0) and np.all(want_z[1] == 0)  # no transition used

    def check(what, lz, ll, grads_z, grads_ll):
        lz, ll = np.asarray(lz), np.asarray(ll)
        assert np.all(lz[infeasible] == -np.inf), f"{what}: log_partition {lz}"
        assert np.all(ll[infeasible] == -np.inf), f"{what}: log_prob {ll}"
        _close(lz, [br.log_z for br in brute], msg=what)
        _close(ll[~infeasible], [br.log_prob(t) for br, t in zip(brute, tags) if br.feasible])
        _check_grads(grads_z, want_z, f"{what}: log Z")
        _check_grads(grads_ll, want_ll, f"{what}: log P")

    for a in ALGORITHMS:
        check(
            a,
            crf_log_partition(em, g, mask, start, end, algorithm=a),
            crf_log_likelihood(em, tags, g, mask, start, end, algorithm=a),
            _grads("log_partition", a, em, g, start, end, mask),
            _grads("log_likelihood", "rescaled", em, g, start, end, mask, tags),
        )
    d = LinearChainCRF(em, g, mask=mask, start=start, end=end)
    check(
        "LinearChainCRF",
        d.log_partition(),
        d.log_prob(tags),
        _grads("dist_log_partition", None, em, g, start, end, mask),
        _grads("dist_log_prob", None, em, g, start, end, mask, tags),
    )
    for what, score in (
        ("argmax", d.argmax()[1]),
        ("viterbi_decode", viterbi_decode(em, g, mask, start, end)[1]),
    ):
        score = np.asarray(score)
        assert np.all(score[infeasible] == -np.inf), f"{what}: {score}"
        _close(score, [br.sorted_scores[0] for br in brute], msg=what)


def test_feasibility_follows_the_compacted_length():
    """Only the cycle 0 -> 1 -> 2 -> 0 is allowed, starting and ending at tag 0: a row is
    feasible iff its number of valid positions L ≡ 1 (mod 3), with exactly one path."""
    em = _problem("plain").em
    rng = np.random.default_rng(5)
    g = np.full((K, K), -np.inf, np.float32)
    g[0, 1], g[1, 2], g[2, 0] = rng.normal(size=3)
    start = np.array([0.3, -np.inf, -np.inf], np.float32)
    end = np.array([-0.4, -np.inf, -np.inf], np.float32)
    brute = [Brute(em[b], g, start, end, MASK[b]) for b in range(B)]
    feasible = np.array([br.feasible for br in brute])
    assert feasible.tolist() == [n % 3 == 1 or n == 0 for n in NUM_VALID]
    assert feasible[2] and NUM_VALID[2] == 4  # the row with a gap: feasible only compacted
    unique = np.stack([br.tags(br.order[0]) for br in brute])
    mask = jnp.asarray(MASK)
    for a in ALGORITHMS:
        lz = crf_log_partition(em, g, mask, start, end, algorithm=a)
        _close(lz, [br.log_z for br in brute], msg=f"{a}: log_partition")
        ll = np.asarray(crf_log_likelihood(em, unique, g, mask, start, end, algorithm=a))
        _close(ll[feasible], 0.0, msg=f"{a}: log-likelihood of the only path")
        assert np.all(ll[~feasible] == -np.inf), f"{a}: {ll}"
        marg = np.asarray(crf_marginals(em, g, mask, start, end, algorithm=a))
        _close(marg[feasible], np.stack([br.marg for br in brute])[feasible], msg=a)
        grads = _grads("log_partition", a, em, g, start, end, mask)
        _check_grads(grads, _expected_grads(brute), f"{a}: log Z")
    d = LinearChainCRF(em, g, mask=mask, start=start, end=end)
    _close(d.log_partition(), [br.log_z for br in brute])
    tags, score = (np.asarray(x) for x in d.argmax())
    np.testing.assert_array_equal(tags[feasible], unique[feasible])
    _close(score, [br.sorted_scores[0] for br in brute])
    _close(np.asarray(d.entropy())[feasible], 0.0, atol=ATOL_ENTROPY)
    _close(np.asarray(d.marginals())[feasible], np.stack([br.marg for br in brute])[feasible])
    top_tags, top_scores = (np.asarray(x) for x in d.top_k(TOP))
    _close(top_scores[feasible, 0], score[feasible])
    assert np.all(top_scores[:, 1:] == -np.inf) and np.all(top_tags[:, 1:] == -1)
    assert np.all(top_scores[~feasible, 0] == -np.inf) and np.all(top_tags[~feasible] == -1)
    np.testing.assert_array_equal(top_tags[feasible, 0], unique[feasible])
    samples = np.asarray(d.sample(jax.random.key(3), SAMPLE_SHAPE)).reshape(-1, B, T)
    want = np.broadcast_to(unique[feasible], (len(samples), *unique[feasible].shape))
    np.testing.assert_array_equal(samples[:, feasible], want)
    mbr_tags, mbr_score = (np.asarray(x) for x in d.mbr_decode())
    np.testing.assert_array_equal(mbr_tags[feasible], unique[feasible])
    _close(mbr_score[feasible], 0.0)


# -------------------------------------------------------------------------- MEMM


def _memm_reference(em, tags, g, mask, direction):
    """numpy MEMM log-likelihood of each row's compacted sequence (-inf if a step has no
    allowed tag)."""

    def one(f, y, backward):
        n, total = len(y), 0.0
        for i in range(n):
            if backward:
                logits = f[i] + (g[:, y[i + 1]] if i < n - 1 else 0.0)
            else:
                logits = f[i] + (g[y[i - 1]] if i > 0 else 0.0)
            norm = logsumexp(logits)
            if norm == -np.inf:
                return -np.inf
            total += logits[y[i]] - norm
        return total

    g = np.asarray(g, np.float64)
    out = []
    for b in range(len(em)):
        v = np.flatnonzero(mask[b])
        f, y = np.asarray(em[b], np.float64)[v], np.asarray(tags[b])[v]
        fwd, bwd = one(f, y, False), one(f, y, True)
        out.append({"forward": fwd, "backward": bwd, "both": (fwd + bwd) / 2}[direction])
    return np.array(out)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_memm_with_holes_matches_reference(direction):
    pr = _problem("constrained")
    for tags in (pr.tags, pr.best):  # pr.tags may use forbidden transitions: -inf rows
        got = memm_log_likelihood(pr.em, tags, pr.g, MASK, direction=direction)
        _close(got, _memm_reference(pr.em, tags, pr.g, MASK, direction), msg=direction)
    rng = np.random.default_rng(7)
    left, right = (rng.normal(size=(K, 2)).astype(np.float32) for _ in range(2))
    got = memm_log_likelihood(pr.em, pr.tags, (left, right), MASK, direction=direction)
    want = _memm_reference(pr.em, pr.tags, left @ right.T, MASK, direction)
    _close(got, want, msg=f"low-rank {direction}")


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_memm_rows_without_feasible_path_are_minus_inf(direction):
    em, g, _, _, _ = _no_path_problem()
    tags = _problem("plain").tags
    got = np.asarray(memm_log_likelihood(em, tags, g, MASK, direction=direction))
    assert np.all(got[NUM_VALID >= 2] == -np.inf), got
    _close(got[NUM_VALID < 2], _memm_reference(em, tags, g, MASK, direction)[NUM_VALID < 2])
    assert np.all(np.isfinite(got[NUM_VALID < 2]))


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_memm_nan_inputs(direction):
    pr = _problem("plain")
    em = pr.em.copy()
    em[2, 4, 1] = np.nan  # valid position of row 2
    em[3, 4, 0] = em[6, 2, 2] = em[5, 0, 0] = np.nan  # masked positions
    got = np.asarray(memm_log_likelihood(em, pr.tags, pr.g, MASK, direction=direction))
    assert np.isnan(got[2]), got
    want = _memm_reference(pr.em, pr.tags, pr.g, MASK, direction)
    others = np.arange(B) != 2
    _close(got[others], want[others], msg="rows without a NaN at a valid position")
    if direction != "backward":  # the forward factors read the row g[1, :] after a tag 1
        g = pr.g.copy()
        g[1, 2] = np.nan
        ones = np.where(MASK, 1, -1)
        got = np.asarray(memm_log_likelihood(pr.em, ones, g, MASK, direction=direction))
        assert np.all(np.isnan(got[NUM_VALID >= 2])), got
        want = _memm_reference(pr.em, ones, g, MASK, direction)
        _close(got[NUM_VALID < 2], want[NUM_VALID < 2])


# -------------------------------------------------------------- property tests

# Random masks for rows 0..6; row 7 keeps MASK[6] = [0, 1, 0, 1, 0, 1], so every batch has
# holes and the shapes ([8, 6, 3]) match the other tests (no new compilation).
_mask_bits = st.lists(st.booleans(), min_size=(B - 1) * T, max_size=(B - 1) * T)
_forbid_bits = st.lists(st.booleans(), min_size=K * K, max_size=K * K)


def _random_pair(seed, bits, forbid):
    """p (some off-diagonal transitions forbidden; constant paths stay feasible) and q
    (finite scores), on a random mask with holes."""
    rng = np.random.default_rng(seed)
    mask = np.concatenate([np.array(bits, bool).reshape(B - 1, T), MASK[6:7]])
    em = (2 * rng.normal(size=(B, T, K))).astype(np.float32)
    g, start, end = ((2 * rng.normal(size=s)).astype(np.float32) for s in ((K, K), K, K))
    g[np.array(forbid, bool).reshape(K, K) & ~np.eye(K, dtype=bool)] = -np.inf
    q_em = rng.normal(size=(B, T, K)).astype(np.float32)
    q_g, q_start, q_end = (rng.normal(size=s).astype(np.float32) for s in ((K, K), K, K))
    return mask, (em, g, start, end), (q_em, q_g, q_start, q_end)


def _crf(mask, em, g, start, end):
    return LinearChainCRF(
        jnp.asarray(em), jnp.asarray(g), mask=jnp.asarray(mask), start=start, end=end
    )


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=_mask_bits, forbid=_forbid_bits)
def test_property_information_quantities_and_marginals(seed, bits, forbid):
    mask, p_args, q_args = _random_pair(seed, bits, forbid)
    p, q = _crf(mask, *p_args), _crf(mask, *q_args)
    bp = [Brute(*(a[b] if i == 0 else a for i, a in enumerate(p_args)), mask[b]) for b in range(B)]
    bq = [Brute(*(a[b] if i == 0 else a for i, a in enumerate(q_args)), mask[b]) for b in range(B)]
    ent = np.asarray(p.entropy())
    kl_pp = np.asarray(p.kl_divergence(p))
    kl_pq = np.asarray(p.kl_divergence(q))
    kl_qp = np.asarray(q.kl_divergence(p))
    assert np.all(ent >= -1e-5) and np.all(kl_pq >= -1e-5), (ent, kl_pq)
    _close(kl_pp, 0.0, atol=ATOL_ENTROPY, msg="KL(p || p)")
    marg = np.asarray(p.marginals())
    pair = np.asarray(p.transition_marginals())
    _close(marg.sum(-1), mask.astype(float), msg="marginals sum to 1 / 0")
    assert np.all(marg[~mask] == 0) and np.all(pair[~mask] == 0)
    _close(p.log_partition(), [br.log_z for br in bp], msg="log_partition")
    for b, (br, qb) in enumerate(zip(bp, bq)):
        _close(ent[b], br.entropy, atol=ATOL_ENTROPY, msg="entropy")
        _close(kl_pq[b], br.kl(qb), atol=ATOL_ENTROPY, msg="KL(p || q)")
        _close(kl_qp[b], qb.kl(br), atol=ATOL_ENTROPY, msg="KL(q || p)")  # may be +inf
        _close(marg[b], br.marg, msg="marginals")
        _close(pair[b], br.pair, msg="transition_marginals")
        v = br.valid
        for i in range(1, len(v)):  # pairwise marginals are consistent with the unary ones
            _close(pair[b, v[i]].sum(0), marg[b, v[i]])
            _close(pair[b, v[i]].sum(1), marg[b, v[i - 1]])
        if len(v):
            assert np.all(pair[b, v[0]] == 0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=_mask_bits, forbid=_forbid_bits)
def test_property_samples_are_feasible_and_never_beat_argmax(seed, bits, forbid):
    mask, (em, g, start, end), _ = _random_pair(seed, bits, forbid)
    p = _crf(mask, em, g, start, end)
    samples = np.asarray(p.sample(jax.random.key(seed % 1000), SAMPLE_SHAPE))
    assert samples.shape == (*SAMPLE_SHAPE, B, T)
    samples = samples.reshape(-1, B, T)
    assert np.all(samples[:, ~mask] == -1)
    best_tags, best_score = p.argmax()
    lp_best = np.asarray(p.log_prob(best_tags))
    lz = np.asarray(p.log_partition())
    brute = [Brute(em[b], g, start, end, mask[b]) for b in range(B)]
    for s in samples:
        lp = np.asarray(p.log_prob(jnp.asarray(s)))
        assert np.all(np.isfinite(lp)), "a sample has probability 0"
        assert np.all(lp <= lp_best + 1e-4) and np.all(lp <= np.asarray(best_score) - lz + 1e-4)
        _close(lp, [br.log_prob(row) for br, row in zip(brute, s)], msg="log_prob of a sample")


# ------------------------------------------------------------------------- pytree


def test_pytree_round_trip_and_jit_argument():
    pr = _problem("constrained")
    d = _dist(pr)
    want = np.array([br.log_z for br in pr.brute])
    leaves, treedef = jax.tree_util.tree_flatten(d)
    assert leaves, "the distribution has no array leaves"
    d2 = jax.tree_util.tree_unflatten(treedef, leaves)
    assert isinstance(d2, LinearChainCRF)
    _close(d2.log_partition(), want, msg="after unflatten")
    d3 = jax.tree_util.tree_map(lambda x: x, d)
    _close(d3.log_partition(), want, msg="after tree_map")
    lz, lp = jax.jit(lambda dist, t: (dist.log_partition(), dist.log_prob(t)))(
        d, jnp.asarray(pr.best)
    )
    _close(lz, want, msg="jit argument")
    _close(lp, [br.log_prob(row) for br, row in zip(pr.brute, pr.best)], msg="jit log_prob")
    made = jax.jit(
        lambda em, mask: LinearChainCRF(em, pr.g, mask=mask, start=pr.start, end=pr.end)
    )(jnp.asarray(pr.em), jnp.asarray(MASK))
    assert isinstance(made, LinearChainCRF)
    _close(made.log_partition(), want, msg="returned from jit")
    _close(made.marginals(), np.stack([br.marg for br in pr.brute]), msg="returned from jit")


# -------------------------------------------------------------------- NNX module


@pytest.mark.parametrize("constrained", [False, True])
def test_crf_module_distribution(constrained):
    kwargs = {}
    if constrained:  # BIO over one entity type: O, B-X, I-X (I-X cannot follow O or start)
        kwargs["allowed"] = allowed_transitions("BIO", ["O", "B-X", "I-X"])
    crf = CRF(K, rngs=nnx.Rngs(0), **kwargs)
    g, start, end = (None if x is None else np.asarray(x) for x in crf.scores())
    pr = _problem("plain")
    em = jnp.asarray(pr.em)
    d = crf.distribution(em, jnp.asarray(MASK))
    ref = LinearChainCRF(em, g, mask=jnp.asarray(MASK), start=start, end=end)
    assert isinstance(d, LinearChainCRF)
    brute = [Brute(pr.em[b], g, start, end, MASK[b]) for b in range(B)]
    if constrained:
        assert np.isinf(g).any()
    for dist in (d, ref):
        _close(dist.log_partition(), [br.log_z for br in brute])
        _close(dist.marginals(), np.stack([br.marg for br in brute]))
        tags, score = (np.asarray(x) for x in dist.argmax())
        for b, br in enumerate(brute):
            _check_path(tags[b], score[b], br, br.scores, br.sorted_scores[0], "module argmax")
    best = np.stack([br.tags(br.order[0]) for br in brute])
    want = [br.log_prob(r) for br, r in zip(brute, best)]
    _close(d.log_prob(jnp.asarray(best)), want)
    _close(crf.log_likelihood(em, jnp.asarray(best), jnp.asarray(MASK)), want)
    d_len = crf.distribution(em, lengths=jnp.asarray(LENGTHS))
    brute_len = [Brute(pr.em[b], g, start, end, RIGHT_MASK[b]) for b in range(B)]
    _close(d_len.log_partition(), [br.log_z for br in brute_len])

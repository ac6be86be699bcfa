"""Tests for the geometric initialisers and diagnostics (Su Jianlin, https://kexue.fm/archives/7180).

References: ``jax.nn.initializers.variance_scaling`` (same key -> same samples, so
the fan computation and distributions are checked exactly), closed-form
variances with tolerances from the sample standard error, and the article's
predictions (``E[WᵀW] = mσ² I``, ``(n+1)/n²`` orthogonality error, cosine
variance ``1/n``, norm preservation for ``m ≥ n``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flax_layers import (
    compute_fans,
    geometric_init,
    glorot,
    he,
    lecun,
    norm_preservation_ratio,
    norm_preserving,
    orthogonality_error,
    xavier,
)

# "rbg" keys compile ~10x faster than threefry on CPU; the statistics do not care.
KEY = jax.random.key(0, impl="rbg")


def _key(i):
    return jax.random.key(i, impl="rbg")


DISTS = ("normal", "uniform", "truncated_normal")


def _check_variance(w, var, *, n_se=5.0):
    """Sample variance (about the known mean 0) within n_se standard errors of var."""
    x = np.asarray(w, np.float64).ravel()
    sq = x * x
    se = sq.std() / math.sqrt(sq.size)
    assert abs(sq.mean() - var) < n_se * se, (sq.mean(), var, se)
    assert abs(x.mean()) < n_se * math.sqrt(var / x.size)


# --------------------------------------------------------------------------- fans


# (shape, kwargs): dense, conv1d, conv2d, conv3d, LinearGeneral, batched
SHAPES = [
    ((24, 40), {}),
    ((5, 6, 10), {}),
    ((3, 3, 8, 16), {}),
    ((2, 3, 3, 4, 6), {}),
    ((4, 6, 5, 3), {"in_axis": (0, 1), "out_axis": (2, 3)}),
    ((3, 16, 8), {"batch_axis": 0}),
    ((8, 4, 12), {"in_axis": 0, "out_axis": -1}),
]


@pytest.mark.parametrize("shape, axes", SHAPES)
def test_samples_equal_variance_scaling(shape, axes):
    # every mode with one distribution, every distribution with one mode
    combos = [(m, "normal") for m in ("fan_in", "fan_out", "fan_avg", "fan_geo_avg")]
    combos += [("fan_avg", "uniform"), ("fan_avg", "truncated_normal")]
    for mode, dist in combos:
        ours = geometric_init(1.7, mode, dist, **axes)(KEY, shape)
        theirs = jax.nn.initializers.variance_scaling(1.7, mode, dist, **axes)(KEY, shape)
        np.testing.assert_allclose(ours, theirs, rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("shape, axes", SHAPES)
def test_compute_fans_equals_jax(shape, axes):
    jax_fans = pytest.importorskip("jax._src.nn.initializers")._compute_fans
    assert compute_fans(shape, **axes) == tuple(float(f) for f in jax_fans(shape, **axes))


def test_compute_fans_closed_forms():
    assert compute_fans((24, 40)) == (24.0, 40.0)
    assert compute_fans((3, 3, 16, 32)) == (3 * 3 * 16, 3 * 3 * 32)
    assert compute_fans((4, 6, 5, 3), in_axis=(0, 1), out_axis=(2, 3)) == (24.0, 15.0)
    assert compute_fans((3, 16, 8), batch_axis=0) == (16.0, 8.0)
    assert compute_fans((7,), in_axis=0, out_axis=()) == (7.0, 1.0)


@pytest.mark.parametrize(
    "init, fan",
    [
        (norm_preserving, lambda fi, fo: fo),
        (lecun, lambda fi, fo: fi),
        (xavier, lambda fi, fo: (fi + fo) / 2),
        (glorot, lambda fi, fo: (fi + fo) / 2),
        (he, lambda fi, fo: fo / 2),
        (lambda d, **kw: he(d, mode="fan_in", **kw), lambda fi, fo: fi / 2),
    ],
    ids=["norm_preserving", "lecun", "xavier", "glorot", "he_fan_out", "he_fan_in"],
)
def test_named_variances(init, fan):
    shape = (2, 128, 512)  # a conv1d kernel: fan_in 256, fan_out 1024
    fi, fo = 256, 1024
    for dist, key in zip(DISTS, jax.random.split(KEY, 3)):
        w = init(dist)(key, shape)
        assert w.shape == shape and w.dtype == jnp.float32
        _check_variance(w, 1.0 / fan(fi, fo))


def test_matches_jax_named_initializers():
    shape = (3, 3, 8, 16)
    pairs = [
        (lecun("truncated_normal"), jax.nn.initializers.lecun_normal()),
        (lecun("uniform"), jax.nn.initializers.lecun_uniform()),
        (xavier("uniform"), jax.nn.initializers.glorot_uniform()),
        (xavier("truncated_normal"), jax.nn.initializers.glorot_normal()),
        (he("truncated_normal", mode="fan_in"), jax.nn.initializers.he_normal()),
        (he("uniform", mode="fan_in"), jax.nn.initializers.he_uniform()),
    ]
    for ours, theirs in pairs:
        np.testing.assert_allclose(ours(KEY, shape), theirs(KEY, shape), rtol=2e-6, atol=1e-7)


def test_uniform_bound_and_truncated_normal():
    var = 1.0 / 400
    u = geometric_init(1.0, "fan_out", "uniform")(KEY, (300, 400))
    bound = math.sqrt(3 * var)
    assert float(jnp.abs(u).max()) <= bound * (1 + 1e-6)
    assert float(jnp.abs(u).max()) > 0.99 * bound
    _check_variance(u, var)
    t = geometric_init(1.0, "fan_out", "truncated_normal")(KEY, (300, 400))
    tstd = 0.87962566103423978  # jax's constant: std of N(0,1) truncated to [-2, 2]
    assert float(jnp.abs(t).max()) <= 2 * math.sqrt(var) / tstd * (1 + 1e-6)
    _check_variance(t, var)
    # the truncated std constant by direct numerical integration
    x = np.linspace(-2, 2, 200_001)
    pdf = np.exp(-0.5 * x * x)
    assert abs(math.sqrt(np.trapezoid(x * x * pdf, x) / np.trapezoid(pdf, x)) - tstd) < 1e-9


def test_dtypes_jit_and_empty():
    init = norm_preserving("truncated_normal")
    for dtype in (jnp.bfloat16, jnp.float16, jnp.float32):
        w = init(KEY, (64, 32), dtype)
        assert w.dtype == dtype and bool(jnp.all(jnp.isfinite(w)))
    assert norm_preserving(dtype=jnp.bfloat16)(KEY, (4, 4)).dtype == jnp.bfloat16
    jitted = jax.jit(init, static_argnums=(1, 2))(KEY, (16, 8), jnp.float32)
    np.testing.assert_allclose(jitted, init(KEY, (16, 8)), rtol=1e-6)
    assert init(KEY, (0, 8)).shape == (0, 8)


def test_out_sharding_is_forwarded():
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((8,), ("x",), axis_types=(AxisType.Explicit,))
    with jax.set_mesh(mesh):
        sharding = NamedSharding(mesh, P(None, "x"))
        w = norm_preserving()(KEY, (16, 64), out_sharding=sharding)
        ref = jax.nn.initializers.variance_scaling(1.0, "fan_out", "normal")(
            KEY, (16, 64), out_sharding=sharding
        )
    assert w.sharding == sharding
    np.testing.assert_allclose(w, ref, rtol=2e-6)


# --------------------------------------------------------------------------- flax layers


def test_kernel_init_in_nnx_layers():
    rngs = nnx.Rngs(params=_key(0))
    lin = nnx.Linear(256, 512, kernel_init=norm_preserving(), rngs=rngs)
    _check_variance(lin.kernel[...], 1 / 512)
    conv = nnx.Conv(16, 64, (3, 3), kernel_init=norm_preserving(), rngs=rngs)
    assert conv.kernel.shape == (3, 3, 16, 64)
    _check_variance(conv.kernel[...], 1 / (9 * 64))
    # LinearGeneral flattens the kernel to [in, out] before calling kernel_init
    lg = nnx.LinearGeneral((8, 16), (4, 32), axis=(-2, -1), kernel_init=lecun(), rngs=rngs)
    assert lg.kernel.shape == (8, 16, 4, 32)
    _check_variance(lg.kernel[...], 1 / 128)
    ein = nnx.Einsum("bd,dh->bh", (128, 256), kernel_init=xavier("uniform"), rngs=rngs)
    _check_variance(ein.kernel[...], 2 / (128 + 256))
    assert ein(jnp.ones((2, 128))).shape == (2, 256)


def test_conv_norm_preservation_uses_fan_out():
    # Stride-1 circular convolution: every input pixel is in receptive_field patches,
    # so sum ||y||^2 = fan_out sigma^2 ||x||^2 in expectation -> 1 for norm_preserving.
    conv = nnx.Conv(
        16,
        64,
        (3, 3),
        padding="CIRCULAR",
        use_bias=False,
        kernel_init=norm_preserving(),
        rngs=nnx.Rngs(params=_key(1)),
    )
    x = jax.random.normal(_key(2), (2, 32, 32, 16))
    ratio = float(jnp.linalg.norm(conv(x)) / jnp.linalg.norm(x))
    assert abs(ratio - 1) < 0.05, ratio


# --------------------------------------------------------------------------- the article


def test_expected_gram_is_m_sigma2_identity():
    n, m, scale, reps = 6, 10, 0.5, 4000
    init = geometric_init(scale, "fan_out", "normal")  # sigma^2 = scale / m
    ks = jax.vmap(lambda k: init(k, (n, m)))(jax.random.split(KEY, reps))  # [reps, n, m]
    gram = np.asarray(jnp.einsum("rim,rjm->rij", ks, ks), np.float64)
    mean = gram.mean(0)
    se = gram.std(0) / math.sqrt(reps)
    want = m * (scale / m) * np.eye(n)  # E[W^T W] = m sigma^2 I
    assert np.all(np.abs(mean - want) < 5 * se + 1e-12)


@pytest.mark.parametrize("dist", DISTS)
def test_square_orthogonality_error(dist):
    n = 256
    keys = jax.random.split(KEY, 4)
    errs = [float(orthogonality_error(norm_preserving(dist)(k, (n, n)))) for k in keys]
    err = float(np.mean(errs))
    if dist == "normal":
        assert abs(err / ((n + 1) / n**2) - 1) < 0.03  # the article's (n+1)/n^2
    # any distribution: (n - 1 + kappa) / n^2 with kappa = E[w^4]/sigma^4 - 1
    # (diagonal entries have variance kappa/n, off-diagonal ones 1/n)
    kappa = {"normal": 2.0, "uniform": 0.8, "truncated_normal": None}[dist]
    if kappa is None:
        x = np.linspace(-2, 2, 200_001)
        pdf = np.exp(-0.5 * x * x)
        m2 = np.trapezoid(x**2 * pdf, x) / np.trapezoid(pdf, x)
        m4 = np.trapezoid(x**4 * pdf, x) / np.trapezoid(pdf, x)
        kappa = m4 / m2**2 - 1
    assert abs(err / ((n - 1 + kappa) / n**2) - 1) < 0.03


def test_orthogonality_error_rectangular_and_variance_argument():
    n, m = 32, 2048
    k = norm_preserving()(KEY, (n, m))
    want = (n + 1) / (n * m)  # diag var 2/m, off-diag 1/m
    assert abs(float(orthogonality_error(k)) / want - 1) < 0.15
    kl = lecun()(KEY, (n, m))  # variance 1/n: raw Gram ~ (m/n) I, far from I
    assert float(orthogonality_error(kl)) > 100  # about (m/n - 1)^2 / n = 124
    assert abs(float(orthogonality_error(kl, variance=1 / n)) / want - 1) < 0.15
    # conv kernel: Gram over input channels contracts outputs and receptive field
    kc = norm_preserving()(KEY, (3, 3, 8, 128))
    want_c = (8 + 1) / (8 * 9 * 128)
    assert abs(float(orthogonality_error(kc)) / want_c - 1) < 0.3


def test_random_cosine_variance_is_one_over_n():
    n, pairs = 128, 4000
    k = norm_preserving()(KEY, (2 * pairs, n))  # rows: 2*pairs random n-vectors
    a, b = np.asarray(k[:pairs], np.float64), np.asarray(k[pairs:], np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert abs(cos.mean()) < 5 / math.sqrt(n * pairs)
    assert abs(cos.var() * n - 1) < 0.1  # rel. s.e. sqrt(2/pairs) ~ 2%


def test_norm_preservation_m_ge_n_and_failure_m_lt_n():
    n, m = 64, 4096
    k = norm_preserving()(KEY, (n, m))
    x = jax.random.normal(_key(3), (500, n))
    assert abs(float(norm_preservation_ratio(k, x)) - 1) < 0.02
    # for EVERY x: singular values of K in the Marchenko-Pastur band 1 +- sqrt(n/m)
    sv = np.linalg.svd(np.asarray(k, np.float64), compute_uv=False)
    edge = math.sqrt(n / m)
    assert sv.min() > 1 - 1.5 * edge and sv.max() < 1 + 1.5 * edge
    # m < n: still 1 on average, but K K^T has rank m < n, so some inputs vanish
    ks = norm_preserving()(KEY, (256, 64))
    assert abs(float(norm_preservation_ratio(ks, x @ jnp.ones((n, 256)) / 8)) - 1) < 0.3
    null = np.linalg.svd(np.asarray(ks, np.float64))[0][:, -1]  # left null vector
    assert float(norm_preservation_ratio(ks, null[None])) < 1e-5


def test_he_fan_out_preserves_norm_through_relu():
    n, m = 64, 4096
    k = he()(KEY, (n, m))
    x = jax.random.normal(_key(4), (200, n))
    y = jax.nn.relu(x @ k)
    ratio = jnp.linalg.norm(y, axis=1) / jnp.linalg.norm(x, axis=1)
    assert abs(float(jnp.mean(ratio**2)) - 1) < 0.05


def test_linear_general_norm_ratio():
    k = norm_preserving(in_axis=(0, 1), out_axis=(2, 3))(KEY, (4, 8, 32, 64))
    x = jax.random.normal(_key(5), (100, 4, 8))
    assert abs(float(norm_preservation_ratio(k, x, in_axis=(0, 1))) - 1) < 0.02


# --------------------------------------------------------------------------- errors


def test_errors():
    with pytest.raises(ValueError, match=r"`mode` must be one of"):
        geometric_init(1.0, "fan_sum")
    with pytest.raises(ValueError, match=r"`distribution` must be one of"):
        geometric_init(1.0, "fan_in", "cauchy")
    with pytest.raises(ValueError, match=r"`scale` must be a positive finite number"):
        geometric_init(0.0)
    with pytest.raises(ValueError, match=r"he: `mode` must be 'fan_out' or 'fan_in'"):
        he(mode="fan_avg")
    with pytest.raises(ValueError, match=r"at least 2-d, or pass `in_axis`"):
        norm_preserving()(KEY, (5,))
    with pytest.raises(ValueError, match=r"`out_axis`=3 is out of range for a 2-d"):
        geometric_init(out_axis=3)(KEY, (4, 5))
    with pytest.raises(ValueError, match=r"must be disjoint"):
        geometric_init(in_axis=0, out_axis=(0, 1))(KEY, (4, 5))
    with pytest.raises(TypeError, match=r"`dtype` must be a real floating dtype"):
        lecun()(KEY, (4, 5), jnp.int32)
    with pytest.raises(ValueError, match=r"`kernel` must be at least 2-d"):
        orthogonality_error(jnp.ones(3))
    with pytest.raises(ValueError, match=r"`x` must end with the kernel's input dims \(4,\)"):
        norm_preservation_ratio(jnp.ones((4, 5)), jnp.ones((2, 5)))

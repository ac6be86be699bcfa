"""Float64 brute-force reference for linear-chain CRFs, shared by the CRF test files.

Enumerates all K**L paths of a row's compacted sequence (its valid positions
v_1 < ... < v_L): score(y) = start(y_1) + Σ f(y_i) + Σ g(y_{i-1}, y_i) + end(y_L) as in
Lafferty et al. (ICML 2001), with masked positions skipped.
"""

from __future__ import annotations

import itertools

import numpy as np


def logsumexp(x) -> float:
    x = np.asarray(x, np.float64)
    m = np.max(x) if x.size else -np.inf
    if m == -np.inf:
        return -np.inf
    return float(m + np.log(np.sum(np.exp(x - m))))


class Brute:
    """Exact CRF of one row: enumerates the K**L paths of the compacted sequence (float64)."""

    def __init__(self, em, g, start, end, mask):
        em = np.asarray(em, np.float64)
        num_steps, k = em.shape
        g = np.asarray(g, np.float64)
        start = np.zeros(k) if start is None else np.asarray(start, np.float64)
        end = np.zeros(k) if end is None else np.asarray(end, np.float64)
        self.mask = np.asarray(mask, bool)
        self.valid = v = np.flatnonzero(self.mask)
        n = len(v)
        self.num_steps, self.k, self.length = num_steps, k, n
        paths = np.array(list(itertools.product(range(k), repeat=n)), np.int64).reshape(k**n, n)
        scores = np.zeros(k**n)
        if n:
            f = em[v]
            scores = start[paths[:, 0]] + f[np.arange(n), paths].sum(1) + end[paths[:, -1]]
            scores = scores + g[paths[:, :-1], paths[:, 1:]].sum(1)
        self.paths, self.scores = paths, scores
        self.log_z = logsumexp(scores)  # 0 for L = 0 (the one empty path)
        self.feasible = bool(np.isfinite(self.log_z))
        if self.feasible:
            self.log_p = scores - self.log_z
        else:
            self.log_p = np.full_like(scores, -np.inf)
        self.p = np.exp(self.log_p)
        self.marg = np.zeros((num_steps, k))
        self.pair = np.zeros((num_steps, k, k))
        for i, t in enumerate(v):
            np.add.at(self.marg[t], paths[:, i], self.p)
            if i:
                np.add.at(self.pair[t], (paths[:, i - 1], paths[:, i]), self.p)
        pos = self.p > 0
        self.entropy = float(-np.sum(self.p[pos] * self.log_p[pos]))
        self.order = np.argsort(-scores, kind="stable")
        self.sorted_scores = scores[self.order]
        with np.errstate(divide="ignore"):
            log_m = np.log(self.marg[v])
        values = log_m[np.arange(n), paths].sum(1) if n else np.zeros(1)
        self.mbr_values = np.where(scores > -np.inf, values, -np.inf)
        self.mbr_best = float(np.max(self.mbr_values))

    def index(self, row) -> int:
        """Index in ``self.paths`` of a full-length tag row (values at masked positions unused)."""
        y = np.asarray(row)[self.valid]
        assert np.all((y >= 0) & (y < self.k)), f"tags out of range at valid positions: {row}"
        return int(np.sum(y * self.k ** np.arange(self.length - 1, -1, -1)))

    def tags(self, idx) -> np.ndarray:
        row = np.full(self.num_steps, -1, np.int64)
        row[self.valid] = self.paths[idx]
        return row

    def log_prob(self, row) -> float:
        return float(self.scores[self.index(row)] - self.log_z)

    def cross_entropy(self, other: Brute) -> float:
        pos = self.p > 0
        return float(-np.sum(self.p[pos] * other.log_p[pos]))  # +inf if other forbids

    def kl(self, other: Brute) -> float:
        return self.cross_entropy(other) - self.entropy

    @property
    def first(self):
        return self.valid[0]

    @property
    def last(self):
        return self.valid[-1]

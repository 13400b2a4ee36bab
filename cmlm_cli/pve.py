"""Phenotypic variance explained by a few SNPs, as GAPIT's PVE table reports it.

GAPIT (``GAPIT.RandomModel``) fits, by REML with lme4,
``trait ~ covariates + (1|gene_1) + ... + (1|gene_k)``: every SNP is a random
factor whose levels are its genotype values (0, 1, 2), with its own variance
``s_j``, beside the residual variance ``s_e``; SNP j explains
``100 s_j / (s_1 + ... + s_k + s_e)`` percent. The same REML is fitted here
without an n x n matrix: with ``Z`` the (n, q) indicators of all the levels
(q <= 3k) and ``L = diag(theta)`` the relative standard deviations
``theta_j = sqrt(s_j / s_e)`` repeated over each SNP's levels (lme4's
parameters), ``V = s_e (I + Z L L Z')``, and every term of the profiled REML
deviance comes from (q + p + 1)-square matrices (never n x n; :class:`_Reml`):

    d(theta) = log|I + L Z'Z L| + log|X'H^-1 X| + (n - p) (1 + log(2 pi r'H^-1 r / (n - p)))

with ``H = I + Z L L Z'`` and ``r`` the generalised least-squares residual;
``s_e = r'H^-1 r / (n - p)``. The deviance is minimised over ``theta >= 0``
from lme4's start (every ``theta = 1``).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.optimize


def variance_explained(y: np.ndarray, X: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """Percent of the phenotypic variance explained by each SNP of ``Q`` (GAPIT's PVE).

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Fixed effects, intercept included.
    Q : ndarray, shape (n, k)
        Genotypes of the SNPs; each column is a factor of its distinct values
        (0, 1, 2 with GAPIT's coding, missing calls 1; mean-imputed calls
        would form levels of their own).

    Returns
    -------
    ndarray, shape (k,)
        ``100 s_j / (sum_i s_i + s_e)`` with the REML variance components.
    """
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    if Q.shape[1] == 0:
        return np.empty(0)
    blocks = [(Q[:, [j]] == np.unique(Q[:, j])).astype(np.float64) for j in range(Q.shape[1])]
    owner = np.concatenate([np.full(b.shape[1], j) for j, b in enumerate(blocks)])
    Z = np.hstack(blocks)
    reml = _Reml(y, X, Z, owner)
    k = Q.shape[1]
    best = scipy.optimize.minimize(reml.deviance, np.ones(k), method="L-BFGS-B",
                                   bounds=[(0.0, None)] * k,
                                   options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 10_000})
    theta = best.x
    s_e = reml.residual_variance(theta)
    s = s_e * theta ** 2
    return 100 * s / (s.sum() + s_e)


# The products' route is kept while each Schur complement (X'H^-1 X's
# diagonal, r'H^-1 r) keeps more than this share of the product it is taken
# from: then at most 6 of the 16 digits cancel.
CANCELLATION = 1e-6


class _Reml:
    """The profiled REML deviance of ``y = X b + Z u + e`` from (q + p + 1)-square matrices.

    Woodbury's identity gives every term from the cross-products of
    ``[Z, X, y]``: with ``M = I + L Z'Z L``, ``log|H| = log|M|``,
    ``X'H^-1 X = X'X - X'Z L M^-1 L Z'X`` and the same for ``r'H^-1 r``. Those
    differences cancel where ``theta`` is large (an optimiser's trial step):
    the intercept lies in the span of every SNP's level indicators, so
    ``X'H^-1 X`` is then tiny and can come out negative. Where more than
    :data:`CANCELLATION` of a term would cancel, the terms are read off the R
    factor of the augmented matrix ``[[Z L, X, y], [I_q, 0, 0]]`` instead: its
    first q diagonal entries give ``log|M|``, the next p ``log|X'H^-1 X|``,
    the last ``sqrt(r'H^-1 r)``, without forming a difference. The n rows of
    ``[Z, X, y]`` are replaced once by its own R factor (the same inner
    products), so that QR has ``2q + p + 1`` rows.
    """

    def __init__(self, y: np.ndarray, X: np.ndarray, Z: np.ndarray, owner: np.ndarray):
        self.n, self.p = X.shape
        self.q = Z.shape[1]
        self.owner = owner
        # Economic: at most q + p + 1 rows.
        self.R = np.asarray(np.linalg.qr(np.column_stack([Z, X, y]), mode="r"))
        self.lower = np.hstack([np.eye(self.q), np.zeros((self.q, self.p + 1))])
        q, p = self.q, self.p
        gram = self.R.T @ self.R
        self.ZZ, self.ZX, self.Zy = gram[:q, :q], gram[:q, q : q + p], gram[:q, -1]
        self.XX, self.Xy, self.yy = gram[q : q + p, q : q + p], gram[q : q + p, -1], gram[-1, -1]

    def _parts(self, theta: np.ndarray) -> tuple[float, float, float]:
        """``log|H|``, ``log|X'H^-1 X|`` and ``r'H^-1 r`` at ``theta``."""
        lam = theta[self.owner]
        M = np.eye(self.q) + lam[:, None] * self.ZZ * lam[None, :]
        chol = np.linalg.cholesky(M)
        LZX, LZy = lam[:, None] * self.ZX, lam * self.Zy
        solve_X = scipy.linalg.cho_solve((chol, True), LZX)
        solve_y = scipy.linalg.cho_solve((chol, True), LZy)
        XHX = self.XX - LZX.T @ solve_X
        XHy = self.Xy - LZX.T @ solve_y
        yHy = self.yy - float(LZy @ solve_y)
        if np.all(np.diag(XHX) > CANCELLATION * np.diag(self.XX)):
            chol_X = np.linalg.cholesky(XHX)
            beta = scipy.linalg.cho_solve((chol_X, True), XHy)
            rHr = yHy - float(XHy @ beta)
            if rHr > CANCELLATION * self.yy:
                logdet_H = 2 * float(np.sum(np.log(np.diag(chol))))
                return logdet_H, 2 * float(np.sum(np.log(np.diag(chol_X)))), rHr
        upper = self.R.copy()
        upper[:, : self.q] *= lam
        R = np.asarray(np.linalg.qr(np.vstack([upper, self.lower]), mode="r"))
        diagonal = np.abs(np.diag(R))
        q, p = self.q, self.p
        logdet_H = 2 * float(np.sum(np.log(diagonal[:q])))
        logdet_X = 2 * float(np.sum(np.log(diagonal[q : q + p])))
        return logdet_H, logdet_X, float(diagonal[q + p]) ** 2

    def deviance(self, theta: np.ndarray) -> float:
        logdet_H, logdet_X, rHr = self._parts(theta)
        dof = self.n - self.p
        return logdet_H + logdet_X + dof * (1 + math.log(2 * math.pi * rHr / dof))

    def residual_variance(self, theta: np.ndarray) -> float:
        return self._parts(theta)[2] / (self.n - self.p)

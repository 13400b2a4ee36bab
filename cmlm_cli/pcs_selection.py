"""How many principal components to keep, by BIC (``--pcs-select bic``).

GAPIT calls this ``Model.selection``.

The compression search runs with all ``--pcs K`` components. At the chosen
level (its groups and group kinship; the singletons and ``K`` for the MLM;
no random effect for the GLM) the null model is then fitted again with the
first 0, 1, ..., K components, and each fit scored as GAPIT 4.1 does
(``GAPIT.Main``, read from its source):

    BIC = logL - 1/2 k ln n,   logL = -1/2 [n log(2 pi r'H^-1 r / n) + log|H| + n]

``logL`` is the maximised-over-beta (ML) log-likelihood at the fitted ``d``
(GAPIT's ``logLM``: REML's ``d`` under ``--method reml``), ``r`` the GLS
residual, ``n`` the analysed individuals and ``k`` the parameters: the ``p``
fixed effects (intercept, covariates, the PCs kept) plus vg and d; for the
GLM, ``p`` plus the residual variance. The count with the largest BIC wins;
on an exact tie, the fewer PCs (GAPIT: the first of ``which(BIC ==
max(BIC))``). Unlike GAPIT, which treats covariates and PCs alike in the
order of its design matrix, the ``--covar`` columns are always kept: only
the PCs are selected. The SNP scan, the BLUPs and ``--loco`` then use the
chosen count.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from cmlm_cli.inputs import TraitData
from cmlm_cli.null_model import (
    CompressedBasis,
    CompressedLikelihood,
    NullModel,
    fit_glm,
    fit_null_basis,
)


@dataclass(frozen=True)
class PcsRow:
    """One PC count of the selection: a row of ``OUT.TRAIT.pcs_bic.tsv``.

    Attributes
    ----------
    pcs : int
        The first ``pcs`` principal components in the model.
    logL : float
        ML log-likelihood at the fitted ``d`` (GAPIT's ``logLM``).
    bic : float
        ``logL - 1/2 k ln n`` (larger is better).
    """

    pcs: int
    logL: float
    bic: float


def ml_loglik(y: np.ndarray, X: np.ndarray, basis: CompressedBasis | None, delta: float) -> float:
    """GAPIT's ``logLM``: the ML log-likelihood at ``d = delta``.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    basis : CompressedBasis or None
        The level's groups and group kinship; None for no random effect.
    delta : float
        The fitted ``d`` (``inf``: h2 = 0, ``H = I``); ignored without a basis.

    Returns
    -------
    float
        ``-1/2 [n log(2 pi r'H^-1 r / n) + log|H| + n]``; with no random
        effect, that of least squares.
    """
    lik = CompressedLikelihood(y, X, basis)
    return -0.5 * lik.neg2loglik(1.0 if basis is None else delta, "ml")


def parameters(model: NullModel) -> int:
    """``k`` of the BIC: the fixed effects and the variance parameters."""
    return model.p + (1 if model.q == 0 else 2)


def cut_pcs(t: TraitData, pcs: int) -> TraitData:
    """The trait's design with only its first ``pcs`` principal components.

    Parameters
    ----------
    t : TraitData
        Its last columns are the PCs, after ``t.nongenetic`` others.
    pcs : int
    """
    keep = t.nongenetic + pcs
    if keep == t.X.shape[1]:
        return t
    return dataclasses.replace(t, X=t.X[:, :keep], fixed=t.fixed[:, :keep])


def select_pcs(
    t: TraitData, labels: np.ndarray | None, Kc: np.ndarray | None, *, method: str, solver: str
) -> tuple[int, tuple[PcsRow, ...], NullModel]:
    """Fit 0..K PCs at one compression level and keep the count of largest BIC.

    Parameters
    ----------
    t : TraitData
        With all K PCs.
    labels : ndarray, shape (n_a,), int, or None
        The chosen level's group of each analysed individual; None for the GLM.
    Kc : ndarray, shape (q, q), or None
        Its group kinship.
    method, solver : str
        As for the compression search.

    Returns
    -------
    chosen : int
        PCs kept.
    rows : tuple of PcsRow
        One per count 0..K.
    model : NullModel
        The fit with the chosen count.
    """
    pcs = t.X.shape[1] - t.nongenetic
    basis = None
    if labels is not None:
        assert Kc is not None
        basis = CompressedBasis.build(labels, Kc, vectors=False)
    n = t.y.size
    rows, models = [], []
    for j in range(pcs + 1):
        X = t.X[:, : t.nongenetic + j]
        if basis is None:
            model = fit_glm(t.y, X, method=method)
        else:
            model = fit_null_basis(t.y, X, basis, method=method, solver=solver)
        logL = ml_loglik(t.y, X, basis, model.delta)
        rows.append(PcsRow(j, logL, logL - 0.5 * parameters(model) * math.log(n)))
        models.append(model)
    best = max(row.bic for row in rows)
    chosen = next(row.pcs for row in rows if row.bic == best)
    return chosen, tuple(rows), models[chosen]

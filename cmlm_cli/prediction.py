"""Genomic prediction from a fitted null model: every kept sample's BLUP, PEV and prediction.

The compression search leaves each trait's chosen model fitted on the
analysed individuals (:mod:`cmlm_cli.compression`). Every other kept
genotyped sample is predicted from it (DESIGN.md §9):

- ``reference``: phenotyped and in the fit; its BLUP is its group's;
- ``inferred``: not in the fit, in a group with members in it: its group's
  BLUP and PEV;
- ``projected``: its group has no member in the fit (with ``--model mlm``,
  every sample not in the fit): the conditional mean ``vg k' Z'V^-1 (y - Xb)``
  from its kinships ``k`` to the fitted groups, and its own PEV.

:class:`Targets` is what this needs besides the model (built with the fit,
saved in ``OUT.fit.npz``); :func:`predict` gives the columns of
``OUT.TRAIT.blup.tsv`` (:data:`BLUP_COLUMNS`), which GAPIT's
``Prediction_results`` table has as well (README, "Genomic prediction").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cmlm_cli.null_model import NullModel, random_effects

STATUSES = ("reference", "inferred", "projected")

BLUP_COLUMNS = (
    "FID",
    "IID",
    "group",
    "status",
    "y",
    "blue_nongenetic",
    "blue_pcs",
    "blup",
    "pev",
    "reliability",
    "gebv",
    "prediction",
)
"""Columns of ``OUT.TRAIT.blup.tsv``, one row per kept sample in .fam order."""


@dataclass(frozen=True)
class Targets:
    """What predicting every kept sample needs beyond the trait's null model.

    Attributes
    ----------
    group : ndarray, shape (n,), int
        Each kept sample's group: ``0..q-1`` are the model's groups (in the
        numbering of ``model.labels``), ``q..q+m-1`` the others.
    cluster : ndarray, shape (n,), int
        The same groups as numbered in ``OUT.TRAIT.groups.tsv`` (from 1).
    cross : ndarray, shape (m, q)
        Kinship of each other group to the model's groups (``Kc`` of the
        whole partition; ``K`` itself for the MLM, whose groups are samples).
    self_kinship : ndarray, shape (m,)
        The other groups' own kinship.
    fixed : ndarray, shape (n, p)
        Fixed effects of every kept sample (intercept, covariates, principal
        components), NaN where a covariate is missing.
    nongenetic : int
        The leading columns of ``fixed`` that are the intercept and the
        covariates; the rest are principal components.
    """

    group: np.ndarray
    cluster: np.ndarray
    cross: np.ndarray
    self_kinship: np.ndarray
    fixed: np.ndarray
    nongenetic: int


@dataclass(frozen=True)
class Predictions:
    """The columns of ``OUT.TRAIT.blup.tsv`` after FID and IID, shape (n,) each.

    Attributes
    ----------
    group : ndarray, int
        As ``Targets.cluster``.
    status : ndarray, str
        One of :data:`STATUSES`.
    y : ndarray
        The trait, NaN where not observed.
    blue_nongenetic, blue_pcs : ndarray
        ``X b`` over the intercept and covariates, and over the principal
        components (GAPIT's BLUE.N and BLUE.I).
    blup, pev, reliability : ndarray
        The group's BLUP, its prediction error variance and
        ``1 - pev / (vg Kc[g,g])`` (NaN where ``vg Kc[g,g]`` is 0).
    gebv : ndarray
        ``blue_pcs + blup`` (GAPIT's gBreedingValue).
    prediction : ndarray
        ``blue_nongenetic + blue_pcs + blup`` (GAPIT's Prediction); NaN
        where a covariate is missing.
    """

    group: np.ndarray
    status: np.ndarray
    y: np.ndarray
    blue_nongenetic: np.ndarray
    blue_pcs: np.ndarray
    blup: np.ndarray
    pev: np.ndarray
    reliability: np.ndarray
    gebv: np.ndarray
    prediction: np.ndarray


def predict(model: NullModel, targets: Targets, y: np.ndarray, analysed: np.ndarray) -> Predictions:
    """BLUP, PEV and prediction of every kept sample.

    Parameters
    ----------
    model : NullModel
        The trait's chosen null model (a mixed model: q > 0).
    targets : Targets
    y : ndarray, shape (n,)
        The trait over the kept samples, NaN where missing.
    analysed : ndarray, shape (n_a,), int
        The kept samples in the fit.

    Returns
    -------
    Predictions

    Examples
    --------
    Two lines of GAPIT's maize panel, CML61 and W22R-RSTD, have no EarHT:
    GAPIT predicts them from their kinships to the 279 phenotyped lines
    (its ``MLM_PCA0_EarHT`` prediction table, ``tests/data/reference/``).

    >>> from cmlm_cli import GwasOptions, api
    >>> gapit = GwasOptions(pheno_names=("EarHT",), model="mlm", impute="middle",
    ...                     kinship="tests/data/reference/gapit/kinship_VanRaden.tsv")
    >>> inputs = api.load("data/mdp", "data/mdp.pheno.tsv", gapit)
    >>> (earht,) = api.fit(inputs, gapit)
    >>> table = predict(earht.model, earht.targets, inputs.traits[:, 0], earht.analysed)
    >>> projected = table.status == "projected"
    >>> inputs.bfile.iid[inputs.samples][projected].tolist()
    ['CML61', 'W22R-RSTD']
    >>> [f"{b:.4f}" for b in table.blup[projected]]  # GAPIT: 14.8495, -14.5994
    ['14.8495', '-14.5994']
    """
    effects = random_effects(model, targets.cross, targets.self_kinship)
    group = targets.group
    blup, pev = effects.blup[group], effects.pev[group]
    scale = model.vg * effects.kinship[group]
    with np.errstate(divide="ignore", invalid="ignore"):
        reliability = np.where(scale > 0, 1.0 - pev / scale, np.nan)
    c = targets.nongenetic
    blue_nongenetic = targets.fixed[:, :c] @ model.beta[:c]
    blue_pcs = targets.fixed[:, c:] @ model.beta[c:]
    status = np.where(group < model.q, STATUSES[1], STATUSES[2]).astype("<U9")
    status[analysed] = STATUSES[0]
    return Predictions(
        group=targets.cluster + 1,
        status=status,
        y=np.asarray(y, dtype=np.float64),
        blue_nongenetic=blue_nongenetic,
        blue_pcs=blue_pcs,
        blup=blup,
        pev=pev,
        reliability=reliability,
        gebv=blue_pcs + blup,
        prediction=blue_nongenetic + blue_pcs + blup,
    )

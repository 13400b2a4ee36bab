"""Multi-locus models (FarmCPU, BLINK): what both loops see of the data.

FarmCPU (Liu et al. 2016) and BLINK (Huang et al. 2019) alternate between a
fixed-effect scan of every SNP, with the current pseudo-QTNs as covariates,
and a choice of the next pseudo-QTNs among the SNPs that scan found. They see
the genotypes only through :class:`Genotypes`: one GLM scan of every SNP for
a given design, and the dosage columns of the few SNPs they keep. The loops
(:mod:`cmlm_cli.farmcpu`, :mod:`cmlm_cli.blink`) are therefore written once
against this protocol and run unchanged on the packed-byte scan of a real
run and on a dense oracle in the tests; no genotype matrix is held beyond
the pseudo-QTN columns.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np


@dataclasses.dataclass(frozen=True)
class GlmScan:
    """One fixed-effect scan of every SNP: ``y ~ X + x_j`` for each SNP j.

    Attributes
    ----------
    beta, se, p : ndarray, shape (m,), float64
        The SNP's effect (per copy of the counted allele), its standard
        error and the two-sided t-test p-value with ``n - rank(X) - 1``
        degrees of freedom; ``NaN`` for a SNP that cannot be tested (constant,
        or collinear with ``X``).
    """

    beta: np.ndarray
    se: np.ndarray
    p: np.ndarray


class Genotypes(Protocol):
    """The genotypes of one trait's individuals, as the multi-locus loops use them.

    The individuals are those of the trait (rows of ``y`` and ``X``), the SNPs
    the run's kept SNPs in file order (index 0..m-1).
    """

    @property
    def n_snps(self) -> int:
        """Number of SNPs, m."""
        ...

    @property
    def chromosome(self) -> np.ndarray:
        """Chromosome of each SNP, shape (m,), str."""
        ...

    @property
    def position(self) -> np.ndarray:
        """Base-pair position of each SNP, shape (m,), int64."""
        ...

    def scan(self, y: np.ndarray, X: np.ndarray) -> GlmScan:
        """Test every SNP in the linear model ``y ~ X + x_j``.

        Parameters
        ----------
        y : ndarray, shape (n,)
        X : ndarray, shape (n, p)
            Fixed effects, intercept included (covariates, PCs, pseudo-QTNs).

        Returns
        -------
        GlmScan
        """
        ...

    def columns(self, index: np.ndarray) -> np.ndarray:
        """Dosages of the SNPs ``index``, missing calls imputed as the run imputes.

        Parameters
        ----------
        index : ndarray, shape (k,), int

        Returns
        -------
        ndarray, shape (n, k), float64
        """
        ...


@dataclasses.dataclass(frozen=True)
class MultiLocusResult:
    """The outcome of a FarmCPU or BLINK run for one trait.

    Attributes
    ----------
    model : {"farmcpu", "blink"}
    beta, se, p : ndarray, shape (m,), float64
        Every SNP's final effect, standard error and p-value (the table the
        sumstats file reports; ``NaN`` where untestable).
    qtns : ndarray, shape (k,), int
        The final pseudo-QTNs, as SNP indices.
    iterations : tuple of tuple of int
        The pseudo-QTN set each iteration scanned with, in order (the first is
        empty), for the log.
    converged : bool
        The loop stopped by its own rule rather than at the iteration cap.
    """

    model: str
    beta: np.ndarray
    se: np.ndarray
    p: np.ndarray
    qtns: np.ndarray
    iterations: tuple[tuple[int, ...], ...]
    converged: bool

"""Fit the compressed mixed model under the null hypothesis (no SNP effect).

The model is ``y = X b + Z u + e`` with ``u ~ N(0, vg Kc)`` and
``e ~ N(0, ve I)``, where ``Z`` assigns each of the n individuals to one of
q groups. Writing ``V = vg H`` with ``H = Z Kc Z' + d I`` and ``d = ve / vg``,
everything the fit and the scan need is computed in a q-dimensional basis,
never with an n x n matrix.

Notes
-----
Let ``N = Z'Z = diag(n_1..n_q)`` and ``N^1/2 Kc N^1/2 = W S W'``. Then
``U = Z N^-1/2 W`` has orthonormal columns and ``Z Kc Z' = U S U'``, so ``H``
has eigenvalues ``s_k + d`` on the span of ``U`` and ``d`` on its complement:

    a' H^-1 b = (U'a)' diag(1/(s+d)) (U'b) + a_w' b_w / d
    log|H|    = sum log(s_k + d) + (n - q) log d

``U'a = W' N^-1/2 (Z'a)`` needs only group sums of ``a``, and because ``W``
is square, ``I - UU' = I - Z N^-1 Z'`` takes group means out: ``a_w`` is
``a`` minus the mean of its group. Writing the complement this way, rather
than as ``(a'b - (U'a)'(U'b)) / d`` (DESIGN.md §2), avoids a cancellation
that loses digits when ``d`` is small; with singleton groups ``a_w = 0``
exactly. With ``U'y``, ``U'X`` and the within-group cross-products computed
once, one evaluation of the likelihood costs O(q p^2).

With ``vg`` profiled out, the restricted log-likelihood is a function of
``d`` alone (DESIGN.md §3):

    -2 lR(d) = r log(2 pi yPy / r) + r + log|H| + log|X'H^-1X| - log|X'X|

with ``r = n - p`` and ``yPy = y'H^-1y - y'H^-1X (X'H^-1X)^-1 X'H^-1y``; the
``log|X'X|`` term puts the value on GAPIT's scale. ML replaces ``r`` by ``n``
and drops both ``X`` determinants. The three solvers search for the same
maximum: ``brent`` on the profile in ``log d``, ``em`` and ``newton``
(average-information REML) on ``(vg, ve)``; every number reported is the
profile at the ``d`` the solver found.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.linalg
import scipy.sparse

from cmlm_cli import resources
from cmlm_cli.choices import METHODS, SOLVERS
from cmlm_cli.grouping import incidence

log = logging.getLogger("cmlm")


# EMMA's grid over log(d), which GAPIT uses too: 101 points in [-10, 10].
LOG_DELTA_RANGE = (-10.0, 10.0)
GRID_STEPS = 100
# Eigenvalues of N^1/2 Kc N^1/2 below this fraction of the largest are zero:
# round-off leaves tiny negative values for a singular Kc (VanRaden is).
EIGEN_RTOL = 1e-10


# Below this many groups a level's eigendecomposition takes milliseconds:
# always form W there rather than keep only the tridiagonal reduction.
FACTORED_MIN_Q = 256
# Relative rounding error of a -2 log L value.
ROUNDING = 1e-12
EM_MAX_ITER = 50_000
EM_BOUNDARY_CHECK = 100
NEWTON_MAX_ITER = 200
# Iterative solvers stop when an iteration moves log(vg) and log(ve) by less
# than this: a change in -2 log L alone stops too early on a flat optimum.
PARAMETER_TOL = 1e-10


def clip_eigenvalues(s: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix, those below ``EIGEN_RTOL`` x the largest set to 0 (round-off).

    Parameters
    ----------
    s : ndarray, shape (q,)

    Returns
    -------
    ndarray, shape (q,)
    """
    return np.where(s > EIGEN_RTOL * max(s.max(), 0.0), s, 0.0)


@dataclass(frozen=True)
class NullModel:
    """A fitted null model: variance components plus what the scan needs.

    Attributes
    ----------
    method, solver : str
        ``"reml"`` or ``"ml"``; ``"brent"``, ``"em"``, ``"newton"`` or ``"ols"``.
    n, p, q : int
        Individuals, fixed effects (with the intercept), groups (0 for GLM).
    delta : float
        ``ve / vg`` (``inf`` for the GLM).
    vg, ve, h2 : float
        Genetic and residual variance, ``vg / (vg + ve)``.
    neg2logL : float
        -2 log-likelihood (restricted for REML) on GAPIT's scale.
    beta : ndarray, shape (p,)
        GLS estimate of the fixed effects.
    iterations : int
        Likelihood evaluations (brent) or iterations (em, newton).
    converged : bool
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    labels : ndarray, shape (n,), int
        Group of each individual, in ``0..q-1``.
    counts : ndarray, shape (q,)
        Group sizes ``n_g``.
    Kc : ndarray, shape (q, q)
        The group kinship fitted: the one given, or its nearest positive
        semi-definite matrix where it is not one (:meth:`CompressedBasis.build`).
    s : ndarray, shape (q,)
        Eigenvalues of ``N^1/2 Kc N^1/2``, clipped at 0.
    h_scale : float
        The variance that multiplies ``H`` in ``V``: ``vg``, or ``ve`` for the GLM.
    reduction : _Tridiagonal or None
        The tridiagonal reduction of ``N^1/2 Kc N^1/2`` that the fit made
        (q of at least ``FACTORED_MIN_Q``), kept so that the eigenvectors a
        scan asks for (:meth:`basis`) cost the eigenvectors of ``T`` and one
        product by ``Q`` rather than a whole decomposition again (at
        q = 5,000: 9.4 s instead of 17 s on 2 threads). A cache, not part of
        the model: not compared, not saved (``metadata``), rebuilt from
        ``Kc`` by the same call where it is missing, so that both give the
        same numbers.
    """

    method: str
    solver: str
    n: int
    p: int
    q: int
    delta: float
    vg: float
    ve: float
    h2: float
    neg2logL: float
    beta: np.ndarray
    iterations: int
    converged: bool
    y: np.ndarray
    X: np.ndarray
    labels: np.ndarray
    counts: np.ndarray
    Kc: np.ndarray
    s: np.ndarray
    h_scale: float
    reduction: _Tridiagonal | None = field(
        default=None, repr=False, compare=False, metadata={"saved": False}
    )

    def basis(self, *, vectors: bool = False) -> CompressedBasis:
        """This model's groups and group kinship as a :class:`CompressedBasis`.

        Parameters
        ----------
        vectors : bool
            The eigenvectors ``W`` of ``N^1/2 Kc N^1/2`` (O(q^3)), which the
            rotation ``a -> U'a`` needs, from the fit's tridiagonal reduction
            (:attr:`reduction`, made again where missing); without them the
            basis serves group sums and within-group parts only, which is
            all the P3D scan needs (:class:`cmlm_cli.scan.Scanner`).
        """
        if vectors:
            if self.reduction is None:
                # The fit's own call: the same reduction, to the bit, as the
                # one a model fitted in this process keeps.
                reduced = CompressedBasis.build(self.labels, self.Kc, vectors=False)
            else:
                reduced = CompressedBasis(
                    self.labels, self.counts, np.zeros((0, 0)), self.s, self.Kc, self.reduction
                )
            return reduced.with_vectors()
        return CompressedBasis(self.labels, self.counts, np.zeros((0, 0)), self.s, self.Kc)


@dataclass(frozen=True)
class CompressedBasis:
    """The q-dimensional basis ``U = Z N^-1/2 W`` of a grouping and group kinship.

    Attributes
    ----------
    labels : ndarray, shape (n,), int
    counts : ndarray, shape (q,)
    W : ndarray, shape (q, q), or (0, 0)
        The eigenvectors; empty for a tridiagonal reduction
        (``build(..., vectors=False)``, held in ``factors``) and for
        :meth:`NullModel.basis` without ``vectors``.
    s : ndarray, shape (q,)
    Kc : ndarray, shape (q, q)
        The group kinship whose eigenvectors these are: the one given, or
        its nearest positive semi-definite matrix where it is not one.
    """

    labels: np.ndarray
    counts: np.ndarray
    W: np.ndarray
    s: np.ndarray
    Kc: np.ndarray
    factors: _Tridiagonal | _Dense | None = field(default=None, repr=False, compare=False)

    @classmethod
    def build(cls, labels: np.ndarray, Kc: np.ndarray, *, vectors: bool = True) -> CompressedBasis:
        """Eigen-decompose ``N^1/2 Kc N^1/2`` for groups ``labels``.

        Parameters
        ----------
        labels : ndarray, shape (n,), int
            Group of each individual; every group in ``0..q-1`` non-empty.
        Kc : ndarray, shape (q, q)
            Symmetric positive semi-definite group kinship.
        vectors : bool
            Form ``W``. Without it (and for q of at least
            ``FACTORED_MIN_Q``) only the tridiagonal reduction
            ``B = Q T Q'`` is made, with the eigenvalues of ``T``: the fit
            needs the few vectors ``Q'a`` and solves with ``T + d I``
            (:class:`_Tridiagonal`), and skipping the eigenvectors saves
            ~55% of the decomposition at q = 5,000.
        """
        labels = np.asarray(labels, dtype=np.int64)
        q = Kc.shape[0]
        counts = np.bincount(labels, minlength=q).astype(np.float64)
        if counts.shape[0] != q or np.any(counts == 0):
            msg = f"labels must use every group 0..{q - 1} at least once"
            raise ValueError(msg)
        root = np.sqrt(counts)
        # One scaled copy, decomposed in place: at q in the thousands each
        # q x q temporary costs a noticeable share of the level. The
        # divide-and-conquer driver (evd) is 10-15% faster there than the
        # default evr, and as accurate (eigenvalues agree to ~1e-15 relative).
        B = Kc * root[:, None]
        B *= root[None, :]
        # B is symmetric: its transpose is the Fortran-order array that
        # LAPACK overwrites without a copy.
        factors = None
        with resources.blas_threads_for(q):
            if vectors or q < FACTORED_MIN_Q:
                s, W = scipy.linalg.eigh(B.T, driver="evd", overwrite_a=True)
            else:
                s, factors = _Tridiagonal.decompose(B.T)
                W = np.zeros((0, 0))
        top = max(s.max(), 0.0)
        if s.min() < -1e-8 * top:
            # Not round-off: this Kc is no covariance matrix (max/min/median
            # group kinships and some user kinships are not PSD). Fitting its
            # nearest PSD version is all a variance model can do; say so.
            log.warning(
                "the group kinship has %d negative eigenvalues (down to %.3g, largest %.3g); "
                "they are set to 0, so the model fitted is the nearest positive semi-definite "
                "matrix",
                int(np.sum(s < -1e-8 * top)),
                s.min(),
                top,
            )
            # The model keeps the matrix it fits, so that every later use of
            # Kc (the scan's Cholesky factor) sees the same one. A factored
            # level is decomposed again, in full, and kept in the eigenbasis
            # that defines the repaired matrix (max, min and median group
            # kinships are rarely PSD: one decomposition more, not two).
            # Within the same thread limit as the first decomposition: with
            # more threads than idle cores LAPACK waits for each of them.
            with resources.blas_threads_for(q):
                if factors is not None:
                    B = Kc * np.outer(root, root)
                    s, W = scipy.linalg.eigh(B.T, driver="evd", overwrite_a=True)
                s = clip_eigenvalues(s)
                repaired = ((W * s) @ W.T) / np.outer(root, root)
            if factors is None:
                return cls(labels, counts, W, s, repaired)
            return cls(labels, counts, W, s, (repaired + repaired.T) / 2)
        return cls(labels, counts, W, clip_eigenvalues(s), Kc, factors)

    @classmethod
    def in_groups(cls, labels: np.ndarray, Kc: np.ndarray) -> CompressedBasis:
        """The basis of group coordinates, ``N^-1/2 Z'a``, with no decomposition at all.

        The group part of ``H`` less ``d I`` is then ``B = N^1/2 Kc N^1/2``
        itself and each ``d`` costs a Cholesky factorisation (q^3 / 3 flops)
        instead of a solve in the eigenbasis: the cheaper basis for a
        quantity wanted at one ``d`` (:func:`random_effects`), where the
        eigenvectors or the tridiagonal reduction would cost 4 to 10 times
        more. ``s`` is then unknown (empty); the solvers need another basis.
        """
        labels = np.asarray(labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=Kc.shape[0]).astype(np.float64)
        root = np.sqrt(counts)
        B = Kc * root[:, None]
        B *= root[None, :]
        return cls(labels, counts, np.zeros((0, 0)), np.zeros(0), Kc, _Dense(B))

    def with_vectors(self) -> CompressedBasis:
        """This basis with its eigenvectors ``W``, from its tridiagonal reduction if it has one.

        ``B = Q T Q'`` and ``T = V diag(s) V'`` give ``W = Q V``: the
        eigenvectors of ``T`` (``dstevd``) and one product by the reflectors
        (``dormqr``), without reducing ``B`` again. A basis that holds ``W``
        is returned as it is; one without either is decomposed whole.
        """
        if self.W.shape[0] == self.q:
            return self
        if not isinstance(self.factors, _Tridiagonal):
            return CompressedBasis.build(self.labels, self.Kc)
        with resources.blas_threads_for(self.q):
            s, V = self.factors.eigenvectors()
            W = self.factors.apply_q(V, transpose=False, overwrite=True)
        # The reduction was made only of a positive semi-definite B (build):
        # negative values here are round-off.
        return CompressedBasis(self.labels, self.counts, W, clip_eigenvalues(s), self.Kc)

    @property
    def q(self) -> int:
        return self.counts.shape[0]

    def operator(self) -> _Diagonal | _Tridiagonal | _Dense:
        """The group part of ``H`` less ``d I`` in the basis of :meth:`rotate`."""
        if self.factors is None:
            self._check_vectors()
            return _Diagonal(self.s)
        return self.factors

    @functools.cached_property
    def z_transpose(self) -> scipy.sparse.csr_matrix:
        """``Z'`` as a sparse (q, n) matrix, built once per basis."""
        return incidence(self.labels, self.q)

    def group_sums(self, A: np.ndarray) -> np.ndarray:
        """``Z'A``: sums of the rows of ``A`` within each group, shape (q, ...)."""
        return np.asarray(self.z_transpose @ A)

    def within(self, A: np.ndarray) -> np.ndarray:
        """``(I - Z N^-1 Z') A``: each row minus the mean of its group."""
        sums = self.group_sums(A)
        means = sums / (self.counts[:, None] if sums.ndim == 2 else self.counts)
        return A - means[self.labels]

    def rotate(self, A: np.ndarray) -> np.ndarray:
        """The group part of ``A`` (shape (n,) or (n, k)) in this basis.

        ``U'A = W' N^-1/2 Z'A`` with the eigenvectors, where the group part of
        ``H`` is ``diag(s) + d I``; ``Q' N^-1/2 Z'A`` with the factors, where
        it is ``T + d I`` (:meth:`operator`).
        """
        sums = self.group_sums(A)
        scaled = sums / (np.sqrt(self.counts)[:, None] if sums.ndim == 2 else np.sqrt(self.counts))
        if self.factors is None:
            self._check_vectors()
            return self.W.T @ scaled
        return self.factors.apply_q(scaled, transpose=True)

    def _check_vectors(self) -> None:
        if self.W.shape[0] != self.q:
            msg = "this basis holds no eigenvectors; use NullModel.basis(vectors=True)"
            raise ValueError(msg)


class _Diagonal:
    """The group part of ``H`` less ``d I`` in the eigenbasis: ``diag(s)``."""

    def __init__(self, s: np.ndarray):
        self.s = s

    def times(self, a: np.ndarray) -> np.ndarray:
        """``diag(s) a`` for ``a`` of shape (q,) or (q, k)."""
        return a * (self.s if a.ndim == 1 else self.s[:, None])

    def shifted(self, d: float) -> _DiagonalSolve:
        return _DiagonalSolve(1.0 / (self.s + d))


class _DiagonalSolve:
    """``(diag(s) + d I)^-1``."""

    def __init__(self, inv: np.ndarray):
        self.inv = inv

    def solve(self, a: np.ndarray) -> np.ndarray:
        return a * (self.inv if a.ndim == 1 else self.inv[:, None])


class NotPositiveDefiniteError(ArithmeticError):
    """``T + d I`` is not positive definite in floating point."""


@dataclass(frozen=True)
class _Tridiagonal:
    """``B = Q T Q'``: the tridiagonal reduction, without eigenvectors.

    ``Q`` is LAPACK's product of q - 1 Householder reflectors from ``dsytrd``
    (lower storage), which are those of a QR factorisation of the trailing
    (q - 1) x (q - 1) block; ``dormqr`` applies them without forming ``Q``.
    In the basis ``Q``, the group part of ``H`` is ``T + d I``: the fit's
    quadratic forms are solves with it (``dpttrf``/``dpttrs``, O(q) each),
    its determinant and traces come from the eigenvalues of ``T``
    (``dsterf``, O(q^2)). The eigenvectors of ``T`` (``dstevd``, O(q^3))
    are formed only on demand (:meth:`eigenvectors`).

    Attributes
    ----------
    reflectors : ndarray, shape (q - 1, q - 1), Fortran order
    tau : ndarray, shape (q - 1,)
    diagonal : ndarray, shape (q,)
    offdiagonal : ndarray, shape (q - 1,)
    """

    reflectors: np.ndarray
    tau: np.ndarray
    diagonal: np.ndarray
    offdiagonal: np.ndarray

    @classmethod
    def decompose(cls, B: np.ndarray) -> tuple[np.ndarray, _Tridiagonal]:
        """Eigenvalues (ascending) and the tridiagonal reduction of symmetric ``B``."""
        lapack = scipy.linalg.lapack
        # The default workspace is one column, which runs the unblocked
        # reduction: 2.5x slower at q = 5,000 than the blocked one.
        lwork = int(lapack.dsytrd_lwork(B.shape[0], lower=1)[0])
        c, d, e, tau, info = lapack.dsytrd(B, lower=1, lwork=lwork, overwrite_a=1)
        if info != 0:
            msg = f"dsytrd failed (info {info})"
            raise np.linalg.LinAlgError(msg)
        s, info = lapack.dsterf(d, e)
        if info != 0:
            msg = f"the tridiagonal eigenproblem did not converge (dsterf info {info})"
            raise np.linalg.LinAlgError(msg)
        return s, cls(np.asfortranarray(c[1:, :-1]), tau, d, e)

    def eigenvectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Eigenvalues (ascending) and eigenvectors of ``T``, shapes (q,), (q, q)."""
        s, V, info = scipy.linalg.lapack.dstevd(self.diagonal, self.offdiagonal, compute_v=1)
        if info != 0:
            msg = f"the tridiagonal eigenproblem did not converge (dstevd info {info})"
            raise np.linalg.LinAlgError(msg)
        return s, V

    def times(self, a: np.ndarray) -> np.ndarray:
        """``T a`` for ``a`` of shape (q,) or (q, k)."""
        matrix = a.reshape(a.shape[0], -1)
        e = self.offdiagonal[:, None]
        out = self.diagonal[:, None] * matrix
        out[:-1] += e * matrix[1:]
        out[1:] += e * matrix[:-1]
        return out.reshape(a.shape)

    def shifted(self, d: float) -> _TridiagonalSolve:
        """The factorisation of ``T + d I``.

        Raises
        ------
        NotPositiveDefiniteError
            Where ``d`` is below the rounding of ``T``'s zero eigenvalues.
        """
        lapack = scipy.linalg.lapack
        df, ef, info = lapack.dpttrf(self.diagonal + d, self.offdiagonal)
        if info != 0:
            msg = f"T + {d:g} I (dpttrf info {info})"
            raise NotPositiveDefiniteError(msg)
        return _TridiagonalSolve(df, ef)

    def apply_q(self, A: np.ndarray, *, transpose: bool, overwrite: bool = False) -> np.ndarray:
        """``Q'A`` (``transpose``) or ``Q A`` for ``A`` of shape (q,) or (q, k).

        ``overwrite``: the result in ``A`` itself (at q = 5,000 a q x q
        product holds 200 MB; one copy less).
        """
        lapack = scipy.linalg.lapack
        matrix = A.reshape(A.shape[0], -1)
        trans = "T" if transpose else "N"
        tail = np.asfortranarray(matrix[1:])
        lwork = int(lapack.dormqr("L", trans, self.reflectors, self.tau, tail, -1)[1][0])
        out = matrix if overwrite else np.empty_like(matrix)
        out[0] = matrix[0]
        out[1:], _, info = lapack.dormqr(
            "L", trans, self.reflectors, self.tau, tail, lwork, overwrite_c=1
        )
        if info != 0:
            msg = f"dormqr failed (info {info})"
            raise np.linalg.LinAlgError(msg)
        return out.reshape(A.shape)


@numba.njit(cache=True, nogil=True)
def _trait_profiles(
    diagonal: np.ndarray,
    offdiagonal: np.ndarray,
    s: np.ndarray,
    n_within: int,
    UX: np.ndarray,
    XtXw: np.ndarray,
    UY: np.ndarray,
    Xtyw: np.ndarray,
    ytyw: np.ndarray,
    ds: np.ndarray,
    reml: bool,
    values: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The GLS quantities of :meth:`CompressedLikelihood.profile` for T traits at K values of d.

    The group part of ``H`` less ``d I`` is the symmetric tridiagonal ``T``
    (``diagonal`` (q,), ``offdiagonal`` (q - 1,); zeros for ``diag(s)``),
    factored ``L D L'`` once per ``d`` as LAPACK's ``dpttrf`` does and solved
    with as its ``dpttrs``. What depends on ``d`` alone (the factor,
    ``(T + d I)^-1 UX``, ``A = X'H^-1X`` and its Cholesky factor,
    ``log|H|``, the traces) is computed once per ``d`` for all traits; each
    trait then costs one solve and O(q p): its ``X'H^-1y``, GLS ``beta``, the
    residual ``r = Uy - UX beta`` and ``v = (T + d I)^-1 r``. A trait's
    arithmetic here does not depend on the other traits given.

    Parameters
    ----------
    diagonal, offdiagonal : ndarray, shapes (q,), (q - 1,)
    s : ndarray, shape (q,)
        Eigenvalues of ``T``, for ``log|H|`` and ``tr H^-1``.
    n_within : int
        ``n - q``: the dimension of the within-group complement.
    UX : ndarray, shape (q, p)
    XtXw : ndarray, shape (p, p)
    UY : ndarray, shape (q, T)
    Xtyw : ndarray, shape (p, T)
    ytyw : ndarray, shape (T,)
    ds : ndarray, shape (K,)
    reml : bool
    values : bool
        Compute ``logdet`` (q logarithms per ``d``, which a slope alone does
        not need); NaN otherwise.

    Returns
    -------
    yPy, yPPy : ndarray, shape (K, T)
        ``r'H^-1r`` and ``r'H^-2r`` for the GLS residual ``r``.
    beta : ndarray, shape (K, T, p)
    logdet : ndarray, shape (K,)
        ``log|H|``, plus ``log|X'H^-1X|`` for REML.
    trace : ndarray, shape (K,)
        ``tr P`` (REML) or ``tr H^-1`` (ML).
    ok : ndarray of bool, shape (K,)
        False where ``T + d I`` did not factor (``d`` below the rounding of
        ``T``'s zero eigenvalues); that row is NaN.
    """
    q, p = UX.shape
    T = UY.shape[1]
    K = ds.size
    yPy = np.full((K, T), np.nan)
    yPPy = np.full((K, T), np.nan)
    beta = np.full((K, T, p), np.nan)
    logdet = np.full(K, np.nan)
    trace = np.full(K, np.nan)
    ok = np.ones(K, dtype=np.bool_)
    pivots = np.empty(q)
    lower = np.empty(max(q - 1, 0))
    SX = np.empty((q, p))
    L = np.zeros((p, p))
    M2 = np.empty((p, p))
    work = np.empty(p)
    XHy = np.empty(p)
    b = np.empty(p)
    r = np.empty(q)
    v = np.empty(q)
    for k in range(K):
        d = ds[k]
        pivots[0] = diagonal[0] + d
        if not pivots[0] > 0.0:
            ok[k] = False
            continue
        for i in range(q - 1):
            lower[i] = offdiagonal[i] / pivots[i]
            pivots[i + 1] = diagonal[i + 1] + d - lower[i] * offdiagonal[i]
            if not pivots[i + 1] > 0.0:
                ok[k] = False
                break
        if not ok[k]:
            continue
        for j in range(p):
            _pt_solve(pivots, lower, UX[:, j], SX[:, j])
        # A = UX'(T + dI)^-1 UX + Xw'Xw / d, factored L L'; M2 = X'H^-2X.
        for a in range(p):
            for c in range(a + 1):
                ga = 0.0
                gm = 0.0
                for i in range(q):
                    ga += UX[i, a] * SX[i, c]
                    gm += SX[i, a] * SX[i, c]
                L[a, c] = ga + XtXw[a, c] / d
                M2[a, c] = gm + XtXw[a, c] / (d * d)
                M2[c, a] = M2[a, c]
        if not _cholesky_in_place(L):
            ok[k] = False
            continue
        group_trace = 0.0
        for i in range(q):
            group_trace += 1.0 / (s[i] + d)
        trace[k] = group_trace + n_within / d
        if values:
            group_log = 0.0
            for i in range(q):
                group_log += np.log(s[i] + d)
            logdet[k] = group_log + n_within * np.log(d)
        if reml:
            logdet_A = 0.0
            for a in range(p):
                logdet_A += np.log(L[a, a])
            logdet[k] += 2.0 * logdet_A
            # tr(A^-1 M2), a column of M2 at a time.
            correction = 0.0
            for a in range(p):
                _cholesky_solve(L, M2[:, a], work)
                correction += work[a]
            trace[k] -= correction
        for t in range(T):
            for a in range(p):
                total = 0.0
                for i in range(q):
                    total += SX[i, a] * UY[i, t]
                XHy[a] = total + Xtyw[a, t] / d
            _cholesky_solve(L, XHy, b)
            for i in range(q):
                total = UY[i, t]
                for a in range(p):
                    total -= UX[i, a] * b[a]
                r[i] = total
            # v = (T + d I)^-1 r: the residual form, as CompressedLikelihood.profile.
            _pt_solve(pivots, lower, r, v)
            quad = 0.0
            quad2 = 0.0
            for i in range(q):
                quad += r[i] * v[i]
                quad2 += v[i] * v[i]
            within = ytyw[t]
            for a in range(p):
                within -= 2.0 * Xtyw[a, t] * b[a]
                cross = 0.0
                for c in range(p):
                    cross += XtXw[a, c] * b[c]
                within += b[a] * cross
            yPy[k, t] = quad + within / d
            yPPy[k, t] = quad2 + within / (d * d)
            for a in range(p):
                beta[k, t, a] = b[a]
    return yPy, yPPy, beta, logdet, trace, ok


@numba.njit(cache=True, nogil=True)
def _pt_solve(pivots: np.ndarray, lower: np.ndarray, c: np.ndarray, x: np.ndarray) -> None:
    """``x = (L D L')^-1 c`` for the unit bidiagonal ``L`` and ``D = diag(pivots)``."""
    q = c.size
    x[0] = c[0]
    for i in range(1, q):
        x[i] = c[i] - lower[i - 1] * x[i - 1]
    x[q - 1] = x[q - 1] / pivots[q - 1]
    for i in range(q - 2, -1, -1):
        x[i] = x[i] / pivots[i] - lower[i] * x[i + 1]


@numba.njit(cache=True, nogil=True)
def _cholesky_in_place(L: np.ndarray) -> bool:
    """The lower Cholesky factor of the symmetric matrix in ``L``'s lower triangle, in place."""
    p = L.shape[0]
    for j in range(p):
        total = L[j, j]
        for c in range(j):
            total -= L[j, c] * L[j, c]
        if not total > 0.0:
            return False
        L[j, j] = np.sqrt(total)
        for i in range(j + 1, p):
            value = L[i, j]
            for c in range(j):
                value -= L[i, c] * L[j, c]
            L[i, j] = value / L[j, j]
    return True


@numba.njit(cache=True, nogil=True)
def _cholesky_solve(L: np.ndarray, c: np.ndarray, x: np.ndarray) -> None:
    """``x = (L L')^-1 c`` for the lower factor ``L`` of :func:`_cholesky_in_place`."""
    p = c.size
    for i in range(p):
        value = c[i]
        for j in range(i):
            value -= L[i, j] * x[j]
        x[i] = value / L[i, i]
    for i in range(p - 1, -1, -1):
        value = x[i]
        for j in range(i + 1, p):
            value -= L[j, i] * x[j]
        x[i] = value / L[i, i]


class _TridiagonalSolve:
    """``(T + d I)^-1`` from its ``L D L'`` factors (``dpttrf``)."""

    def __init__(self, df: np.ndarray, ef: np.ndarray):
        self.df, self.ef = df, ef

    def solve(self, a: np.ndarray) -> np.ndarray:
        x, info = scipy.linalg.lapack.dpttrs(self.df, self.ef, a)
        if info != 0:
            msg = f"dpttrs failed (info {info})"
            raise np.linalg.LinAlgError(msg)
        return x


class _Dense:
    """The group part of ``H`` less ``d I`` in group coordinates: ``B = N^1/2 Kc N^1/2``.

    The identity basis (:meth:`CompressedBasis.in_groups`): ``apply_q`` does
    nothing and each shift is a Cholesky factorisation.
    """

    def __init__(self, B: np.ndarray):
        self.B = B

    def times(self, a: np.ndarray) -> np.ndarray:
        return self.B @ a

    def apply_q(self, A: np.ndarray, *, transpose: bool) -> np.ndarray:
        return A

    def shifted(self, d: float) -> _DenseSolve:
        """The Cholesky factor of ``B + d I``.

        Raises
        ------
        NotPositiveDefiniteError
            Where ``d`` is below the rounding of ``B``'s zero eigenvalues.
        """
        shifted = self.B.copy()
        shifted.flat[:: shifted.shape[0] + 1] += d
        L, info = scipy.linalg.lapack.dpotrf(shifted, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            msg = f"B + {d:g} I (dpotrf info {info})"
            raise NotPositiveDefiniteError(msg)
        return _DenseSolve(L)


class _DenseSolve:
    """``(B + d I)^-1`` from its Cholesky factor ``L`` (lower)."""

    def __init__(self, L: np.ndarray):
        self.L = L

    def solve(self, a: np.ndarray) -> np.ndarray:
        return scipy.linalg.cho_solve((self.L, True), a)

    def logdet(self) -> float:
        """``log|B + d I|``."""
        return 2.0 * float(np.sum(np.log(np.diag(self.L))))

    @functools.cached_property
    def inverse_diagonal(self) -> np.ndarray:
        """``diag((B + d I)^-1)``: the squared column norms of ``L^-1``."""
        inverse, info = scipy.linalg.lapack.dtrtri(self.L, lower=1)
        if info != 0:
            msg = f"dtrtri failed (info {info})"
            raise np.linalg.LinAlgError(msg)
        return np.einsum("ij,ij->j", inverse, inverse)


class CompressedLikelihood:
    """Sufficient statistics of one trait for likelihoods at any ``d``.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
        Fixed effects, intercept included, full column rank.
    basis : CompressedBasis or None
        None for the model without a random effect (H = I).

    Notes
    -----
    ``UX`` and ``Uy`` are the group parts of ``X`` and ``y`` in the basis of
    ``basis.rotate``: with eigenvectors ``U'X``, where the group part of
    ``H`` is ``diag(s) + d I``; with a factored basis ``Q' N^-1/2 Z'X``, where
    it is ``T + d I``. Every quadratic form is written with ``op.times``
    (``diag(s)`` or ``T``) and a solve with the shifted operator, so one
    code serves both; determinants and traces use the eigenvalues ``s``.
    """

    def __init__(self, y: np.ndarray, X: np.ndarray, basis: CompressedBasis | None):
        self.y = np.asarray(y, dtype=np.float64)
        self.X = np.asarray(X, dtype=np.float64)
        self.n, self.p = self.X.shape
        self.basis = basis
        self.q = 0 if basis is None else basis.q
        self.s = np.zeros(0) if basis is None else basis.s
        self.op: _Diagonal | _Tridiagonal | _Dense = (
            _Diagonal(self.s) if basis is None else basis.operator()
        )
        self.Uy = np.zeros(0) if basis is None else basis.rotate(self.y)
        self.UX = np.zeros((0, self.p)) if basis is None else basis.rotate(self.X)
        self.Xw = self.X if basis is None else basis.within(self.X)
        self.yw = self.y if basis is None else basis.within(self.y)
        # Cross-products of the within-group parts (the complement of U).
        self.XtXw = self.Xw.T @ self.Xw
        self.Xtyw = self.Xw.T @ self.yw
        self.ytyw = float(self.yw @ self.yw)
        self.logdet_XtX = _logdet_pd(self.X.T @ self.X)
        # Rank of Kc: the EM update for vg divides by it.
        self.rank_k = int(np.count_nonzero(self.s > 0))

    def dof(self, method: str) -> int:
        return self.n - self.p if method == "reml" else self.n

    def _shifted(self, d: float) -> _DiagonalSolve | _TridiagonalSolve | _DenseSolve:
        try:
            return self.op.shifted(d)
        except NotPositiveDefiniteError:
            if isinstance(self.op, _Dense):
                raise
            # d below the rounding of T's zero eigenvalues (h2 -> 1 in EM or
            # Newton): the eigenvalues clipped at 0 define the model there,
            # as with eigenvectors, so this likelihood takes them from now on.
            assert isinstance(self.op, _Tridiagonal)
            s, V = self.op.eigenvectors()
            self.s = clip_eigenvalues(s)
            self.rank_k = int(np.count_nonzero(self.s > 0))
            self.Uy, self.UX = V.T @ self.Uy, V.T @ self.UX
            self.op = _Diagonal(self.s)
            return self.op.shifted(d)

    def profile(self, d: float) -> _Profile:
        """GLS quantities at ``H = Z Kc Z' + d I``.

        ``d = inf`` is the limit h2 -> 0, where ``V = ve I``: the profile is
        then that of ``H = I`` (the -2 log L of the limit is the same formula
        with ``log|H| = 0``, as ``n log d`` cancels against the scale).
        """
        if np.isinf(d):
            s = np.zeros_like(self.s)
            op: _Diagonal | _Tridiagonal | _Dense = _Diagonal(s)
            d = 1.0
            solver: _DiagonalSolve | _TridiagonalSolve | _DenseSolve = op.shifted(d)
        else:
            solver = self._shifted(d)
            s, op = self.s, self.op
        YX = solver.solve(self.UX)
        A = self.UX.T @ YX + self.XtXw / d
        XHy = YX.T @ self.Uy + self.Xtyw / d
        chol = scipy.linalg.cho_factor(A)
        beta = scipy.linalg.cho_solve(chol, XHy)
        # yPy = r'H^-1 r for the GLS residual r, rather than y'H^-1y - XHy'beta:
        # at small d both of those are ~1/d and their difference loses digits.
        Ur = self.Uy - self.UX @ beta
        v = solver.solve(Ur)
        yPy = float(Ur @ v) + self.within_rss(beta) / d
        if isinstance(solver, _DenseSolve):
            group_logdet = solver.logdet()
        else:
            group_logdet = float(np.sum(np.log(s + d)))
        logdet_H = group_logdet + (self.n - self.q) * np.log(d)
        logdet_A = 2.0 * float(np.sum(np.log(np.diag(chol[0]))))
        return _Profile(d, s, op, solver, YX, v, chol, XHy, beta, yPy, logdet_H, logdet_A)

    def neg2loglik(self, d: float, method: str) -> float:
        """-2 log L at ``d`` with the variance scale profiled out."""
        pr = self.profile(d)
        return self._neg2(pr, method)

    def slope(self, d: float, method: str) -> float:
        """Derivative of -2 log L (profiled) with respect to ``log d``.

        ``d/dd [r log yPy + log|H| + log|X'H^-1X|] = tr P - r y'PPy / yPy``
        (ML: ``tr H^-1 - n y'H^-1 H^-1 y / yPy`` with the GLS residual), the
        same traces and quadratic forms as EM uses; times ``d`` for ``log d``.
        """
        pr = self.profile(d)
        q2, t2 = self.residual_moments(pr, method)
        return d * (t2 - self.dof(method) * q2 / pr.yPy)

    def within_rss(self, beta: np.ndarray) -> float:
        """``r_w'r_w`` for the residual ``r = y - X beta``: its within-group part."""
        return self.ytyw - 2.0 * float(self.Xtyw @ beta) + float(beta @ self.XtXw @ beta)

    def _neg2(self, pr: _Profile, method: str) -> float:
        r = self.dof(method)
        value = r * np.log(2.0 * np.pi * pr.yPy / r) + r + pr.logdet_H
        if method == "reml":
            value += pr.logdet_A - self.logdet_XtX
        return float(value)

    def e_step(self, pr: _Profile, method: str) -> EStep:
        """The group effects given ``y`` at the profile's ``d``: EM's E-step.

        Parameters
        ----------
        pr : _Profile
            :meth:`profile` at ``d``.
        method : {"reml", "ml"}
            REML's conditional covariance accounts for the estimated ``b``
            (Henderson's C22); ML's takes ``b`` as known.
        """
        s, d, v = pr.s, pr.d, pr.v
        mean = pr.op.times(v)
        if isinstance(pr.solver, _DenseSolve):
            trace = self.q - d * float(np.sum(pr.solver.inverse_diagonal))
        else:
            trace = float(np.sum(s * (1.0 / (s + d))))
        if method == "reml":
            M1 = pr.YX.T @ pr.op.times(pr.YX)
            trace -= float(np.trace(scipy.linalg.cho_solve(pr.chol, M1)))
        return EStep(v, mean, float(v @ mean), trace)

    def moments(self, pr: _Profile, method: str) -> tuple[float, float, float, float]:
        """Quadratic forms and traces that EM and AI-REML need, in H units.

        Returns ``(q1, t1, q2, t2)``: ``y'P ZKZ' P y``, ``tr(P ZKZ')``,
        ``y'P P y`` and ``tr P`` for ``P`` built from ``H`` (REML) or ``H^-1``
        (ML, where ``P y`` is still ``H^-1`` times the GLS residual). The
        first two are the E-step's (:meth:`e_step`).
        """
        effects = self.e_step(pr, method)
        return (effects.quadratic, effects.trace, *self.residual_moments(pr, method))

    def residual_moments(self, pr: _Profile, method: str) -> tuple[float, float]:
        """``(y'P P y, tr P)`` of :meth:`moments`: what the update of ``ve`` needs."""
        d, v = pr.d, pr.v
        q2 = float(v @ v) + self.within_rss(pr.beta) / d**2
        if isinstance(pr.solver, _DenseSolve):
            group_trace = float(np.sum(pr.solver.inverse_diagonal))
        else:
            group_trace = float(np.sum(1.0 / (pr.s + d)))
        t2 = group_trace + (self.n - self.q) / d
        if method == "reml":
            M2 = pr.YX.T @ pr.YX + self.XtXw / d**2
            t2 -= float(np.trace(scipy.linalg.cho_solve(pr.chol, M2)))
        return q2, t2


@dataclass(frozen=True)
class EStep:
    """The conditional mean of the group effects and EM's moments of their covariance.

    In H units, at one ``d``, in the basis of :meth:`CompressedBasis.rotate`
    (``B = W`` with eigenvectors, ``Q`` when factored; ``Op`` is ``diag(s)``
    or ``T``).

    Attributes
    ----------
    v : ndarray, shape (q,)
        ``(Op + d I)^-1 B' N^-1/2 Z'r`` for the GLS residual ``r``:
        ``Z'H^-1 r = N^1/2 B v``.
    mean : ndarray, shape (q,)
        ``Op v``: ``E(u | y) = vg Kc Z'V^-1 r = N^-1/2 B mean`` (the BLUP).
    quadratic : float
        ``r'H^-1 Z Kc Z' H^-1 r = E(u)' Kc^+ E(u)``.
    trace : float
        ``tr(P Z Kc Z')``: ``tr(Kc^+ Cov(u | y)) = vg (rank(Kc) - trace)``.
    """

    v: np.ndarray
    mean: np.ndarray
    quadratic: float
    trace: float


@dataclass(frozen=True)
class _Profile:
    d: float
    s: np.ndarray
    # The group part of H less d I, and the solve with it plus d I.
    op: _Diagonal | _Tridiagonal | _Dense
    solver: _DiagonalSolve | _TridiagonalSolve | _DenseSolve
    # (H^-1 group part) UX and (H^-1 group part) times the GLS residual's Ur.
    YX: np.ndarray
    v: np.ndarray
    chol: tuple
    XHy: np.ndarray
    beta: np.ndarray
    yPy: float
    logdet_H: float
    logdet_A: float


def _logdet_pd(A: np.ndarray) -> float:
    chol = scipy.linalg.cho_factor(A)
    return 2.0 * float(np.sum(np.log(np.diag(chol[0]))))


def compressed_neg2loglik(
    delta: float,
    y: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    Kc: np.ndarray,
    *,
    method: str = "reml",
) -> float:
    """-2 log L of the compressed model at ``d = delta`` (scale profiled out).

    Parameters
    ----------
    delta : float
        ``ve / vg``.
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    labels : ndarray, shape (n,), int
    Kc : ndarray, shape (q, q)
    method : {"reml", "ml"}
    """
    lik = CompressedLikelihood(y, X, CompressedBasis.build(labels, Kc, vectors=False))
    return lik.neg2loglik(delta, method)


def fit_null(
    y: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    Kc: np.ndarray,
    *,
    method: str = "reml",
    solver: str = "brent",
) -> NullModel:
    """Fit ``y = X b + Z u + e``, ``u ~ N(0, vg Kc)``, by REML or ML.

    Parameters
    ----------
    y : ndarray, shape (n,)
        Trait, no missing values.
    X : ndarray, shape (n, p)
        Fixed effects including the intercept, full column rank.
    labels : ndarray, shape (n,), int
        Group of each individual in ``0..q-1``, every group used.
    Kc : ndarray, shape (q, q)
        Group kinship (``K`` itself with singleton groups: the ordinary MLM).
    method : {"reml", "ml"}
    solver : {"brent", "em", "newton"}

    Returns
    -------
    NullModel

    Examples
    --------
    GAPIT 4.1's MLM of trait EarHT of the maize panel, with GAPIT's own
    kinship (each line its own group, ``Kc = K``; the kinship file and
    GAPIT's outputs are in ``tests/data/reference/``): GAPIT reports
    -2logL 2388.834905, vg 144.8276 and ve 110.6512 (its EMMA root search
    stops about 1e-5 short of the optimum):

    >>> import numpy as np
    >>> from cmlm_cli import plink, tables
    >>> bfile = plink.open_bfile("data/mdp")
    >>> K = tables.read_kinship_for(
    ...     "tests/data/reference/gapit/kinship_VanRaden.tsv", bfile.fid, bfile.iid
    ... )
    >>> table = tables.read_table("data/mdp.pheno.tsv", missing=("NA",), what="phenotype")
    >>> y = tables.align_rows(table, bfile.fid, bfile.iid)[0][:, 0]
    >>> kept = np.flatnonzero(~np.isnan(y))
    >>> X, labels, Kc = np.ones((kept.size, 1)), np.arange(kept.size), K[np.ix_(kept, kept)]
    >>> model = fit_null(y[kept], X, labels, Kc)
    >>> model.n, model.q, f"{model.neg2logL:.6f}", f"{model.vg:.3f}", f"{model.ve:.3f}"
    (279, 279, '2388.834905', '144.829', '110.650')

    The three solvers reach the same optimum:

    >>> [round(fit_null(y[kept], X, labels, Kc, solver=s).neg2logL, 6) for s in ("em", "newton")]
    [2388.834905, 2388.834905]
    """
    basis = CompressedBasis.build(labels, Kc, vectors=False)
    return fit_null_basis(y, X, basis, method=method, solver=solver)


def fit_null_basis(
    y: np.ndarray,
    X: np.ndarray,
    basis: CompressedBasis,
    *,
    method: str = "reml",
    solver: str = "brent",
) -> NullModel:
    """:func:`fit_null` on a basis already built from the groups and ``Kc``.

    Traits analysed on the same individuals share a compression level's
    basis, so its q x q decomposition is done once for all of them; this is
    :func:`fit_null_traits` with one trait.

    Parameters
    ----------
    y : ndarray, shape (n,)
    X : ndarray, shape (n, p)
    basis : CompressedBasis
        From :meth:`CompressedBasis.build` on the groups of the n individuals.
    method : {"reml", "ml"}
    solver : {"brent", "em", "newton"}

    Returns
    -------
    NullModel
    """
    y = np.asarray(y, dtype=np.float64)
    return fit_null_traits(y[:, None], X, basis, method=method, solver=solver)[0]


def fit_null_traits(
    Y: np.ndarray,
    X: np.ndarray,
    basis: CompressedBasis,
    *,
    method: str = "reml",
    solver: str = "brent",
) -> list[NullModel]:
    """:func:`fit_null` of several traits with the same individuals, design and groups.

    With ``brent`` the traits are searched together (:class:`TraitProfiles`):
    the grid over ``log d`` costs one factorisation per ``d`` for all of
    them, and each trait's bracketed maxima are then refined by its own
    Brent search. Each trait gets the numbers of its fit alone to rounding:
    only the rotation of the traits into the basis is one product for all
    (tests/test_null_model.py checks 1e-12). EM and Newton fit the traits
    one by one.

    Parameters
    ----------
    Y : ndarray, shape (n, T)
        One trait per column, no missing values.
    X : ndarray, shape (n, p)
    basis : CompressedBasis
    method : {"reml", "ml"}
    solver : {"brent", "em", "newton"}

    Returns
    -------
    list of NullModel
        One per column of ``Y``.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> labels = np.arange(40) % 8
    >>> A = rng.normal(size=(8, 20))
    >>> basis = CompressedBasis.build(labels, A @ A.T / 20)
    >>> X = np.ones((40, 1))
    >>> Y = rng.normal(size=(40, 3)) + 2.0 * (A[:, :3] / 3)[labels]
    >>> together = fit_null_traits(Y, X, basis)
    >>> alone = [fit_null_basis(Y[:, t], X, basis) for t in range(3)]
    >>> [bool(np.isclose(a.neg2logL, b.neg2logL, rtol=1e-12)) for a, b in zip(together, alone)]
    [True, True, True]
    """
    if method not in METHODS:
        msg = f"unknown method {method!r}; expected one of {', '.join(METHODS)}"
        raise ValueError(msg)
    if solver not in SOLVERS:
        msg = f"unknown solver {solver!r}; expected one of {', '.join(SOLVERS)}"
        raise ValueError(msg)
    Y = np.asarray(Y, dtype=np.float64)
    # The solvers' products and solves are of order q (and p): small ones
    # run on one BLAS thread, large ones on the idle cores (resources).
    with resources.blas_threads_for(basis.counts.size):
        if solver != "brent":
            return [
                _fit_iterative(Y[:, t], X, basis, method=method, solver=solver)
                for t in range(Y.shape[1])
            ]
        profiles = TraitProfiles(Y, X, basis, method)
        found = _search_brent(profiles)
        limit = profiles.evaluate(np.array([np.inf]))
        models = []
        for t, (d, evaluations) in enumerate(found):
            at = limit if np.isinf(d) else profiles.evaluate(np.array([d]), trait=t)
            column = 0 if at is not limit else t
            if np.isfinite(d) and limit.value[0, t] < at.value[0, 0]:
                # The grid's end and the roots all lie below the limit h2 = 0.
                d, at, column = np.inf, limit, t
            models.append(
                _package(
                    Y[:, t],
                    X,
                    basis,
                    profiles.s,
                    d,
                    at.yPy[0, column],
                    at.beta[0, column],
                    at.value[0, column],
                    method,
                    solver,
                    evaluations,
                    True,
                )
            )
        return models


def _fit_iterative(
    y: np.ndarray, X: np.ndarray, basis: CompressedBasis, *, method: str, solver: str
) -> NullModel:
    """One trait's fit by EM or Newton (local searches from one start)."""
    lik = CompressedLikelihood(y, X, basis)
    if solver == "em":
        d, iterations, converged = _solve_em(lik, method)
    else:
        d, iterations, converged = _solve_newton(lik, method)
    if lik.neg2loglik(np.inf, method) < lik.neg2loglik(d, method):
        # The likelihood still rises where the search stopped, towards h2 = 0
        # (EM and Newton only approach a boundary): take the limit itself.
        d = np.inf
    # Say so when the profile grid has seen a better point (a second mode or
    # a boundary).
    grid_best = min(
        lik.neg2loglik(np.exp(x), method) for x in np.linspace(*LOG_DELTA_RANGE, GRID_STEPS + 1)
    )
    found = lik.neg2loglik(d, method)
    if not converged:
        log.warning(
            "solver %s did not converge in %d iterations (-2logL %.6f, h2 %.4f; the grid "
            "over log d reaches %.6f); its estimates are where it stopped",
            solver,
            iterations,
            found,
            1 / (1 + d),
            grid_best,
        )
    elif grid_best < found - 1e-6:
        log.warning(
            "solver %s stopped at -2logL %.6f (h2 %.4f), but the grid over log d "
            "reaches %.6f: a local optimum; --solver brent searches the whole grid",
            solver,
            found,
            1 / (1 + d),
            grid_best,
        )
    return _package_profile(lik, d, method, solver, iterations, converged)


def fit_glm(y: np.ndarray, X: np.ndarray, *, method: str = "reml") -> NullModel:
    """The model without a random effect: ordinary least squares.

    ``ve`` is ``RSS / (n - p)`` for REML and ``RSS / n`` for ML; ``neg2logL``
    is the same formula as the mixed model with ``H = I``.
    """
    if method not in METHODS:
        msg = f"unknown method {method!r}; expected one of {', '.join(METHODS)}"
        raise ValueError(msg)
    lik = CompressedLikelihood(y, X, None)
    return _package_profile(lik, 1.0, method, "ols", 1, True)


def null_model_at(
    y: np.ndarray,
    X: np.ndarray,
    labels: np.ndarray,
    Kc: np.ndarray,
    delta: float,
    *,
    method: str = "reml",
) -> NullModel:
    """The model at a given ``d = ve / vg``, with ``vg`` and ``b`` profiled: no search.

    For variance components known from elsewhere (another tool's fit, a
    published heritability): ``vg = yPy / r`` at that ``d``, ``ve = d vg``.

    Parameters
    ----------
    y, X, labels, Kc, method
        As in :func:`fit_null`.
    delta : float
        ``ve / vg``, positive (``inf``: no genetic variance).
    """
    if not delta > 0:
        msg = f"delta = ve / vg must be positive, not {delta}"
        raise ValueError(msg)
    lik = CompressedLikelihood(y, X, CompressedBasis.build(labels, Kc, vectors=False))
    return _package_profile(lik, float(delta), method, "given", 0, True)


@dataclass(frozen=True)
class RandomEffects:
    """BLUPs and prediction error variances of the fitted groups and of others.

    Entries ``0..q-1`` are the model's groups, ``q..q+m-1`` the groups (or
    individuals) predicted from their kinship to them.

    Attributes
    ----------
    blup : ndarray, shape (q + m,)
        ``vg Kc Z'V^-1 (y - Xb)`` for the model's groups, ``vg k' Z'V^-1 (y - Xb)``
        (the conditional mean) for one with kinships ``k`` to them.
    pev : ndarray, shape (q + m,)
        Prediction error variance: ``vg Kc[g,g] - vg^2 (Kc Z'PZ Kc)[g,g]``
        (Henderson's C22, which includes the error of the estimated ``b``),
        ``vg kappa - vg^2 k' Z'PZ k`` for the others; ``P`` is the REML
        projection whichever method estimated ``vg`` and ``ve``.
    kinship : ndarray, shape (q + m,)
        ``Kc[g,g]``, or the other's own kinship ``kappa``:
        ``reliability = 1 - pev / (vg kinship)``.
    """

    blup: np.ndarray
    pev: np.ndarray
    kinship: np.ndarray


def random_effects(
    model: NullModel,
    cross: np.ndarray | None = None,
    self_kinship: np.ndarray | None = None,
) -> RandomEffects:
    """The BLUP and PEV of every group of ``model``, and of others predicted from them.

    In group coordinates (:meth:`CompressedBasis.in_groups`), never with an
    n x n matrix: with ``B = N^1/2 Kc N^1/2``, one Cholesky factor of
    ``B + d I`` and its triangular inverse (2 q^3 / 3 flops; the
    eigendecomposition would cost ~10 times more at q = 5,000), then
    O(q^2 (p + m)). With the E-step's ``v = (B + d I)^-1 N^-1/2 Z'r`` and mean
    ``B v`` (:meth:`CompressedLikelihood.e_step`, the one EM iterates on):

        blup_g = (B v)_g / sqrt(n_g)                         (= vg Kc Z'V^-1 r)
        pev_g  = vg / n_g [d (1 - d ((B + d I)^-1)_gg)       (vg Kc - vg^2 Kc Z'H^-1 Z Kc)
                           + f_g' A^-1 f_g]                  f = B YX (b's error)

    and for another with kinships ``k`` (q,) and ``kappa``, ``w = N^1/2 k``:

        blup = w'v,   pev = vg [kappa - w'(B + d I)^-1 w + (YX'w)' A^-1 (YX'w)]

    where ``YX = (B + d I)^-1 N^-1/2 Z'X`` and ``A = X'H^-1X``. Where
    ``B + d I`` is not positive definite in floating point (h2 = 1 to
    rounding) the same formulas run in the eigenbasis.

    Parameters
    ----------
    model : NullModel
        A mixed model (q > 0).
    cross : ndarray, shape (m, q), optional
        Kinship of each other group or individual to the model's groups.
    self_kinship : ndarray, shape (m,), optional
        Their own kinship (``Kc[a,a]``, ``K[a,a]``).

    Returns
    -------
    RandomEffects
        PEVs below zero by rounding are set to 0. With ``h2 = 0`` every
        BLUP and PEV is 0.
    """
    # Its products and solves are of order q: one BLAS thread for small q
    # (resources.blas_threads).
    with resources.blas_threads_for(model.q):
        return _random_effects(model, cross, self_kinship)


def _random_effects(
    model: NullModel,
    cross: np.ndarray | None = None,
    self_kinship: np.ndarray | None = None,
) -> RandomEffects:
    if model.q == 0:
        msg = "a model without a random effect (the GLM) has no BLUPs"
        raise ValueError(msg)
    cross = np.zeros((0, model.q)) if cross is None else np.asarray(cross, dtype=np.float64)
    own = np.zeros(0) if self_kinship is None else np.asarray(self_kinship, dtype=np.float64)
    if cross.shape != (own.size, model.q):
        msg = f"cross has shape {cross.shape}; expected ({own.size}, {model.q})"
        raise ValueError(msg)
    kinship = np.concatenate([np.diag(model.Kc), own])
    if not np.isfinite(model.delta):
        zeros = np.zeros(kinship.size)
        return RandomEffects(zeros, zeros.copy(), kinship)
    try:
        # Group coordinates: one Cholesky factor of N^1/2 Kc N^1/2 + d I.
        basis = CompressedBasis.in_groups(model.labels, model.Kc)
        lik = CompressedLikelihood(model.y, model.X, basis)
        pr = lik.profile(model.delta)
        inverse_diagonal = pr.solver.inverse_diagonal  # type: ignore[union-attr]

        def to_groups(a: np.ndarray) -> np.ndarray:
            return a

        from_groups = to_groups
    except NotPositiveDefiniteError:
        # d below the rounding of Kc's zero eigenvalues (h2 = 1 to rounding):
        # the eigenbasis, whose clipped eigenvalues define the model there.
        basis = CompressedBasis.build(model.labels, model.Kc, vectors=True)
        lik = CompressedLikelihood(model.y, model.X, basis)
        pr = lik.profile(model.delta)
        W = basis.W
        inverse_diagonal = (W * W) @ (1.0 / (pr.s + pr.d))

        def to_groups(a: np.ndarray) -> np.ndarray:
            return W @ a

        def from_groups(a: np.ndarray) -> np.ndarray:
            return W.T @ a

    effects = lik.e_step(pr, "reml")
    d, counts = pr.d, basis.counts
    root = np.sqrt(counts)

    def correction(F: np.ndarray) -> np.ndarray:
        """``diag(F' A^-1 F)``: the error of the estimated ``b``."""
        return np.sum(F * scipy.linalg.cho_solve(pr.chol, F), axis=0)

    # The model's groups: N^1/2 E(u | y) and N^1/2 Kc Z'H^-1 X in group
    # coordinates; d B (B + d I)^-1 = d (I - d (B + d I)^-1).
    blup = to_groups(effects.mean) / root
    F = to_groups(pr.op.times(pr.YX))
    pev = (d * (1.0 - d * inverse_diagonal) + correction(F.T)) / counts
    # The others, from their kinships to the model's groups.
    w = from_groups(root[:, None] * cross.T)
    blup_others = w.T @ effects.v
    pev_others = own - np.sum(w * pr.solver.solve(w), axis=0) + correction(pr.YX.T @ w)
    pev = model.vg * np.concatenate([pev, pev_others])
    return RandomEffects(np.concatenate([blup, blup_others]), np.maximum(pev, 0.0), kinship)


def _package_profile(
    lik: CompressedLikelihood, d: float, method: str, solver: str, iterations: int, converged: bool
) -> NullModel:
    """:func:`_package` of one trait's likelihood at ``d``."""
    pr = lik.profile(d)
    return _package(
        lik.y,
        lik.X,
        lik.basis,
        lik.s,
        d,
        pr.yPy,
        pr.beta,
        lik._neg2(pr, method),
        method,
        solver,
        iterations,
        converged,
    )


def _package(
    y: np.ndarray,
    X: np.ndarray,
    basis: CompressedBasis | None,
    s: np.ndarray,
    d: float,
    yPy: float,
    beta: np.ndarray,
    neg2logL: float,
    method: str,
    solver: str,
    iterations: int,
    converged: bool,
) -> NullModel:
    """The :class:`NullModel` of a trait at ``d``, from the profile's ``yPy`` and ``beta`` there."""
    n, p = X.shape
    scale = float(yPy) / (n - p if method == "reml" else n)
    # Without a random effect, or with h2 = 0 exactly, V = ve I: the scan
    # then works with H = I and the scale ve.
    glm = basis is None or np.isinf(d)
    return NullModel(
        method=method,
        solver=solver,
        n=n,
        p=p,
        q=0 if basis is None else basis.q,
        delta=float("inf") if glm else float(d),
        vg=0.0 if glm else scale,
        ve=scale if glm else float(d) * scale,
        h2=0.0 if glm else 1.0 / (1.0 + float(d)),
        neg2logL=float(neg2logL),
        beta=np.asarray(beta, dtype=np.float64),
        iterations=iterations,
        converged=converged,
        y=y,
        X=X,
        labels=np.zeros(n, dtype=np.int64) if basis is None else basis.labels,
        counts=np.zeros(0) if basis is None else basis.counts,
        Kc=np.zeros((0, 0)) if basis is None else basis.Kc,
        # The eigenvalues are kept even at h2 = 0: the scan's H = I limit
        # comes from delta = inf, and --exact needs them to search each SNP's d.
        s=np.zeros(0) if basis is None else s,
        h_scale=scale,
        reduction=basis.factors
        if basis is not None and isinstance(basis.factors, _Tridiagonal)
        else None,
    )


@dataclass(frozen=True)
class ProfileValues:
    """:class:`TraitProfiles` at K values of ``d`` for T traits; arrays of shape (K, T).

    Attributes
    ----------
    value : ndarray
        -2 log L with the scale profiled out (restricted for REML).
    slope : ndarray
        Its derivative in ``log d`` (:meth:`CompressedLikelihood.slope`).
    yPy : ndarray
        ``r'H^-1r`` for the GLS residual.
    beta : ndarray, shape (K, T, p)
    """

    value: np.ndarray
    slope: np.ndarray
    yPy: np.ndarray
    beta: np.ndarray


class TraitProfiles:
    """The profiled likelihood of T traits with one design and one basis, at many ``d`` at once.

    Traits analysed on the same individuals with the same fixed effects and
    groups share everything in :meth:`CompressedLikelihood.profile` that
    does not involve ``y``: the factor of the group part of ``H``, ``A =
    X'H^-1X``, ``log|H|``, ``log|A|`` and the traces of the slope. One
    compiled pass (:func:`_trait_profiles`) computes them once per ``d`` and
    then each trait's GLS fit, residual form of ``yPy`` and ``y'PPy``: O(q)
    per ``d`` for all traits plus O(q p) per trait, where the single-trait
    likelihood pays a factorisation and several LAPACK calls per trait.

    Parameters
    ----------
    Y : ndarray, shape (n, T)
    X : ndarray, shape (n, p)
    basis : CompressedBasis
        With eigenvectors (``diag(s)``) or a tridiagonal reduction (``T``).
    method : {"reml", "ml"}

    Notes
    -----
    As :meth:`CompressedLikelihood._shifted`, where ``T + d I`` does not
    factor (``d`` below the rounding of ``T``'s zero eigenvalues) the traits
    move to the eigenvectors of ``T`` with its eigenvalues clipped at 0, and
    stay there.
    """

    def __init__(self, Y: np.ndarray, X: np.ndarray, basis: CompressedBasis, method: str):
        self.X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        self.n, self.p = self.X.shape
        self.q = basis.q
        self.reml = method == "reml"
        self.dof = self.n - self.p if self.reml else self.n
        self.s = basis.s
        op = basis.operator()
        if isinstance(op, _Tridiagonal):
            self._tridiagonal: _Tridiagonal | None = op
            self._diagonal, self._offdiagonal = op.diagonal, op.offdiagonal
        else:
            self._tridiagonal = None
            self._diagonal, self._offdiagonal = self.s, np.zeros(max(self.q - 1, 0))
        self.UX = np.ascontiguousarray(basis.rotate(self.X))
        self.UY = np.ascontiguousarray(basis.rotate(Y))
        Xw, Yw = basis.within(self.X), basis.within(Y)
        self.XtXw = Xw.T @ Xw
        # Trait by trait, so that a trait's cross-products are the same
        # whichever traits come with it.
        self.Xtyw = np.ascontiguousarray(
            np.column_stack([Xw.T @ Yw[:, t] for t in range(Y.shape[1])])
        )
        self.ytyw = np.array([float(Yw[:, t] @ Yw[:, t]) for t in range(Y.shape[1])])
        self.logdet_XtX = _logdet_pd(self.X.T @ self.X)

    @property
    def traits(self) -> int:
        return self.UY.shape[1]

    def evaluate(
        self, ds: np.ndarray, *, trait: int | None = None, values: bool = True
    ) -> ProfileValues:
        """Every trait (or the one ``trait``) at every ``d`` of ``ds``, shape (K,).

        ``d = inf`` is the limit h2 -> 0, ``H = I``, as in
        :meth:`CompressedLikelihood.profile`; ``ds`` is then that one value.
        Without ``values`` only the slope, ``yPy`` and ``beta`` are computed
        (``value`` is NaN): what a root search needs.
        """
        ds = np.asarray(ds, dtype=np.float64)
        cols = slice(None) if trait is None else slice(trait, trait + 1)
        UY = np.ascontiguousarray(self.UY[:, cols])
        Xtyw = np.ascontiguousarray(self.Xtyw[:, cols])
        ytyw = np.ascontiguousarray(self.ytyw[cols])
        if np.isinf(ds).any():
            if ds.size != 1:
                msg = "the limit d = inf is evaluated alone"
                raise ValueError(msg)
            zeros = np.zeros(self.q)
            out = _trait_profiles(
                zeros,
                zeros[1:],
                zeros,
                0,
                self.UX,
                self.XtXw,
                UY,
                Xtyw,
                ytyw,
                np.ones(1),
                self.reml,
                True,
            )
            ds = np.ones(1)
        else:
            out = _trait_profiles(
                self._diagonal,
                self._offdiagonal,
                self.s,
                self.n - self.q,
                self.UX,
                self.XtXw,
                UY,
                Xtyw,
                ytyw,
                ds,
                self.reml,
                values,
            )
            if not out[-1].all():
                self._to_eigenbasis()
                return self.evaluate(ds, trait=trait, values=values)
        yPy, yPPy, beta, logdet, trace, _ = out
        r = self.dof
        value = r * np.log(2.0 * np.pi * yPy / r) + r + logdet[:, None]
        if self.reml:
            value = value - self.logdet_XtX
        slope = ds[:, None] * (trace[:, None] - r * yPPy / yPy)
        return ProfileValues(value, slope, yPy, beta)

    def _to_eigenbasis(self) -> None:
        """Move to the eigenvectors of ``T``, eigenvalues clipped at 0 (class Notes)."""
        if self._tridiagonal is None:
            msg = "diag(s) + d I with s >= 0 and d > 0 did not factor"
            raise NotPositiveDefiniteError(msg)
        s, V = self._tridiagonal.eigenvectors()
        self.s = clip_eigenvalues(s)
        self.UX = np.ascontiguousarray(V.T @ self.UX)
        self.UY = np.ascontiguousarray(V.T @ self.UY)
        self._diagonal, self._offdiagonal = self.s, np.zeros(max(self.q - 1, 0))
        self._tridiagonal = None


def _search_brent(profiles: TraitProfiles) -> list[tuple[float, int]]:
    """Each trait's ``d`` and likelihood evaluations: grid over log d, Brent on every maximum.

    As EMMA does: the profile on the grid (all traits at once), then each
    bracketed optimum refined as the root of the derivative of the profile,
    found by Brent's root finder to machine precision (a search on the
    function values alone stops at ~sqrt(eps) in log d, which moves vg in
    the 7th digit); the best of the grid and the roots is kept. The grid's
    two ends are candidates too, so an optimum on the boundary (h2 near 0
    or 1) is a legal answer rather than a failure; :func:`fit_null_traits`
    also compares the limit h2 = 0 (``d = inf``).
    """
    lo, hi = LOG_DELTA_RANGE
    grid = np.linspace(lo, hi, GRID_STEPS + 1)
    on_grid = profiles.evaluate(np.exp(grid))
    found = []
    for t in range(profiles.traits):
        values, slopes = on_grid.value[:, t], on_grid.slope[:, t]
        evaluations = grid.size
        if np.ptp(values) <= ROUNDING * max(1.0, abs(values.min())):
            # The likelihood does not depend on d: the random effect lies in
            # the span of the fixed effects (one group, or PCs that span Kc),
            # and vg cannot be estimated. h2 = 0 is the model without it.
            log.warning(
                "the likelihood is the same for every h2: the group effects are confounded "
                "with the fixed effects (%d groups); reporting h2 = 0",
                profiles.q,
            )
            found.append((np.inf, evaluations))
            continue
        best_x, best_v = grid[int(np.argmin(values))], float(values.min())

        def slope(x: float, t: int = t) -> float:
            at = profiles.evaluate(np.array([np.exp(x)]), trait=t, values=False)
            return float(at.slope[0, 0])

        def value(x: float, t: int = t) -> float:
            return float(profiles.evaluate(np.array([np.exp(x)]), trait=t).value[0, 0])

        for i in range(1, grid.size - 1):
            if not (values[i] <= values[i - 1] and values[i] <= values[i + 1]):
                continue
            a, b = grid[i - 1], grid[i + 1]
            if slopes[i - 1] < 0 < slopes[i + 1]:
                x, calls = brent_root(slope, a, b, xtol=1e-13)
                evaluations += calls
            else:
                # Rare (a kink or a flat stretch): scipy.optimize costs 0.2 s
                # to import, which the usual bracketed root does not pay.
                import scipy.optimize

                optimum = scipy.optimize.minimize_scalar(
                    value, bounds=(a, b), method="bounded", options={"xatol": 1e-10}
                )
                x = float(optimum.x)
                evaluations += int(optimum.nfev)
            at = value(x)
            evaluations += 1
            if at < best_v:
                best_x, best_v = float(x), at
        found.append((float(np.exp(best_x)), evaluations))
    return found


def brent_root(
    f: Callable[[float], float],
    a: float,
    b: float,
    *,
    xtol: float,
    rtol: float = 4 * np.finfo(float).eps,
    maxiter: int = 200,
) -> tuple[float, int]:
    """Root of ``f`` in ``[a, b]`` by Brent's method (Brent 1973, ch. 4).

    Inverse quadratic interpolation or the secant step where it stays well
    inside the bracket, bisection otherwise, so the bracket always shrinks
    and at least halves every few steps. Written here rather than taken from
    scipy.optimize, whose import alone costs 0.2 s of every run's start-up.

    Parameters
    ----------
    f : callable
        Continuous on ``[a, b]`` with ``f(a)`` and ``f(b)`` of opposite signs
        (or one of them 0).
    a, b : float
        The bracket.
    xtol, rtol : float
        The root is returned once it is known within ``xtol / 2 + 2 rtol |x|``
        (``rtol`` defaults to scipy's ``brentq``'s).
    maxiter : int
        Evaluations of ``f`` after the two ends before giving up.

    Returns
    -------
    x : float
        The root.
    calls : int
        Evaluations of ``f``, the two ends included.

    Raises
    ------
    ValueError
        ``f(a)`` and ``f(b)`` have the same sign.
    RuntimeError
        No convergence within ``maxiter`` evaluations.

    Examples
    --------
    >>> x, calls = brent_root(lambda x: x * x - 2.0, 0.0, 2.0, xtol=1e-15)
    >>> abs(x - 2.0 ** 0.5) < 1e-15
    True
    """
    fa, fb = f(a), f(b)
    calls = 2
    if fa == 0:
        return a, calls
    if fb == 0:
        return b, calls
    if (fa > 0) == (fb > 0):
        msg = f"f({a}) = {fa} and f({b}) = {fb} do not bracket a root"
        raise ValueError(msg)
    # b is the best estimate, c the other end of the bracket [b, c] (or [c, b]),
    # a the previous b; d the last step, e the one before it.
    c, fc = a, fa
    d = e = b - a
    while calls < maxiter + 2:
        if (fb > 0) == (fc > 0):
            c, fc = a, fa
            d = e = b - a
        if abs(fc) < abs(fb):
            a, fa = b, fb
            b, fb = c, fc
            c, fc = a, fa
        tol = 2.0 * rtol * abs(b) + 0.5 * xtol
        half = 0.5 * (c - b)
        if abs(half) <= tol or fb == 0:
            return b, calls
        if abs(e) >= tol and abs(fa) > abs(fb):
            s = fb / fa
            if a == c:  # two points: the secant
                p, q = 2.0 * half * s, 1.0 - s
            else:  # three: inverse quadratic interpolation
                r, t = fa / fc, fb / fc
                p = s * (2.0 * half * r * (r - t) - (b - a) * (t - 1.0))
                q = (r - 1.0) * (t - 1.0) * (s - 1.0)
            if p > 0:
                q = -q
            p = abs(p)
            # Accept the step only if it lands inside the bracket and shrinks
            # faster than the step before last; else bisect.
            if 2.0 * p < min(3.0 * half * q - abs(tol * q), abs(e * q)):
                e, d = d, p / q
            else:
                d = e = half
        else:
            d = e = half
        a, fa = b, fb
        b += d if abs(d) > tol else (tol if half > 0 else -tol)
        fb = f(b)
        calls += 1
    msg = f"Brent's method did not converge in {maxiter} evaluations on [{a}, {b}]"
    raise RuntimeError(msg)


def _start(lik: CompressedLikelihood, method: str) -> tuple[float, float]:
    """Starting values for the iterative solvers: the GLS residual variance
    split half and half between vg and ve (no information from the grid, so
    that agreement with ``brent`` is a real check)."""
    total = lik.profile(1.0).yPy / lik.dof(method)
    return total / 2.0, total / 2.0


def _neg2_full(lik: CompressedLikelihood, vg: float, ve: float, method: str) -> float:
    """-2 log L at ``(vg, ve)`` without profiling the scale."""
    pr = lik.profile(ve / vg)
    r = lik.dof(method)
    # log|V| = n log vg + log|H| and log|X'V^-1X| = log|A| - p log vg, so the
    # powers of vg add up to r for REML (n - p) and ML (n) alike.
    value = r * np.log(2.0 * np.pi) + r * np.log(vg) + pr.logdet_H + pr.yPy / vg
    if method == "reml":
        value += pr.logdet_A - lik.logdet_XtX
    return float(value)


def _solve_em(lik: CompressedLikelihood, method: str) -> tuple[float, int, bool]:
    """EM for (vg, ve) in the compressed basis (DESIGN.md §3).

    ``vg <- vg + vg^2 (y'P ZKcZ' P y - tr(P ZKcZ')) / rank(Kc)`` and
    ``ve <- ve + ve^2 (y'P P y - tr P) / n`` with ``P`` built from ``V``;
    no ``Kc^-1`` is needed. ``P_V = P_H / vg`` turns the H-unit moments into
    V units. Monotone but slow near a boundary: vg shrinks towards 0 by ever
    smaller steps, so every ``EM_BOUNDARY_CHECK`` iterations the profile is
    compared with its limit at h2 = 0, and EM stops there once it is within
    rounding of it and still falling towards it.
    """
    vg, ve = _start(lik, method)
    rank = max(lik.rank_k, 1)
    limit = lik.neg2loglik(np.inf, method)
    for iteration in range(1, EM_MAX_ITER + 1):
        if iteration % EM_BOUNDARY_CHECK == 0:
            d = ve / vg
            near = abs(lik.neg2loglik(d, method) - limit) <= 1e-9 * max(1.0, abs(limit))
            if near and lik.slope(d, method) < 0:
                return np.inf, iteration, True
        pr = lik.profile(ve / vg)
        # E-step: the BLUP of the group effects and its conditional covariance,
        # the same code as the BLUP table's (random_effects); M-step:
        # vg <- (E(u)'Kc^+E(u) + tr(Kc^+ Cov(u | y))) / rank(Kc).
        effects = lik.e_step(pr, method)
        q2, t2 = lik.residual_moments(pr, method)
        vg_new = vg + (effects.quadratic - vg * effects.trace) / rank
        ve_new = ve + (ve / vg) ** 2 * (q2 - vg * t2) / lik.n
        vg_new, ve_new = max(vg_new, vg * 1e-6), max(ve_new, ve * 1e-6)
        moved = max(abs(np.log(vg_new / vg)), abs(np.log(ve_new / ve)))
        vg, ve = vg_new, ve_new
        if moved < PARAMETER_TOL:
            return ve / vg, iteration, True
    return ve / vg, EM_MAX_ITER, False


def _solve_newton(lik: CompressedLikelihood, method: str) -> tuple[float, int, bool]:
    """Average-information Newton-Raphson on ``(vg, ve)`` with step halving.

    Score ``-1/2 [tr(P V_i) - y'P V_i P y]`` and AI matrix
    ``1/2 y'P V_i P V_j P y`` for ``V_1 = Z Kc Z'``, ``V_2 = I``, all from
    rotated vectors (ML uses ``V^-1`` where REML uses ``P``). Steps that would
    make a component non-positive are shortened, so a boundary optimum is
    approached from inside.
    """
    theta = np.array(_start(lik, method))
    current = _neg2_full(lik, theta[0], theta[1], method)
    for iteration in range(1, NEWTON_MAX_ITER + 1):
        score, info = _score_and_ai(lik, theta, method)
        try:
            step = np.linalg.solve(info, score)
        except np.linalg.LinAlgError:
            step = score * theta**2
        scale = 1.0
        while True:
            candidate = theta + scale * step
            if np.all(candidate > 0):
                value = _neg2_full(lik, candidate[0], candidate[1], method)
                # Near the optimum a good step changes -2 log L by less than
                # its rounding error; accept those rather than stall.
                if value <= current + ROUNDING * abs(current):
                    break
            scale /= 2.0
            if scale < 1e-12:
                # No step improves -2 log L: converged only if the score
                # (per unit of log vg, log ve) is nil as well.
                stalled_at_optimum = np.max(np.abs(score * theta)) < 1e-6 * max(1.0, current)
                return theta[1] / theta[0], iteration, bool(stalled_at_optimum)
        converged = np.max(np.abs(np.log(candidate / theta))) < PARAMETER_TOL
        theta, current = candidate, value
        if converged:
            return theta[1] / theta[0], iteration, True
    return theta[1] / theta[0], NEWTON_MAX_ITER, False


def _score_and_ai(
    lik: CompressedLikelihood, theta: np.ndarray, method: str
) -> tuple[np.ndarray, np.ndarray]:
    vg = theta[0]
    pr = lik.profile(theta[1] / vg)
    q1, t1, q2, t2 = lik.moments(pr, method)
    # Score of log L in V units: P_V = P_H / vg.
    score = -0.5 * np.array([t1 / vg - q1 / vg**2, t2 / vg - q2 / vg**2])
    # v = P_V y = H^-1 r / vg; a_1 = Z Kc Z' v lies in the span of U, and
    # a_2 = v has the within-group part r_w / (d vg). Each a is described by
    # U'a and by X'a_w, which is all that a'H^-1b and X'H^-1a need.
    d = pr.d
    Uv = pr.v / vg
    Ua = [pr.op.times(Uv), Uv]
    HUa = [pr.solver.solve(a) for a in Ua]
    Xw_r = lik.Xtyw - lik.XtXw @ pr.beta
    Xa_w = [np.zeros(lik.p), Xw_r / (d * vg)]
    within = np.array([[0.0, 0.0], [0.0, lik.within_rss(pr.beta) / (d * vg) ** 2]])
    info = np.empty((2, 2))
    for i in range(2):
        for j in range(i, 2):
            hij = float(Ua[i] @ HUa[j]) + within[i, j] / d
            if method == "reml":
                xi = lik.UX.T @ HUa[i] + Xa_w[i] / d
                xj = lik.UX.T @ HUa[j] + Xa_w[j] / d
                hij -= float(xi @ scipy.linalg.cho_solve(pr.chol, xj))
            info[i, j] = info[j, i] = 0.5 * hij / vg
    # Newton on -2 log L: step = info^-1 score maximises log L.
    return score, info

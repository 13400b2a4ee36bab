"""Scan edge cases that the dense oracle does not reach."""

from __future__ import annotations

import numpy as np
import pytest

from cmlm_cli.null_model import fit_glm, fit_null
from cmlm_cli.scan import scan_block


def test_scan_at_h2_zero_is_the_fixed_effects_test():
    # A trait of pure noise over a kinship with a strong signal direction:
    # the REML optimum is the limit h2 = 0 (d = inf), where V = ve I. The scan
    # must then be the GLM's test with the null-model variance, whatever the
    # groups' eigenvalues are.
    rng = np.random.default_rng(11)
    n, q = 90, 15
    labels = np.arange(n) % q
    A = rng.normal(size=(q, q))
    Kc = A @ A.T / q + np.eye(q)
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    for seed in range(20):
        y = np.random.default_rng(seed).normal(size=n)
        model = fit_null(y, X, labels, Kc)
        if model.h2 == 0.0:
            break
    else:
        pytest.fail("no seed gave a boundary fit")
    assert np.isinf(model.delta)
    G = rng.binomial(2, 0.3, size=(n, 25)).astype(float)
    mixed = scan_block(model, G)
    glm = scan_block(fit_glm(y, X), G, variance="null")
    np.testing.assert_allclose(mixed.p, glm.p, rtol=1e-12)
    np.testing.assert_allclose(mixed.beta, glm.beta, rtol=1e-12)
    assert model.neg2logL == pytest.approx(fit_glm(y, X).neg2logL, rel=1e-14)


def test_one_group_is_confounded_with_the_intercept(caplog):
    # With q = 1 the group effect is a constant: the likelihood cannot tell
    # vg from the intercept, so the fit reports h2 = 0 and says why.
    rng = np.random.default_rng(4)
    n = 40
    X = np.ones((n, 1))
    y = rng.normal(size=n)
    with caplog.at_level("WARNING", logger="cmlm"):
        model = fit_null(y, X, np.zeros(n, dtype=int), np.array([[1.0]]))
    assert model.h2 == 0.0
    assert model.vg == 0.0
    assert "confounded" in caplog.text
    assert model.neg2logL == pytest.approx(fit_glm(y, X).neg2logL, rel=1e-13)


def test_a_group_kinship_that_is_not_psd_is_reported(caplog):
    rng = np.random.default_rng(5)
    n, q = 30, 3
    labels = np.arange(n) % q
    Kc = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])  # eigenvalue -0.8
    X = np.ones((n, 1))
    with caplog.at_level("WARNING", logger="cmlm"):
        fit_null(rng.normal(size=n), X, labels, Kc)
    assert "negative eigenvalues" in caplog.text


def test_a_group_kinship_that_is_not_psd_is_scanned_as_its_nearest_psd_matrix():
    # The fit uses the clipped eigenvalues; the model keeps that matrix as its
    # Kc, so the scan (Cholesky of N^1/2 Kc N^1/2 + dI) tests the model that
    # was fitted: the dense oracle on the same Kc, and the clipped spectrum.
    import oracle

    rng = np.random.default_rng(6)
    n, q = 60, 3
    labels = np.arange(n) % q
    given = np.array([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]])  # eigenvalue -0.8
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.normal(size=n) + 2.0 * rng.normal(size=q)[labels]
    model = fit_null(y, X, labels, given)
    # The nearest PSD matrix, by hand: N^1/2 Kc N^1/2 with its negative
    # eigenvalue set to 0, scaled back.
    root = np.sqrt(np.bincount(labels).astype(float))
    values, vectors = np.linalg.eigh(given * np.outer(root, root))
    assert values.min() < -0.5
    nearest = (vectors * np.maximum(values, 0.0)) @ vectors.T / np.outer(root, root)
    np.testing.assert_allclose(model.Kc, nearest, atol=1e-12)
    np.testing.assert_allclose(np.sort(model.s), np.maximum(values, 0.0), atol=1e-12)
    G = rng.binomial(2, 0.4, size=(n, 30)).astype(float)
    got = scan_block(model, G)
    H = oracle.h_matrix(model.delta, labels, model.Kc)
    dense = oracle.dense_scan(model.y, model.X, H, G, sigma2=model.vg)
    tested = np.isfinite(got.p)
    assert tested.sum() > 20
    np.testing.assert_allclose(got.p[tested], dense.p[tested], rtol=1e-9)


def test_precision_factor_is_a_lower_triangular_root_of_the_group_precision():
    from cmlm_cli.scan import precision_factor

    rng = np.random.default_rng(8)
    q = 25
    A = rng.normal(size=(q, 5))
    Kc = A @ A.T  # rank 5: singular
    counts = rng.integers(1, 6, q).astype(float)
    root = np.sqrt(counts)
    for d in (1e-3, 0.7, 50.0):
        R = precision_factor(Kc, counts, d)
        np.testing.assert_array_equal(R, np.tril(R))
        expected = np.linalg.inv(Kc * np.outer(root, root) + d * np.eye(q)) / np.outer(root, root)
        np.testing.assert_allclose(
            R.T @ R, expected, rtol=1e-10, atol=1e-12 * np.abs(expected).max()
        )
    # Singular in floating point at d = 0: the caller takes the eigenvalue route.
    assert precision_factor(Kc, counts, 0.0) is None


def test_the_eigenvalue_route_gives_the_cholesky_numbers(monkeypatch):
    # Where N^1/2 Kc N^1/2 + dI is singular in floating point the scan falls
    # back to the clipped eigenvalues (gram_factor); elsewhere both routes
    # are the same test.
    from cmlm_cli import scan

    model, labels, G = _structured_model()
    cholesky = scan.Scanner(model)
    assert cholesky._lower
    monkeypatch.setattr(scan, "precision_factor", lambda *args: None)
    eigen = scan.Scanner(model)
    assert not eigen._lower
    a, b = cholesky.scan(G), eigen.scan(G)
    tested = np.isfinite(a.p)
    np.testing.assert_array_equal(np.isfinite(b.p), tested)
    np.testing.assert_allclose(b.p[tested], a.p[tested], rtol=1e-11)
    np.testing.assert_allclose(b.beta[tested], a.beta[tested], rtol=1e-11)


def test_ties_within_rounding_go_to_fewer_groups():
    from types import SimpleNamespace

    from cmlm_cli.compression import choose

    values = [2457.817266, 2457.817266 * (1 + 2e-16), 2457.817266 * (1 - 1e-16), 2460.0]
    levels = [SimpleNamespace(model=SimpleNamespace(neg2logL=v, vg=1.0)) for v in values]
    assert choose(levels) == 2


def test_triangular_product_is_blas_dtrmm_to_the_bit():
    import scipy.linalg.blas

    from cmlm_cli.scan import triangular_product

    rng = np.random.default_rng(12)
    R = np.asfortranarray(rng.normal(size=(37, 37)))
    B = np.asfortranarray(rng.normal(size=(37, 11)))
    expected = scipy.linalg.blas.dtrmm(1.0, R, B)
    got = triangular_product(R, B.copy(order="F"))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got, np.triu(R) @ B, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="Fortran-ordered float64"):
        triangular_product(R, np.ascontiguousarray(B))
    with pytest.raises(ValueError, match="shape"):
        triangular_product(R[:5, :5].copy(order="F"), B.copy(order="F"))


@pytest.mark.parametrize("singular", [False, True])
def test_gram_factor_is_a_triangular_root_of_the_gram_matrix(singular):
    # Rows scaled over 1e-3..1e3 as diag(1/(s+d))^1/2 scales them at small d;
    # a zero column makes F'F singular and takes the QR route.
    from cmlm_cli.scan import gram_factor

    rng = np.random.default_rng(13)
    F = rng.normal(size=(30, 30)) * np.logspace(-3, 3, 30)[:, None]
    if singular:
        F[:, 4] = 0.0
    R = gram_factor(F)
    np.testing.assert_array_equal(R, np.triu(R))
    gram = F.T @ F
    assert np.abs(R.T @ R - gram).max() <= 1e-14 * np.abs(gram).max()
    g = rng.integers(0, 60, size=(30, 8)).astype(float)
    np.testing.assert_allclose(((R @ g) ** 2).sum(0), ((F @ g) ** 2).sum(0), rtol=1e-12)


@pytest.mark.parametrize(("log_d", "rtol"), [(-10.0, 1e-11), (-5.0, 1e-13), (0.0, 1e-14)])
def test_group_part_keeps_its_digits_at_h2_near_one(log_d, rtol):
    # q = n singleton groups, a singular VanRaden kinship and d down to
    # e^-10, the lower end of the search: B + dI (B = N^1/2 Kc N^1/2) has a
    # condition number of ~1e7 there. The scan's group part of x'H^-1x, from
    # the inverse Cholesky factor, against x'(B + dI)^-1 x solved with
    # residuals in long double (iterative refinement): 3-7e-12 off at
    # d = e^-10, 3e-14 at e^-5, where the route through the eigenvectors is
    # 7e-12 and 5e-14 off.
    import dataclasses

    from cmlm_cli.scan import Scanner

    rng = np.random.default_rng(15)
    n, m = 300, 400
    pop = rng.integers(0, 3, n)
    freq = rng.beta(0.5, 0.5, size=(3, m))
    G = rng.binomial(2, freq[pop]).astype(float)
    W = G[:, :300] - G[:, :300].mean(0)
    K = W @ W.T / W.shape[1]
    labels = rng.permutation(n)
    Kc = np.empty_like(K)
    Kc[np.ix_(labels, labels)] = K
    X = np.column_stack([np.ones(n), pop == 1])
    y = W[:, :40].sum(1) + rng.normal(size=n)
    model = dataclasses.replace(fit_null(y, X, labels, Kc), delta=float(np.exp(log_d)))
    scanner = Scanner(model)
    stats = scanner.statistics(G[:, 300:])
    sums = np.asfortranarray(stats.group_sums - stats.group_sums.mean(0))
    _, _, e = scanner._quadratic_forms(sums, stats.dots, stats.ssw)
    B = Kc + model.delta * np.eye(n)  # N = I
    solution = np.linalg.solve(B, sums)
    for _ in range(3):
        residual = sums - B.astype(np.longdouble) @ solution.astype(np.longdouble)
        solution += np.linalg.solve(B, residual.astype(np.float64))
    expected = (sums * solution).sum(0)
    np.testing.assert_allclose(e - stats.ssw / scanner.d, expected, rtol=rtol)


def test_blocks_across_tiles_change_nothing():
    # More SNPs than one tile: whole tiles are views of the block's group
    # sums, the last one is padded; a SNP's numbers must not depend on which
    # tile it falls in, nor where in it. The statistics are sliced as the
    # packed path makes them (Fortran order), so only the test itself runs
    # on different blocks.
    from dataclasses import fields

    from cmlm_cli.packed import Statistics
    from cmlm_cli.scan import TILE, Scanner

    rng = np.random.default_rng(16)
    n, q, m = 120, 40, 2 * TILE + 190
    labels = rng.permutation(np.arange(n) % q)
    A = rng.normal(size=(q, q))
    X = np.column_stack([np.ones(n), rng.normal(size=n)])
    y = rng.normal(size=n) + np.repeat(rng.normal(size=q), n // q)[labels]
    scanner = Scanner(fit_null(y, X, labels, A @ A.T / q))
    G = rng.binomial(2, rng.uniform(0.05, 0.5, m), size=(n, m)).astype(float)
    G[rng.random(G.shape) < 0.02] = np.nan
    stats = scanner.statistics(G)
    stats = Statistics(**{**vars(stats), "group_sums": np.asfortranarray(stats.group_sums)})
    whole = scanner.test(stats)
    parts = []
    for a, b in ((0, 1), (1, 300), (300, TILE + 300), (TILE + 300, m)):
        part = {f.name: getattr(stats, f.name)[..., a:b] for f in fields(Statistics)}
        parts.append(scanner.test(Statistics(**part)))
    for field in ("beta", "se", "t", "p"):
        joined = np.concatenate([getattr(part, field) for part in parts])
        np.testing.assert_array_equal(joined, getattr(whole, field), err_msg=field)


def _structured_model(n=240, q=60, seed=21, intercept=True):
    """A fitted compressed model of a small structured panel, and its SNPs."""
    rng = np.random.default_rng(seed)
    pop = rng.integers(0, 3, n)
    freq = rng.beta(0.5, 0.5, size=(3, 500))
    G = rng.binomial(2, freq[pop]).astype(float)
    G[rng.random(G.shape) < 0.02] = np.nan
    W = np.nan_to_num(G[:, :300] - np.nanmean(G[:, :300], 0))
    labels = rng.permutation(np.arange(n) % q)
    Z = np.eye(q)[labels]
    Kc = np.linalg.pinv(Z) @ (W @ W.T / 300) @ np.linalg.pinv(Z).T
    covariate = (pop == 1) + 0.1 * rng.normal(size=n)
    X = np.column_stack([np.ones(n), covariate]) if intercept else covariate[:, None] + 2.0
    y = W[:, :40].sum(1) / 4 + rng.normal(size=n) + pop
    return fit_null(y, X, labels, Kc), labels, G[:, 300:]


def test_float32_products_move_log10_p_by_little():
    # --scan-precision float32: the q x q product in single precision, summed
    # in double, of centred group sums. Against float64 (itself checked
    # against the dense oracle) log10 p moves by ~1e-8 here, 3e-7 at most on
    # the M benchmark panel (q = 5,000, 200,000 SNPs).
    import oracle

    from cmlm_cli.scan import Scanner

    model, labels, G = _structured_model()
    a = Scanner(model, precision="float64").scan(G)
    b = Scanner(model, precision="float32").scan(G)
    H = oracle.h_matrix(model.delta, labels, model.Kc)
    dense = oracle.dense_scan(model.y, model.X, H, G, sigma2=model.vg)
    tested = np.isfinite(a.p)
    np.testing.assert_allclose(a.p[tested], dense.p[tested], rtol=1e-9)
    gap = np.abs(np.log10(a.p[tested]) - np.log10(b.p[tested]))
    assert 0 < gap.max() < 1e-5
    np.testing.assert_array_equal(np.isfinite(b.p), tested)


def test_auto_precision_follows_the_number_of_groups(monkeypatch):
    from cmlm_cli import choices
    from cmlm_cli.scan import Scanner

    model, _, G = _structured_model()
    assert Scanner(model).precision == "float64"
    assert Scanner(model, precision="auto").precision == "float64"
    monkeypatch.setattr(choices, "FLOAT32_ABOVE", model.q - 1)
    auto = Scanner(model, precision="auto")
    assert auto.precision == "float32"
    np.testing.assert_array_equal(auto.scan(G).p, Scanner(model, precision="float32").scan(G).p)
    with pytest.raises(ValueError, match="unknown precision"):
        Scanner(model, precision="half")


@pytest.mark.parametrize("intercept", [True, False])
def test_centred_group_sums_change_no_test(intercept):
    # The group sums are centred when a constant lies in the span of X (P
    # takes it out); a model without one is scanned as it is. Either way the
    # numbers are those of the uncentred algebra.
    from cmlm_cli.scan import Scanner

    model, _, G = _structured_model(intercept=intercept)
    scanner = Scanner(model)
    assert scanner._subtract_mean == intercept
    plain = Scanner(model)
    plain._subtract_mean = False
    a, b = scanner.scan(G), plain.scan(G)
    np.testing.assert_allclose(a.p, b.p, rtol=1e-10)
    np.testing.assert_allclose(a.beta, b.beta, rtol=1e-10)


def test_triangular_product_in_float32_is_blas_strmm_to_the_bit():
    import scipy.linalg.blas

    from cmlm_cli.scan import triangular_product

    rng = np.random.default_rng(22)
    R = np.asfortranarray(rng.normal(size=(29, 29)), dtype=np.float32)
    B = np.asfortranarray(rng.normal(size=(29, 7)), dtype=np.float32)
    np.testing.assert_array_equal(
        triangular_product(R, B.copy(order="F")), scipy.linalg.blas.strmm(1.0, R, B)
    )
    with pytest.raises(ValueError, match="of R's dtype"):
        triangular_product(R, B.astype(np.float64, order="F"))

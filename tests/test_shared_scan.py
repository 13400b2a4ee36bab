"""Many traits, one eigenbasis (:mod:`cmlm_cli.shared_scan`): the numbers of the single-trait scan.

- :class:`SharedScanner` against each trait's :class:`Scanner` and the dense
  oracle (explicit n x n H, a GLS fit per SNP), for compressed and
  singleton groups, both variances and imputations, a trait at h2 = 0;
- the pipeline: any subset of traits gives each trait the p-values of its
  run alone (hypothesis), whichever route it took;
- block size, thread count and the order of the traits change no byte;
  chunks and merge write the serial run's bytes (Dask: tests/test_dask.py);
- the eigenbasis from the fit's tridiagonal reduction is the one made again
  from the saved fit, to the bit.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from oracle import dense_scan, h_matrix

from cmlm_cli import api, null_model
from cmlm_cli.association import make_scans, scan_traits
from cmlm_cli.chunks import run_fit, run_merge, run_scan
from cmlm_cli.null_model import CompressedBasis, fit_null, null_model_at
from cmlm_cli.options import GwasOptions
from cmlm_cli.pipeline import run_gwas
from cmlm_cli.scan import Scanner
from cmlm_cli.shared_scan import SHARE_MIN, SharedScanner

DATA = Path(__file__).resolve().parent.parent / "data"
TRAITS = ("t1", "t2", "t3", "t4", "t5")


def panel(q: int, seed: int = 3):
    """60 individuals in q groups, 4 traits on them, covariates, 9 SNPs (one monomorphic)."""
    rng = np.random.default_rng(seed)
    n = 60
    labels = np.arange(n) % q
    A = rng.normal(size=(q, q + 5))
    Kc = A @ A.T / (q + 5)
    X = np.column_stack([np.ones(n), rng.normal(size=n), rng.integers(0, 2, n)])
    u = rng.multivariate_normal(np.zeros(q), Kc)[labels]
    Y = (X @ [1.0, 0.5, -0.3])[:, None] + np.column_stack(
        [s * u + rng.normal(size=n) for s in (2.0, 1.0, 0.5, 0.0)]
    )
    G = rng.binomial(2, rng.uniform(0.1, 0.9, 9), size=(n, 9)).astype(float)
    G[rng.random(G.shape) < 0.05] = np.nan
    G[:, 4] = 1.0  # monomorphic
    G[:, 0] += 0.5 * u / np.std(u)  # a SNP with an effect
    G[:, 0] = np.clip(np.round(G[:, 0]), 0, 2)
    return Y, X, labels, Kc, G


@pytest.mark.parametrize("q", [12, 60])
@pytest.mark.parametrize("variance", ["null", "refit"])
@pytest.mark.parametrize("impute", ["mean", "middle"])
def test_shared_equals_each_scanner_and_the_dense_oracle(q, variance, impute):
    Y, X, labels, Kc, G = panel(q)
    models = [fit_null(Y[:, t], X, labels, Kc) for t in range(Y.shape[1])]
    # One trait pinned at h2 = 0 (d = inf, H = I), as a fit can end.
    models[3] = null_model_at(Y[:, 3], X, labels, Kc, np.inf)
    shared = SharedScanner(models, impute=impute, variance=variance).scan(G)
    for t, model in enumerate(models):
        alone = Scanner(model, impute=impute, variance=variance).scan(G)
        H = np.eye(60) if np.isinf(model.delta) else h_matrix(model.delta, labels, Kc)
        dense = dense_scan(model.y, X, H, G, sigma2=model.h_scale, variance=variance,
                           impute_with=impute)
        res = shared[t]
        for name in ("beta", "se", "t", "p", "r2_with", "r2_without"):
            a, b, c = getattr(res, name), getattr(alone, name), getattr(dense, name)
            assert np.array_equal(np.isnan(a), np.isnan(b)), name
            assert np.array_equal(np.isnan(a), np.isnan(c)), name
            ok = np.isfinite(a)
            assert ok.sum() == 8
            np.testing.assert_allclose(a[ok], b[ok], rtol=1e-8, atol=1e-12, err_msg=name)
            np.testing.assert_allclose(a[ok], c[ok], rtol=1e-8, atol=1e-12, err_msg=name)
        assert np.array_equal(res.n_miss, alone.n_miss)
        assert np.array_equal(res.af, alone.af, equal_nan=True)


def test_models_must_share_the_basis():
    Y, X, labels, Kc, _ = panel(12)
    a = fit_null(Y[:, 0], X, labels, Kc)
    b = fit_null(Y[:, 1], X[:, :2], labels, Kc)
    with pytest.raises(ValueError, match="same groups, Kc and X"):
        SharedScanner([a, b])


@pytest.fixture(scope="module")
def traits_file(tmp_path_factory) -> Path:
    """Five traits on every maize line (a genetic part along the kinship's top axes)."""
    rng = np.random.default_rng(11)
    fam = [line.split() for line in (DATA / "mdp.fam").read_text().splitlines()]
    values = rng.normal(size=(len(fam), len(TRAITS)))
    values[:, :3] += rng.normal(size=(len(fam), 1)) * np.array([1.0, 0.7, 0.4])
    path = tmp_path_factory.mktemp("traits") / "five.tsv"
    lines = ["FID\tIID\t" + "\t".join(TRAITS)]
    lines += [f"{f[0]}\t{f[1]}\t" + "\t".join(f"{v:.6f}" for v in row)
              for f, row in zip(fam, values, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def fitted(traits_file):
    options = GwasOptions(groups="120", plots=False)
    inputs = api.load(str(DATA / "mdp"), str(traits_file), options)
    return options, inputs, api.fit(inputs, options)


def p_values(fits, inputs, options):
    blocks = list(scan_traits(fits, inputs, options))
    return [np.concatenate([res[k].p for _, res in blocks]) for k in range(len(fits))]


@settings(max_examples=12, deadline=None)
@given(st.lists(st.sampled_from(range(len(TRAITS))), min_size=1, max_size=5, unique=True))
def test_any_subset_gives_each_trait_its_p_values_alone(fitted, subset):
    options, inputs, fits = fitted
    chosen = [fits[k] for k in subset]
    together = p_values(chosen, inputs, options)
    routes = make_scans([f.model for f in chosen], [f.analysed for f in chosen], options)
    assert any(isinstance(s, SharedScanner) for s in routes.sets) == (len(subset) >= SHARE_MIN)
    for fit, p in zip(chosen, together, strict=True):
        (alone,) = p_values([fit], inputs, options)
        assert np.array_equal(np.isnan(p), np.isnan(alone))
        ok = np.isfinite(p)
        np.testing.assert_allclose(p[ok], alone[ok], rtol=1e-8)


def sumstats_bytes(out: Path) -> dict[str, bytes]:
    return {t: (out.parent / f"{out.name}.{t}.sumstats.tsv").read_bytes() for t in TRAITS}


def test_block_size_threads_and_trait_order_change_no_byte(traits_file, tmp_path, caplog):
    base = GwasOptions(groups="120", plots=False, blup=False)
    with caplog.at_level(logging.INFO, logger="cmlm"):
        run_gwas(str(DATA / "mdp"), str(traits_file), str(tmp_path / "a"), base)
    assert "5 traits share one eigenbasis of their 120 x 120 group kinship" in caplog.text
    reference = sumstats_bytes(tmp_path / "a")
    for k, options in enumerate([
        dataclasses.replace(base, block_size=317, threads=1),
        dataclasses.replace(base, block_size=1024, threads=2),
        dataclasses.replace(base, pheno_names=tuple(reversed(TRAITS))),
    ]):
        run_gwas(str(DATA / "mdp"), str(traits_file), str(tmp_path / f"b{k}"), options)
        assert sumstats_bytes(tmp_path / f"b{k}") == reference, options


def test_chunks_and_merge_write_the_serial_bytes(traits_file, tmp_path):
    options = GwasOptions(groups="120", plots=False, block_size=500)
    run_gwas(str(DATA / "mdp"), str(traits_file), str(tmp_path / "one" / "r"), options)
    fit = run_fit(str(DATA / "mdp"), str(traits_file), str(tmp_path / "two" / "r"), options)
    for k in (1, 2, 3):
        run_scan(fit, str(tmp_path / "two" / "r"), chunk=f"{k}/3")
    run_merge(fit, str(tmp_path / "two" / "r"), chunks=3)
    assert sumstats_bytes(tmp_path / "two" / "r") == sumstats_bytes(tmp_path / "one" / "r")


def test_exact_set_gives_each_trait_its_scan_alone_to_the_bit(fitted):
    # --exact: one rotation per block for the set, each trait's own search.
    options, inputs, fits = fitted
    exact = dataclasses.replace(options, exact=True)
    subset = fits[:3]
    routes = make_scans([f.model for f in subset], [f.analysed for f in subset], exact)
    assert [type(s).__name__ for s in routes.sets] == ["SharedExactScanner"]
    blocks = list(scan_traits(subset, inputs, exact, snps=inputs.snps[:1500]))
    for k, fit in enumerate(subset):
        alone = list(scan_traits([fit], inputs, exact, snps=inputs.snps[:1500]))
        for (_, together), (_, (single,)) in zip(blocks, alone, strict=True):
            for name in ("beta", "se", "p", "r2_with"):
                assert np.array_equal(getattr(together[k], name), getattr(single, name),
                                      equal_nan=True), name


def test_the_fits_reduction_gives_the_eigenbasis_made_again_to_the_bit(
    traits_file, tmp_path, monkeypatch
):
    # Levels of 2 groups and more keep their tridiagonal reduction (as q >= 256
    # do in a real run): the eigenvectors a set's scan asks for come from it,
    # W = Q V, the same numbers to the bit as from a model without it (a
    # saved fit, whose reduction is not written), and the full decomposition's
    # eigenpairs to rounding.
    monkeypatch.setattr(null_model, "FACTORED_MIN_Q", 2)
    options = GwasOptions(groups="120", plots=False, block_size=500)
    inputs = api.load(str(DATA / "mdp"), str(traits_file), options)
    fits = api.fit(inputs, options)
    model = fits[0].model
    assert model.reduction is not None
    decompositions = []
    decompose = null_model._Tridiagonal.decompose

    def counted(B):
        decompositions.append(B.shape)
        return decompose(B)

    monkeypatch.setattr(null_model._Tridiagonal, "decompose", staticmethod(counted))
    reused = model.basis(vectors=True)
    assert decompositions == []  # not reduced again
    again = dataclasses.replace(model, reduction=None).basis(vectors=True)
    assert decompositions == [(model.q, model.q)]
    assert np.array_equal(reused.W, again.W)
    assert np.array_equal(reused.s, again.s)
    full = CompressedBasis.build(model.labels, model.Kc)
    root = np.sqrt(model.counts)
    B = root[:, None] * model.Kc * root[None, :]
    scale = full.s.max()
    assert np.max(np.abs(reused.s - full.s)) <= 1e-12 * scale
    assert np.max(np.abs(reused.W.T @ reused.W - np.eye(model.q))) < 1e-12
    assert np.max(np.abs((reused.W * reused.s) @ reused.W.T - B)) < 1e-12 * scale
    # The serial run reuses the fit's reduction; the chunks, from the saved
    # fit, make it again: the same bytes.
    run_gwas(str(DATA / "mdp"), str(traits_file), str(tmp_path / "one" / "r"), options)
    fit = run_fit(str(DATA / "mdp"), str(traits_file), str(tmp_path / "two" / "r"), options)
    with np.load(fit) as archive:
        assert not [key for key in archive.files if "reduction" in key]
    for k in (1, 2):
        run_scan(fit, str(tmp_path / "two" / "r"), chunk=f"{k}/2")
    run_merge(fit, str(tmp_path / "two" / "r"), chunks=2)
    assert sumstats_bytes(tmp_path / "two" / "r") == sumstats_bytes(tmp_path / "one" / "r")

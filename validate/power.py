"""Power of GLM, GLM + PCs, MLM, CMLM, ECMLM, FarmCPU and BLINK on real genotypes (issues 13, 17).

As Zhang et al. (2010, Nat Genet 42:355) compared the models: traits are
simulated on the genotypes of real panels, every replicate is analysed by the
``cmlm gwas`` command as a user runs it, and each model's power is read at a
fixed *empirical* type I error, so that a model whose p-values are inflated by
population structure gets no credit for the inflation.

Panels (both in the repository)
-------------------------------
- ``maize``: ``data/mdp``, 281 inbred lines x 3,093 SNPs (strong structure);
- ``mouse``: ``tests/data/mouse_hs1940/mouse_hs1814``, 1,814 heterogeneous-stock
  mice x 10,074 SNPs (close relatives and long LD; no structure term added).

Generative model
----------------
For one setting (panel, h2, k QTNs) and replicate r, with X the n x m
genotype dosages (0/1/2; a missing call replaced by the SNP's mean, for the
simulation only; the GWAS reads the .bed itself) and Z = X minus its column
means:

1. the QTN set Q_r: k distinct SNPs drawn uniformly, without replacement,
   among the panel's polymorphic SNPs (those whose imputed dosage varies);
2. effects b_r ~ N(0, I_k); the genetic value g_r = Z[:, Q_r] b_r, rescaled
   so that its sample variance (divisor n) is exactly h2;
3. for the maize only, a population-structure term s_r = U w_r, with U the top
   3 left singular vectors of the standardised polymorphic genotypes (each
   column of Z over its standard deviation) and w_r ~ N(0, I_3), rescaled to
   sample variance exactly S = 0.2 (S = 0 for the mouse: no term);
4. a residual e_r ~ N(0, (1 - h2 - S) I_n), not rescaled;
5. y_r = g_r + s_r + e_r.

The components sum to unit variance in expectation; g_r and s_r are not made
orthogonal (a QTN may load on the PCs), so the share of var(y_r) that g_r
explains is h2 on average over replicates, not in every one. The structure
term lies in the span of the top PCs, so GLM without PCs is inflated on the
maize, while ``--pcs 3`` (the same PCs, up to cmlm's own standardisation) or a
kinship should absorb it.

Each setting's replicates are the columns rep1 ... repR of one phenotype table
(FID IID rep1 ...), so that one ``cmlm gwas`` run per model and setting
analyses all of them, with one kinship and one clustering tree. The tables
and outputs go to a temporary directory.

Measures (per model and setting)
--------------------------------
- the null p-values are those of every SNP that is not a QTN of its
  replicate, pooled over replicates; SNPs in LD with a QTN are among them (no
  window), so a model that detects a QTN also pays for its neighbours; the
  empirical threshold at type I error alpha is the floor(alpha N)-th smallest
  of the N pooled null p-values (see :func:`empirical_threshold`);
- a QTN counts as found if its own p-value is at most the threshold (no
  window around it); power = found / (k x replicates);
- power at the nominal Bonferroni threshold 0.05 / (SNPs tested);
- lambda_GC: median chi-square (1 df) of a replicate's null p-values over
  0.4549, then the median over replicates.

Usage::

    python validate/power.py                  # both panels, 100 replicates
    python validate/power.py --quick          # maize, 3 replicates, a few seconds
    python validate/power.py --models glm,mlm --replicates 20 --panels maize

Writes the Markdown table (``--out``, validate/power.md) and the curves of
power against empirical type I error (``--figure``, validate/power.png).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _load_calibration() -> ModuleType:
    """validate/run.py as a module (validate/ is no package), for its helpers."""
    name = "cmlm_validate_run"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


calibration = _load_calibration()


@dataclass(frozen=True)
class Panel:
    """A PLINK 1 fileset of the repository and the structure share of its traits."""

    name: str
    prefix: Path
    structure: float
    description: str


PANELS = {
    "maize": Panel("maize", ROOT / "data" / "mdp", 0.2,
                   "maize diversity panel data/mdp: 281 inbred lines x 3,093 SNPs"),
    "mouse": Panel("mouse", ROOT / "tests" / "data" / "mouse_hs1940" / "mouse_hs1814", 0.0,
                   "heterogeneous-stock mice tests/data/mouse_hs1940/mouse_hs1814: "
                   "1,814 mice x 10,074 SNPs"),
}

MODELS = {
    "glm": ["--model", "glm"],
    "glm+3PCs": ["--model", "glm", "--pcs", "3"],
    "mlm": ["--model", "mlm"],
    "cmlm": ["--model", "cmlm"],
    "ecmlm": ["--model", "ecmlm"],
    # The multi-locus models as GAPIT's users run them, with the PCs of the
    # structure term (GAPIT's PCA.total = 3); no kinship.
    "farmcpu+3PCs": ["--model", "farmcpu", "--pcs", "3"],
    "blink+3PCs": ["--model", "blink", "--pcs", "3"],
}
# `make power` (the study of Zhang et al. 2010, within its half-hour budget)
# runs the single-locus models; `make power-multilocus` adds FarmCPU and BLINK.
SINGLE_LOCUS = ("glm", "glm+3PCs", "mlm", "cmlm", "ecmlm")
LINE_STYLES: dict[str, dict[str, object]] = {
    "glm": {"color": "tab:blue", "lw": 1.3},
    "glm+3PCs": {"color": "tab:orange", "lw": 1.3},
    "mlm": {"color": "tab:green", "lw": 2.6, "alpha": 0.6},
    "cmlm": {"color": "tab:red", "lw": 1.3, "ls": "--"},
    "ecmlm": {"color": "black", "lw": 1.3, "ls": ":"},
    "farmcpu+3PCs": {"color": "tab:purple", "lw": 1.3},
    "blink+3PCs": {"color": "tab:brown", "lw": 1.3, "ls": "-."},
}
STRUCTURE_PCS = 3
ALPHAS = (1e-3, 1e-2)
# The curves' grid of empirical type I errors.
CURVE_ALPHAS = np.logspace(-4, 0, 41)
COMMON = ["--no-plots", "--no-blup", "-q"]
# Every setting draws from its own stream: a subset of the settings (--quick,
# --panels) gets the same traits as the full study.
H2_CODE = 1000


@dataclass(frozen=True)
class Setting:
    """One (panel, h2, QTN count) cell of the study."""

    panel: str
    h2: float
    n_qtn: int

    @property
    def label(self) -> str:
        return f"{self.panel} h2={self.h2:g} QTN={self.n_qtn}"

    @property
    def slug(self) -> str:
        return f"{self.panel}_h{round(self.h2 * 100)}_q{self.n_qtn}"


@dataclass
class Traits:
    """Simulated replicates of one setting.

    Attributes
    ----------
    y : ndarray, shape (n, R)
        Phenotypes, one column per replicate.
    genetic, structure : ndarray, shape (n, R)
        The QTN term g and the population-structure term s of each replicate.
    qtn : ndarray of int, shape (R, k)
        Column indices (in the .bim order) of each replicate's QTNs.
    effect : ndarray, shape (R, k)
        The QTN effects after scaling: genetic[:, r] = Z[:, qtn[r]] @ effect[r].
    """

    y: np.ndarray
    genetic: np.ndarray
    structure: np.ndarray
    qtn: np.ndarray
    effect: np.ndarray


@dataclass
class Result:
    """One ``cmlm gwas`` run: p-values of every replicate and its wall time.

    Attributes
    ----------
    p : ndarray, shape (R, m)
        p-values in the .bim order; NaN where cmlm tested nothing.
    groups, n : ndarray, shape (R,)
        Groups of the chosen compression level and samples of each
        replicate's null model (OUT.TRAIT.model.json); NaN if not stated.
    seconds : float
    """

    p: np.ndarray
    groups: np.ndarray
    n: np.ndarray
    seconds: float


# ---------------------------------------------------------------- simulation


def read_genotypes(prefix: Path) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Dosages of a PLINK 1 fileset, with its sample and SNP ids.

    Returns
    -------
    X : ndarray, shape (n, m)
        float64 allele counts, NaN where missing.
    fid, iid : list of str, length n
    snp : list of str, length m
    """
    from bed_reader import open_bed

    with open_bed(f"{prefix}.bed") as bed:
        X = bed.read(dtype="float64")
        fid = [str(x) for x in bed.fid]
        iid = [str(x) for x in bed.iid]
        snp = [str(x) for x in bed.sid]
    return X, fid, iid, snp


def centred_genotypes(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean-imputed, centred dosages and which SNPs are polymorphic.

    Parameters
    ----------
    X : ndarray, shape (n, m)
        Dosages, NaN where missing.

    Returns
    -------
    Z : ndarray, shape (n, m)
        X minus its column means, missing calls at 0 (the mean).
    polymorphic : ndarray of bool, shape (m,)
        Columns of Z that are not constant (an all-missing column is not).
    """
    observed = np.isfinite(X)
    counts = observed.sum(axis=0)
    means = np.where(observed, X, 0.0).sum(axis=0) / np.maximum(counts, 1)
    Z = np.where(observed, X - means, 0.0)
    polymorphic = Z.var(axis=0) > 1e-12
    return Z, polymorphic


def structure_axes(Z: np.ndarray, polymorphic: np.ndarray, n_pcs: int) -> np.ndarray:
    """Top principal axes of the standardised polymorphic genotypes.

    Parameters
    ----------
    Z : ndarray, shape (n, m)
    polymorphic : ndarray of bool, shape (m,)
    n_pcs : int

    Returns
    -------
    U : ndarray, shape (n, n_pcs)
        Orthonormal columns: the top left singular vectors.
    """
    W = Z[:, polymorphic]
    W = W / W.std(axis=0)
    U, _, _ = np.linalg.svd(W, full_matrices=False)
    return np.ascontiguousarray(U[:, :n_pcs])


def _scaled(values: np.ndarray, variance: float) -> np.ndarray:
    """``values`` (shape (n,)) centred and scaled to this sample variance (divisor n)."""
    centred = values - values.mean()
    return centred * np.sqrt(variance / centred.var())


def simulate_traits(
    Z: np.ndarray,
    polymorphic: np.ndarray,
    *,
    h2: float,
    n_qtn: int,
    replicates: int,
    rng: np.random.Generator,
    axes: np.ndarray | None = None,
    structure: float = 0.0,
) -> Traits:
    """Replicates of the module's generative model on one panel.

    Parameters
    ----------
    Z : ndarray, shape (n, m)
        Centred, mean-imputed dosages (:func:`centred_genotypes`).
    polymorphic : ndarray of bool, shape (m,)
        SNPs a QTN may be drawn from.
    h2 : float
        Sample variance of the QTN term (of a unit phenotypic variance).
    n_qtn : int
        QTNs per replicate.
    replicates : int
    rng : numpy.random.Generator
    axes : ndarray, shape (n, p), optional
        Orthonormal structure axes (:func:`structure_axes`); needed if
        ``structure`` > 0.
    structure : float
        Sample variance of the structure term.

    Returns
    -------
    Traits
    """
    if not (0 < h2 and h2 + structure < 1):
        msg = f"h2 {h2} and structure {structure} must be positive and sum below 1"
        raise ValueError(msg)
    if structure > 0 and axes is None:
        msg = "a structure share needs the structure axes"
        raise ValueError(msg)
    n = Z.shape[0]
    candidates = np.flatnonzero(polymorphic)
    if n_qtn > candidates.size:
        msg = f"{n_qtn} QTNs but only {candidates.size} polymorphic SNPs"
        raise ValueError(msg)
    y = np.empty((n, replicates))
    genetic = np.empty((n, replicates))
    shift = np.zeros((n, replicates))
    qtn = np.empty((replicates, n_qtn), dtype=np.int64)
    effect = np.empty((replicates, n_qtn))
    for r in range(replicates):
        # Sorted, so that the QTN columns read in the .bim order.
        qtn[r] = np.sort(rng.choice(candidates, size=n_qtn, replace=False))
        raw = rng.standard_normal(n_qtn)
        g = Z[:, qtn[r]] @ raw
        factor = np.sqrt(h2 / g.var())
        # Z is centred, so g is too and the scaling is a factor on the effects.
        effect[r] = raw * factor
        genetic[:, r] = g * factor
        if structure > 0:
            assert axes is not None
            shift[:, r] = _scaled(axes @ rng.standard_normal(axes.shape[1]), structure)
        residual = rng.standard_normal(n) * np.sqrt(1.0 - h2 - structure)
        y[:, r] = genetic[:, r] + shift[:, r] + residual
    return Traits(y=y, genetic=genetic, structure=shift, qtn=qtn, effect=effect)


def setting_rng(seed: int, setting: Setting) -> np.random.Generator:
    """The random stream of one setting, independent of which others run."""
    panel_code = list(PANELS).index(setting.panel)
    return np.random.default_rng([seed, panel_code, round(setting.h2 * H2_CODE), setting.n_qtn])


def write_phenotypes(path: Path, fid: Sequence[str], iid: Sequence[str], y: np.ndarray) -> None:
    """The replicates as one table: FID IID rep1 ... repR, tab-separated.

    Parameters
    ----------
    path : Path
    fid, iid : sequence of str, length n
    y : ndarray, shape (n, R)
    """
    names = [f"rep{r + 1}" for r in range(y.shape[1])]
    lines = ["\t".join(["FID", "IID", *names])]
    for i in range(y.shape[0]):
        lines.append("\t".join([fid[i], iid[i], *(f"{v:.10g}" for v in y[i])]))
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- cmlm runs


def offered_models() -> list[str]:
    """The ``--model`` choices that ``cmlm gwas --help`` lists."""
    text = subprocess.run([sys.executable, "-m", "cmlm_cli", "gwas", "--help"], check=True,
                          capture_output=True, text=True).stdout
    found = re.search(r"--model \[([^\]]+)\]", text)
    if found is None:
        msg = "cmlm gwas --help lists no --model [a|b|...] choices"
        raise RuntimeError(msg)
    return found.group(1).split("|")


def check_models(models: Sequence[str]) -> None:
    """Fail, naming them, if requested models are unknown here or to cmlm."""
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        msg = f"unknown model(s) {', '.join(unknown)}; choose among {', '.join(MODELS)}"
        raise SystemExit(msg)
    offered = offered_models()
    missing = sorted({MODELS[m][1] for m in models} - set(offered))
    if missing:
        msg = (f"cmlm gwas does not offer --model {', '.join(missing)} (it offers "
               f"{'|'.join(offered)}); drop it with --models")
        raise SystemExit(msg)


def read_pvalues(path: Path, snp: Sequence[str]) -> np.ndarray:
    """The p_value column of an OUT.TRAIT.sumstats.tsv in the .bim order.

    Parameters
    ----------
    path : Path
    snp : sequence of str, length m
        The .bim's SNP ids.

    Returns
    -------
    p : ndarray, shape (m,)
        NaN for a SNP the file leaves out or gives as NA.
    """
    index = {name: j for j, name in enumerate(snp)}
    p = np.full(len(snp), np.nan)
    with open(path) as handle:
        columns = handle.readline().rstrip("\n").split("\t")
        kp, kid = columns.index("p_value"), columns.index("variant_id")
        last = max(kp, kid)
        for line in handle:
            fields = line.rstrip("\n").split("\t", last + 1)
            if fields[kp] != "NA":
                p[index[fields[kid]]] = float(fields[kp])
    return p


def run_model(panel: Panel, pheno: Path, out: Path, options: Sequence[str],
              snp: Sequence[str], replicates: int) -> Result:
    """One ``cmlm gwas`` run on every replicate of a phenotype table.

    Parameters
    ----------
    panel : Panel
    pheno : Path
        Table of :func:`write_phenotypes`.
    out : Path
        Output prefix.
    options : sequence of str
        The model's options (:data:`MODELS`).
    snp : sequence of str, length m
    replicates : int

    Returns
    -------
    Result
        p of shape (replicates, m).
    """
    command = [sys.executable, "-m", "cmlm_cli", "gwas", "--bfile", str(panel.prefix),
               "--pheno", str(pheno), "--out", str(out), *options, *COMMON]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        msg = (f"cmlm gwas {' '.join(options)} failed (exit {done.returncode}) on "
               f"{panel.name}:\n{done.stderr.strip()}")
        raise SystemExit(msg)
    p = np.vstack([read_pvalues(Path(f"{out}.rep{r + 1}.sumstats.tsv"), snp)
                   for r in range(replicates)])
    groups, n = np.full(replicates, np.nan), np.full(replicates, np.nan)
    for r in range(replicates):
        path = Path(f"{out}.rep{r + 1}.model.json")
        if not path.exists():
            continue  # FarmCPU and BLINK fit no null model (OUT.TRAIT.qtns.tsv instead)
        model = json.loads(path.read_text())
        groups[r] = model.get("groups") or np.nan
        n[r] = model.get("n") or np.nan
    return Result(p=p, groups=groups, n=n, seconds=seconds)


# ---------------------------------------------------------------- measures


def empirical_threshold(null: np.ndarray, alpha: float) -> float:
    """The p-value threshold at empirical type I error ``alpha``.

    The k-th smallest of the N null p-values, k = floor(alpha N): at most
    alpha N null p-values (more only with ties) are at or below it. With k = 0
    nothing may pass: -inf.

    Parameters
    ----------
    null : ndarray, shape (N,)
        Null p-values (non-finite ones are dropped).
    alpha : float

    Returns
    -------
    float

    Examples
    --------
    >>> empirical_threshold(np.array([0.5, 0.1, 0.9, 0.3, 0.7]), 0.4)
    0.3
    """
    null = np.sort(null[np.isfinite(null)])
    k = int(np.floor(alpha * null.size + 1e-9))
    return float(null[k - 1]) if k >= 1 else -np.inf


def null_mask(shape: tuple[int, int], qtn: np.ndarray) -> np.ndarray:
    """True where a SNP is not a QTN of its replicate; shape (R, m)."""
    mask = np.ones(shape, dtype=bool)
    rows = np.repeat(np.arange(shape[0]), qtn.shape[1])
    mask[rows, qtn.ravel()] = False
    return mask


def qtn_pvalues(p: np.ndarray, qtn: np.ndarray) -> np.ndarray:
    """Each replicate's QTN p-values: p[r, qtn[r]]; shape (R, k)."""
    return np.take_along_axis(p, qtn, axis=1)


@dataclass
class Measures:
    """A model's summary over one setting's replicates."""

    power: dict[float, float]
    bonferroni: float
    lambda_gc: float
    curve: np.ndarray  # power at CURVE_ALPHAS, shape (len(CURVE_ALPHAS),)
    # Median groups of the chosen level, and the share of replicates whose
    # level has fewer groups than samples (compressed); NaN for glm.
    groups: float = np.nan
    compressed: float = np.nan


def measure(p: np.ndarray, qtn: np.ndarray, groups: np.ndarray | None = None,
            n: np.ndarray | None = None) -> Measures:
    """Power at empirical and Bonferroni thresholds, and lambda_GC.

    Parameters
    ----------
    p : ndarray, shape (R, m)
        p-values, NaN where untested.
    qtn : ndarray of int, shape (R, k)
    groups, n : ndarray, shape (R,), optional
        Chosen groups and samples of each replicate (:class:`Result`).
    """
    mask = null_mask(p.shape, qtn)
    null = p[mask]
    hits = qtn_pvalues(p, qtn)
    # An untested QTN (NaN) is a QTN not found: NaN <= t is False.
    found = hits.ravel()
    power = {a: float(np.mean(found <= empirical_threshold(null, a))) for a in ALPHAS}
    curve = np.array([np.mean(found <= empirical_threshold(null, a)) for a in CURVE_ALPHAS])
    tested = np.isfinite(p).sum(axis=1, keepdims=True)
    bonferroni = float(np.mean(hits <= 0.05 / tested))
    lambdas = [calibration.lambda_gc(p[r][mask[r]]) for r in range(p.shape[0])]
    summary = Measures(power=power, bonferroni=bonferroni,
                       lambda_gc=float(np.median(lambdas)), curve=curve)
    if groups is not None and n is not None and np.isfinite(groups).all():
        summary.groups = float(np.median(groups))
        summary.compressed = float(np.mean(groups < n))
    return summary


# ---------------------------------------------------------------- report


def table(measures: dict[Setting, dict[str, Measures]],
          seconds: dict[Setting, dict[str, float]]) -> list[str]:
    """Markdown rows: one per setting and model."""
    rows = ["| panel | h2 | QTNs | model | power at 1e-3 | power at 1e-2 | "
            "power at Bonferroni | lambda_GC | groups (median) | compressed | cmlm run (s) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for setting, by_model in measures.items():
        for model, m in by_model.items():
            rows.append(
                f"| {setting.panel} | {setting.h2:g} | {setting.n_qtn} | {model} | "
                f"{m.power[1e-3]:.3f} | {m.power[1e-2]:.3f} | {m.bonferroni:.3f} | "
                f"{m.lambda_gc:.3f} | {_maybe(m.groups, '.0f')} | {_maybe(m.compressed, '.2f')} | "
                f"{seconds[setting][model]:.1f} |"
            )
    return rows


def _maybe(value: float, spec: str) -> str:
    """A number, or "-" where it does not apply (NaN)."""
    return "-" if not np.isfinite(value) else format(value, spec)


def draw(measures: dict[Setting, dict[str, Measures]], path: Path) -> None:
    """Power against empirical type I error, one panel per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(measures)
    ncols = min(4, len(settings))
    nrows = -(-len(settings) // ncols)
    fig, axs = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.7 * nrows), squeeze=False,
                            sharex=True, sharey=True)
    for ax, setting in zip(axs.ravel(), settings, strict=False):
        for model, m in measures[setting].items():
            # Dashed and dotted styles keep coinciding curves (cmlm on mlm) visible.
            ax.plot(CURVE_ALPHAS, m.curve, label=model, **LINE_STYLES.get(model, {}))
        ax.set_xscale("log")
        ax.set_ylim(0, 1)
        ax.set_title(setting.label, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axs.ravel()[len(settings):]:
        ax.set_visible(False)
    for ax in axs[-1]:
        ax.set_xlabel("empirical type I error")
    for ax in axs[:, 0]:
        ax.set_ylabel("power")
    axs[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ---------------------------------------------------------------- driver


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="maize, 3 replicates, h2 0.7, 10 QTNs, glm/mlm/cmlm (a smoke test)")
    parser.add_argument("--replicates", type=int, help="replicates per setting (default 100)")
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--panels", help=f"comma-separated subset of {','.join(PANELS)}")
    parser.add_argument("--h2", help="comma-separated heritabilities (default 0.3,0.7)")
    parser.add_argument("--qtns", help="comma-separated QTN counts (default 10,50)")
    parser.add_argument("--seed", type=int, default=2010)
    parser.add_argument("--out", default=str(HERE / "power.md"), help="Markdown table")
    parser.add_argument("--figure", default=str(HERE / "power.png"), help="PNG of the curves")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {
        "replicates": 3 if quick else 100,
        "models": "glm,mlm,cmlm" if quick else ",".join(SINGLE_LOCUS),
        "panels": "maize" if quick else ",".join(PANELS),
        "h2": "0.7" if quick else "0.3,0.7",
        "qtns": "10" if quick else "10,50",
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def command_line(args: argparse.Namespace, argv: list[str] | None) -> str:
    """The command as typed, without the output paths (they shape no number)."""
    words = list(sys.argv[1:] if argv is None else argv)
    kept: list[str] = []
    skip = False
    for word in words:
        if skip:
            skip = False
            continue
        if word in ("--out", "--figure"):
            skip = True
            continue
        if word.startswith(("--out=", "--figure=")):
            continue
        kept.append(word)
    return " ".join(["python validate/power.py", *kept])


def study_panel(panel: Panel, settings: Sequence[Setting], models: Sequence[str],
                replicates: int, seed: int, work: Path,
                ) -> list[tuple[dict[str, Measures], dict[str, float]]]:
    """Simulate each setting of one panel and run every model on it.

    Parameters
    ----------
    panel : Panel
    settings : sequence of Setting
        This panel's settings.
    models : sequence of str
        Keys of :data:`MODELS`.
    replicates, seed : int
    work : Path
        Scratch folder for the phenotype tables and outputs.

    Returns
    -------
    list of (measures by model, seconds by model), one per setting
    """
    X, fid, iid, snp = read_genotypes(panel.prefix)
    Z, polymorphic = centred_genotypes(X)
    # The PCs once per panel: every setting's structure term uses them.
    axes = structure_axes(Z, polymorphic, STRUCTURE_PCS) if panel.structure > 0 else None
    done = []
    for setting in settings:
        traits = simulate_traits(Z, polymorphic, h2=setting.h2, n_qtn=setting.n_qtn,
                                 replicates=replicates, rng=setting_rng(seed, setting),
                                 axes=axes, structure=panel.structure)
        pheno = work / f"{setting.slug}.pheno.tsv"
        write_phenotypes(pheno, fid, iid, traits.y)
        by_model, times = {}, {}
        for model in models:
            print(f"{setting.label}: cmlm gwas {' '.join(MODELS[model])}", flush=True)
            out = work / f"{setting.slug}.{model.replace('+', '_')}"
            result = run_model(panel, pheno, out, MODELS[model], snp, replicates)
            by_model[model] = measure(result.p, traits.qtn, result.groups, result.n)
            times[model] = result.seconds
            for child in work.glob(f"{out.name}.*"):
                child.unlink()  # the p-values are read; keep the scratch small
        done.append((by_model, times))
    return done


def main(argv: list[str] | None = None) -> Path:
    """Run the study; returns the Markdown file's path."""
    args = parse_args(argv)
    started = time.perf_counter()
    models = _list(args.models)
    panels = _list(args.panels)
    unknown = [p for p in panels if p not in PANELS]
    if unknown:
        msg = f"unknown panel(s) {', '.join(unknown)}; choose among {', '.join(PANELS)}"
        raise SystemExit(msg)
    check_models(models)
    settings = [Setting(panel, float(h2), int(k))
                for panel in panels for h2 in _list(args.h2) for k in _list(args.qtns)]
    measures: dict[Setting, dict[str, Measures]] = {}
    seconds: dict[Setting, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="cmlm-power-") as scratch:
        for name in panels:
            mine = [s for s in settings if s.panel == name]
            for setting, (by_model, times) in zip(
                    mine, study_panel(PANELS[name], mine, models, args.replicates, args.seed,
                                      Path(scratch)), strict=True):
                measures[setting], seconds[setting] = by_model, times
    total = time.perf_counter() - started
    figure = Path(args.figure)
    draw(measures, figure)
    text = report(args, argv, measures, seconds, total, figure)
    out_path = Path(args.out)
    out_path.write_text(text)
    print(text)
    print(f"wrote {out_path} and {figure}")
    return out_path


def report(args: argparse.Namespace, argv: list[str] | None,
           measures: dict[Setting, dict[str, Measures]],
           seconds: dict[Setting, dict[str, float]], total: float, figure: Path) -> str:
    """The Markdown file: settings, command, table, time."""
    panels = [PANELS[p] for p in _list(args.panels)]
    lines = [
        f"# Power on real genotypes ({', '.join(_list(args.models))})",
        "",
        f"Command: `{command_line(args, argv)}`",
        "",
        "Settings:",
        "",
        *(f"- {p.description}; structure term explaining {p.structure:g} of the variance"
          + (f" (along the top {STRUCTURE_PCS} PCs)" if p.structure > 0 else "")
          for p in panels),
        f"- h2 in {{{args.h2}}}, QTNs in {{{args.qtns}}}, {args.replicates} replicates per "
        f"setting, seed {args.seed}; generative model in the docstring of validate/power.py",
        f"- models: {', '.join(f'{m} (`{chr(32).join(MODELS[m])}`)' for m in _list(args.models))}"
        f"; every run `cmlm gwas --bfile PANEL --pheno TABLE --out PREFIX "
        f"{' '.join(COMMON)}` (all replicates of a setting in one run)",
        "- power at empirical type I error alpha: share of QTNs whose own p-value is at most "
        "the floor(alpha N)-th smallest of the model's N non-QTN p-values pooled over the "
        "replicates; Bonferroni: p <= 0.05 / SNPs tested; lambda_GC: median over replicates "
        "of the median non-QTN chi-square / 0.4549; groups: median group count of the "
        "chosen compression level, compressed: share of replicates whose level has fewer "
        "groups than samples; cmlm run: wall time of the one `cmlm gwas` run of all the "
        "replicates",
        "",
        *table(measures, seconds),
        "",
        f"Figure: `{figure.name}` (power against empirical type I error).",
        "",
        f"Total time {total:.0f} s ({os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}); cmlm runs by model: "
        + ", ".join(f"{m} {sum(by.get(m, 0.0) for by in seconds.values()):.0f} s"
                    for m in _list(args.models)
                    if any(m in by for by in seconds.values())) + ".",
        "",
        "## Reading (generated from the numbers above, whichever model wins)",
        "",
        *reading(measures, args.replicates),
        "",
    ]
    return "\n".join(lines)


def reading(measures: dict[Setting, dict[str, Measures]], replicates: int) -> list[str]:
    """Plain statements of the table: ranking, calibration, compression, noise.

    Parameters
    ----------
    measures : dict
        By setting, by model.
    replicates : int

    Returns
    -------
    list of str
        Markdown bullets.
    """
    lines = []
    for setting, by_model in measures.items():
        ranked = sorted(by_model, key=lambda m: -by_model[m].power[1e-3])
        best = by_model[ranked[0]].power[1e-3]
        # Binomial standard error of a power over k x R QTNs (models share the
        # replicates, so their differences are less noisy than this).
        se = np.sqrt(best * (1 - best) / (setting.n_qtn * replicates))
        shown = [f"{by_model[m].power[1e-3]:.3f}" for m in ranked]
        order = f"{ranked[0]} {shown[0]}" + "".join(
            f" {'=' if shown[i] == shown[i - 1] else '>'} {ranked[i]} {shown[i]}"
            for i in range(1, len(ranked)))
        lines.append(f"- {setting.label}: power at empirical 1e-3: {order} "
                     f"(binomial s.e. of the best {se:.3f})")
    for model in next(iter(measures.values())):
        lambdas = [by_model[model].lambda_gc for by_model in measures.values()
                   if model in by_model]
        lines.append(f"- {model}: median lambda_GC from {min(lambdas):.2f} to "
                     f"{max(lambdas):.2f} over the settings"
                     + ("; inflated (> 1.1) in some setting, so its nominal (Bonferroni) "
                        "power is credit for inflation" if max(lambdas) > 1.1 else "")
                     + ("; deflated (< 0.9) in some setting: conservative there"
                        if min(lambdas) < 0.9 else ""))
    for model in ("cmlm", "ecmlm"):
        shares = {st.label: by_model[model].compressed for st, by_model in measures.items()
                  if model in by_model and np.isfinite(by_model[model].compressed)}
        if shares:
            lines.append(f"- {model} chose a compressed level (fewer groups than samples) in "
                         + ", ".join(f"{v:.0%} ({k})" for k, v in shares.items())
                         + " of the replicates; where it chose none it is the MLM")
    return lines


if __name__ == "__main__":
    main()

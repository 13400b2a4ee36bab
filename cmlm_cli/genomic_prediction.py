"""Genomic prediction: BLUP tables from a saved fit, and k-fold cross-validation.

``cmlm predict`` (:func:`run_predict`) writes each trait's
``OUT.TRAIT.blup.tsv`` from ``OUT.fit.npz`` alone: the fit keeps every
trait's model and what predicting the samples outside it needs
(:class:`cmlm_cli.prediction.Targets`), so no genotype is read.

``cmlm cv`` (:func:`run_cv`) masks one fold of each trait's phenotyped
individuals at a time, refits the null model on the others (the whole
compression search, for the compressed model) and predicts the masked ones
as a breeder would predict unphenotyped lines: inferred from their group's
BLUP, or projected from their kinships to the training groups. As in
genomic-prediction practice the kinship, the principal components and the
clustering tree are computed once, from every genotyped individual: they
use no phenotype. The folds are a seeded random partition of each trait's
phenotyped individuals that depends on the seed and the sample IDs only, not
on the order of the files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from cmlm_cli import files, model_io, plots, tables
from cmlm_cli.compression import TraitResult, fit_traits, level_counts
from cmlm_cli.errors import CmlmError
from cmlm_cli.inputs import Inputs, TraitData, check_trait, fixed_names
from cmlm_cli.large import GroupedKinship
from cmlm_cli.options import GwasOptions
from cmlm_cli.outputs import trait_predictions, write_blup
from cmlm_cli.pipeline import prepare_inputs, relatedness, trait_designs
from cmlm_cli.progress import Stopwatch

log = logging.getLogger("cmlm")

DEFAULT_SEED = 1
CV_COLUMNS = ("repeat", "fold", "n_train", "n_test", "groups", "vg", "ve", "h2", "accuracy")
CV_PREDICTION_COLUMNS = ("FID", "IID", "repeat", "fold", "predicted", "observed")
CV_LEVEL_COLUMNS = ("repeat", "fold", "groups", "accuracy")


# --------------------------------------------------------------------------
# cmlm predict
# --------------------------------------------------------------------------


def saved_results(path: str, *, bfile: str | None = None) -> model_io.SavedFit:
    """A saved fit whose traits can all be predicted, or a one-line reason why not.

    Parameters
    ----------
    path : str
        ``OUT.fit.npz``.
    bfile : str, optional
        As in :func:`cmlm_cli.model_io.load_fit`.
    """
    saved = model_io.load_fit(path, bfile=bfile)
    for result in saved.results:
        if result.targets is not None:
            continue
        if saved.options.model == "glm":
            why = "it was fitted with --model glm, which has no random effects; refit with "
            why += "--model mlm or cmlm"
        elif not saved.options.blup:
            why = "it was fitted with --no-blup; refit without it"
        else:
            why = "it was saved by an earlier version of cmlm, before prediction; refit it "
            why += "with cmlm fit"
        msg = f"--null {path}: trait {result.name} cannot be predicted: {why}"
        raise CmlmError(msg)
    return saved


def keep_rows(keep: str | None, inputs: Inputs) -> np.ndarray | None:
    """Rows of the kept samples listed in ``--keep`` (None: all of them)."""
    if keep is None:
        return None
    wanted = tables.read_sample_list(keep)
    fid, iid = inputs.bfile.fid[inputs.samples], inputs.bfile.iid[inputs.samples]
    rows = np.flatnonzero(wanted.contains(fid, iid))
    if rows.size == 0:
        msg = (
            f"--keep {keep}: none of its {len(wanted)} samples is among the {fid.size} samples "
            "of the fit; list FID IID pairs (or IIDs) of the fitted .fam"
        )
        raise CmlmError(msg)
    if rows.size < len(wanted):
        log.info("--keep %s: %d of its samples are not in the fit", keep, len(wanted) - rows.size)
    return rows


def run_predict(
    null: str, out: str, *, keep: str | None = None, bfile: str | None = None
) -> list[str]:
    """``OUT.TRAIT.blup.tsv`` for every trait of a saved fit, with no genotype pass.

    Parameters
    ----------
    null : str
        ``OUT.fit.npz`` from ``cmlm fit``.
    out : str
        Output prefix.
    keep : str, optional
        Write only the rows of these samples (FID IID lines).
    bfile : str, optional
        The fitted fileset at another path (its .fam gives the IDs).

    Returns
    -------
    list of str
        The tables written, the same bytes as ``cmlm gwas`` and ``cmlm fit``
        wrote for the fit (without ``keep``).
    """
    files.check_out(out)
    saved = saved_results(null, bfile=bfile)
    rows = keep_rows(keep, saved.inputs)
    files.make_out_folder(out)
    return [write_blup(result, saved.inputs, out, rows=rows) for result in saved.results]


# --------------------------------------------------------------------------
# cmlm cv
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class CvSettings:
    """The cross-validation's own settings (the model's are a GwasOptions).

    Attributes
    ----------
    folds : int
        K of K-fold, at least 2.
    repeats : int
        Random partitions into folds, at least 1.
    seed : int
    by_level : bool
        Also predict every fold at each group count of the grid, fixed
        (``--cv-by-level``; compressed model only).
    """

    folds: int = 5
    repeats: int = 1
    seed: int = DEFAULT_SEED
    by_level: bool = False


@dataclass(frozen=True)
class TraitCv:
    """One trait's cross-validation, as arrays.

    Attributes
    ----------
    name : str
    sample, repeat, fold : ndarray, shape (r * n_a,), int
        Each prediction's row among the kept samples, repeat and fold
        (from 1), by repeat and then in .fam order.
    predicted, observed : ndarray, shape (r * n_a,)
        ``prediction`` of the BLUP table (:mod:`cmlm_cli.prediction`) of the
        masked individual, and its trait value.
    folds : dict of str to ndarray
        The columns of ``OUT.TRAIT.cv.tsv`` (:data:`CV_COLUMNS`) for every
        repeat and fold, without the summary rows.
    levels : dict of str to ndarray
        With ``by_level``: the columns of :data:`CV_LEVEL_COLUMNS`, one row
        per repeat, fold and group count; else empty arrays.
    """

    name: str
    sample: np.ndarray
    repeat: np.ndarray
    fold: np.ndarray
    predicted: np.ndarray
    observed: np.ndarray
    folds: dict[str, np.ndarray]
    levels: dict[str, np.ndarray]


def check_settings(settings: CvSettings, traits: Sequence[TraitData], options: GwasOptions) -> None:
    """Refuse settings that cannot run, naming the option and the fix."""
    if settings.folds < 2:
        msg = f"--folds {settings.folds}: cross-validation needs at least 2 folds"
        raise CmlmError(msg)
    if settings.repeats < 1:
        msg = f"--repeats {settings.repeats}: give at least 1 repeat"
        raise CmlmError(msg)
    for t in traits:
        if settings.folds > t.analysed.size:
            msg = (
                f"--folds {settings.folds}: trait {t.name} has only {t.analysed.size} "
                f"phenotyped individuals; give at most {t.analysed.size} folds"
            )
            raise CmlmError(msg)
    if options.enriched:
        msg = (
            f"cmlm cv fits one combination of kinship, clustering and group kinship; "
            f"{len(options.combinations)} were given (--model ecmlm or comma lists): give one "
            "of each"
        )
        raise CmlmError(msg)
    if settings.by_level and not options.compressed:
        msg = (
            f"--cv-by-level compares group counts of the compressed model; --model "
            f"{options.model} has none (use --model cmlm)"
        )
        raise CmlmError(msg)


def assign_folds(keys: Sequence[tuple[str, str]], folds: int, seed: int, repeat: int) -> np.ndarray:
    """Fold (0..folds-1) of each individual: a seeded, balanced random partition.

    The individuals are put in the order of their IDs first, so the folds
    depend on the seed, the repeat and the IDs only, never on file order.

    Parameters
    ----------
    keys : sequence of (FID, IID)
    folds, seed : int
    repeat : int
        From 0; each repeat draws its own partition.

    Returns
    -------
    ndarray, shape (len(keys),), int
        Fold sizes differ by at most one.

    Examples
    --------
    The same individuals in another order keep their folds:

    >>> keys = [("f", "b"), ("f", "a"), ("f", "c"), ("g", "a")]
    >>> folds = assign_folds(keys, 2, 1, 0)
    >>> again = assign_folds(keys[::-1], 2, 1, 0)
    >>> dict(zip(keys, folds.tolist())) == dict(zip(keys[::-1], again.tolist()))
    True
    >>> sorted(folds.tolist())
    [0, 0, 1, 1]
    """
    by_id = sorted(range(len(keys)), key=lambda i: keys[i])
    order = np.random.default_rng([seed, repeat]).permutation(len(keys))
    fold = np.empty(len(keys), dtype=np.int64)
    fold[np.asarray(by_id, dtype=np.int64)[order]] = np.arange(len(keys)) % folds
    return fold


def accuracy(predicted: np.ndarray, observed: np.ndarray) -> float:
    """Pearson r of predicted against observed; NaN when either is constant."""
    if predicted.size < 2 or np.ptp(predicted) == 0 or np.ptp(observed) == 0:
        return float("nan")
    return float(np.corrcoef(predicted, observed)[0, 1])


@contextlib.contextmanager
def _level_log_quiet() -> Iterator[None]:
    """Each fold's levels and dropped samples at DEBUG: hundreds of fits would bury the log."""
    logger = logging.getLogger("cmlm")
    saved = logger.level
    logger.setLevel(max(logging.WARNING, saved))
    try:
        yield
    finally:
        logger.setLevel(saved)


def cross_validate(
    inputs: Inputs, options: GwasOptions, settings: CvSettings, lap: Stopwatch | None = None
) -> list[TraitCv]:
    """K-fold cross-validation of every trait's genomic prediction, in memory.

    Parameters
    ----------
    inputs : Inputs
        From :func:`cmlm_cli.inputs.load_inputs` with ``options``.
    options : GwasOptions
        The model, as for ``cmlm gwas``.
    settings : CvSettings
    lap : Stopwatch, optional

    Returns
    -------
    list of TraitCv
        One per trait.

    Examples
    --------
    The MLM of EarHT on the maize panel, 5 folds:

    >>> options = GwasOptions(pheno_names=("EarHT",), model="mlm", impute="middle",
    ...                       plots=False)
    >>> from cmlm_cli import api
    >>> (cv,) = cross_validate(api.load("data/mdp", "data/mdp.pheno.tsv", options), options,
    ...                        CvSettings(folds=5, seed=1))
    >>> cv.predicted.size, sorted(set(cv.fold.tolist()))
    (279, [1, 2, 3, 4, 5])
    >>> 0.5 < float(np.mean(cv.folds["accuracy"])) < 0.8
    True
    """
    lap = lap or Stopwatch()
    options = dataclasses.replace(options, blup=True)
    rel, tree = relatedness(inputs, options, lap)
    traits = trait_designs(inputs, rel, options)
    check_settings(settings, traits, options)
    fid, iid = inputs.bfile.fid[inputs.samples], inputs.bfile.iid[inputs.samples]
    counts: list[int] = []
    if settings.by_level:
        p = traits[0].X.shape[1]
        if isinstance(tree, GroupedKinship):
            counts = level_counts(options, tree.n_micro, p, micro=True)
        else:
            counts = level_counts(options, inputs.samples.size, p)
    results = []
    for t in traits:
        y_all = inputs.traits[:, inputs.trait_names.index(t.name)]
        keys = list(zip(fid[t.analysed], iid[t.analysed], strict=True))
        # Each repeat's fold (from 1) and prediction of every phenotyped individual.
        predictions: list[tuple[np.ndarray, np.ndarray]] = []
        fold_rows: list[tuple] = []
        level_rows: list[tuple] = []
        for repeat in range(settings.repeats):
            fold = assign_folds(keys, settings.folds, settings.seed, repeat)
            training = [_training(t, fold != k, inputs, options) for k in range(settings.folds)]
            with _level_log_quiet():
                fits = fit_traits(training, rel, tree, options)
            predicted = np.empty(t.analysed.size)
            for k, fitted in enumerate(fits):
                test = fold == k
                predicted[test] = _predicted(fitted, t, y_all)[t.analysed[test]]
                levels = fitted.levels[fitted.chosen].groups if fitted.levels else 0
                fold_rows.append(
                    (
                        repeat + 1,
                        k + 1,
                        int(np.sum(~test)),
                        int(np.sum(test)),
                        levels,
                        fitted.model.vg,
                        fitted.model.ve,
                        fitted.model.h2,
                        accuracy(predicted[test], t.y[test]),
                    )
                )
            predictions.append((fold + 1, predicted))
            for count in counts:
                fixed = dataclasses.replace(options, groups=str(count))
                with _level_log_quiet():
                    fits = fit_traits(training, rel, tree, fixed)
                for k, fitted in enumerate(fits):
                    test = fold == k
                    got = _predicted(fitted, t, y_all)[t.analysed[test]]
                    level_rows.append((repeat + 1, k + 1, count, accuracy(got, t.y[test])))
        # t.analysed is in .fam order already.
        results.append(
            TraitCv(
                name=t.name,
                sample=np.tile(t.analysed, settings.repeats),
                repeat=np.repeat(np.arange(1, settings.repeats + 1), t.analysed.size),
                fold=np.concatenate([f for f, _ in predictions]),
                predicted=np.concatenate([p for _, p in predictions]),
                observed=np.tile(t.y, settings.repeats),
                folds=_columns(CV_COLUMNS, fold_rows),
                levels=_columns(CV_LEVEL_COLUMNS, level_rows),
            )
        )
        log.info(
            "%s: %d-fold cross-validation x %d: mean accuracy %.4f",
            t.name,
            settings.folds,
            settings.repeats,
            float(np.nanmean(results[-1].folds["accuracy"])),
        )
    lap("cross-validation")
    return results


def _training(t: TraitData, train: np.ndarray, inputs: Inputs, options: GwasOptions) -> TraitData:
    """The trait restricted to a fold's training individuals, checked as a trait is."""
    training = dataclasses.replace(t, analysed=t.analysed[train], y=t.y[train], X=t.X[train])
    check_trait(
        t.name,
        training.y,
        training.X,
        fixed_names(inputs, options),
        several=inputs.traits.shape[1] > 1,
    )
    return training


def _predicted(fitted: TraitResult, t: TraitData, y_all: np.ndarray) -> np.ndarray:
    """Every kept sample's ``prediction`` from a fold's fit (fixed effects alone for the GLM)."""
    if fitted.targets is None:
        return t.fixed @ fitted.model.beta
    return trait_predictions(fitted, y_all).prediction


def _columns(names: Sequence[str], rows: Sequence[tuple]) -> dict[str, np.ndarray]:
    return {name: np.array([row[j] for row in rows]) for j, name in enumerate(names)}


def run_cv(
    bfile: str,
    pheno: str,
    out: str,
    options: GwasOptions | None = None,
    settings: CvSettings | None = None,
) -> list[str]:
    """Cross-validate every trait and write its tables (and with ``by_level``, a picture).

    ``OUT.TRAIT.cv_predictions.tsv`` (:data:`CV_PREDICTION_COLUMNS`, by
    repeat and then in .fam order), ``OUT.TRAIT.cv.tsv`` (each repeat's folds
    and a ``mean`` row over them), and with ``by_level``
    ``OUT.TRAIT.cv_levels.tsv`` and ``OUT.TRAIT.cv_levels.png``.

    Parameters
    ----------
    bfile, pheno, out, options
        As in :func:`cmlm_cli.pipeline.run_gwas`.
    settings : CvSettings, optional

    Returns
    -------
    list of str
        The files written.
    """
    options = options or GwasOptions()
    settings = settings or CvSettings()
    if options.loco:
        # Leaving a chromosome out changes the SNP tests only; cv tests none.
        msg = (
            "--loco changes only the test of each chromosome's SNPs, and cmlm cv tests no "
            "SNP (it predicts from the whole genome's kinship); leave --loco out"
        )
        raise CmlmError(msg)
    if settings.folds < 2 or settings.repeats < 1:
        check_settings(settings, [], options)
    lap = Stopwatch()
    inputs = prepare_inputs(bfile, pheno, out, options)
    lap("reading inputs")
    written = []
    fid, iid = inputs.bfile.fid[inputs.samples], inputs.bfile.iid[inputs.samples]
    for cv in cross_validate(inputs, options, settings, lap):
        path = f"{out}.{cv.name}.cv_predictions.tsv"
        rows = zip(
            fid[cv.sample],
            iid[cv.sample],
            cv.repeat.tolist(),
            cv.fold.tolist(),
            cv.predicted.tolist(),
            cv.observed.tolist(),
            strict=True,
        )
        files.write_table(path, CV_PREDICTION_COLUMNS, list(rows))
        written.append(path)
        path = f"{out}.{cv.name}.cv.tsv"
        files.write_table(path, CV_COLUMNS, _with_means(cv.folds, settings.repeats))
        written.append(path)
        if settings.by_level:
            path = f"{out}.{cv.name}.cv_levels.tsv"
            files.write_table(path, CV_LEVEL_COLUMNS, _rows(cv.levels, CV_LEVEL_COLUMNS))
            written.append(path)
            if options.plots:
                written.append(
                    plots.write_cv_levels(
                        f"{out}.{cv.name}.cv_levels.{options.plot_format}",
                        cv.levels["groups"],
                        cv.levels["accuracy"],
                        title=cv.name,
                    )
                )
    lap("writing")
    for path in written:
        log.info("wrote %s", path)
    return written


def _rows(columns: dict[str, np.ndarray], names: Sequence[str]) -> list[tuple]:
    return list(zip(*(columns[name].tolist() for name in names), strict=True))


def _with_means(columns: dict[str, np.ndarray], repeats: int) -> list[tuple]:
    """Each repeat's fold rows, then its ``mean`` row (means of n, vg, ve, h2, accuracy)."""
    rows = []
    for repeat in range(1, repeats + 1):
        mine = columns["repeat"] == repeat
        rows += [row for row, m in zip(_rows(columns, CV_COLUMNS), mine, strict=True) if m]
        means = {
            name: float(np.nanmean(columns[name][mine]))
            for name in ("n_train", "n_test", "vg", "ve", "h2", "accuracy")
        }
        rows.append(
            (
                repeat,
                "mean",
                means["n_train"],
                means["n_test"],
                float("nan"),
                means["vg"],
                means["ve"],
                means["h2"],
                means["accuracy"],
            )
        )
    return rows

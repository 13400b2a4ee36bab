"""The names every setting may take, in one place.

The library checks its arguments against these and the command line offers
exactly these; this module imports nothing heavy, so the command line can
read it before numpy is loaded (thread settings must precede that).
"""

MODELS = ("cmlm", "ecmlm", "mlm", "glm", "farmcpu", "blink")
# The multi-locus models: GLM scans with pseudo-QTNs as covariates, no kinship.
MULTILOCUS_MODELS = ("farmcpu", "blink")
# GAPIT's two tables of a multi-locus run, and whose rules decide its edge cases.
MULTILOCUS_TABLES = ("nyc", "kansas")
MULTILOCUS_RULES = ("cmlm", "gapit")
# FarmCPU's bins (GAPIT's method.bin).
FARMCPU_BINS = ("static", "optimum")
# The grid of --model ecmlm: every clustering, and the group kinships that
# summarise K (identity ignores it).
ECMLM_CLUSTERS = ("average", "complete", "ward", "single", "mcquitty", "median", "centroid")
ECMLM_GROUP_KINSHIPS = ("mean", "max", "min", "median")
KINSHIP_METHODS = ("vanraden", "zhang", "loiselle", "ibs")
PRECISIONS = ("auto", "float64", "float32")
KINSHIP_PRECISIONS = PRECISIONS
SCAN_PRECISIONS = PRECISIONS
IMPUTE_METHODS = ("mean", "middle")
PCS_SELECTIONS = ("none", "bic")
CLUSTER_METHODS = ("average", "complete", "ward", "single", "mcquitty", "median", "centroid")
GROUP_KINSHIPS = ("mean", "max", "min", "median", "identity")
METHODS = ("reml", "ml")
SOLVERS = ("brent", "em", "newton")
SNP_VARIANCES = ("auto", "null", "refit")
CHOICE_RULES = ("best", "gapit")
PLOT_FORMATS = ("png", "pdf")
PATHS = ("auto", "dense", "large")


FLOAT32_ABOVE = 2_000
"""``"auto"`` precision: float32 products above this size (samples, groups)."""


def block_precision(precision: str, size: int) -> str:
    """The arithmetic that a precision setting means for n x n or q x q products.

    ``"auto"`` is float64 up to :data:`FLOAT32_ABOVE` (``size``: samples for
    the kinship, groups for the scan), where the products are cheap, and
    float32 above, where they dominate the run and float32 halves their time;
    the kinship then moves by ~1e-7 of its diagonal and p-values by ~1e-6 in
    log10 at most (tests/test_kinship.py, tests/test_scan.py).

    Parameters
    ----------
    precision : {"auto", "float64", "float32"}
    size : int

    Returns
    -------
    {"float64", "float32"}
    """
    if precision not in PRECISIONS:
        msg = f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
        raise ValueError(msg)
    if precision == "auto":
        return "float32" if size > FLOAT32_ABOVE else "float64"
    return precision

"""The names every setting may take, in one place.

The library checks its arguments against these and the command line offers
exactly these; this module imports nothing heavy, so the command line can
read it before numpy is loaded (thread settings must precede that).
"""

MODELS = ("cmlm", "mlm", "glm")
KINSHIP_METHODS = ("vanraden", "zhang", "loiselle", "ibs")
KINSHIP_PRECISIONS = ("auto", "float64", "float32")
SCAN_PRECISIONS = KINSHIP_PRECISIONS
IMPUTE_METHODS = ("mean", "middle")
CLUSTER_METHODS = ("average", "complete", "ward", "single", "mcquitty", "median", "centroid")
GROUP_KINSHIPS = ("mean", "max", "min", "median", "identity")
METHODS = ("reml", "ml")
SOLVERS = ("brent", "em", "newton")
SNP_VARIANCES = ("auto", "null", "refit")
CHOICE_RULES = ("best", "gapit")
PLOT_FORMATS = ("png", "pdf")
PATHS = ("auto", "dense", "large")

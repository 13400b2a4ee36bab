"""cmlm: genome-wide association with the Compressed Mixed Linear Model.

The package follows the data flow of an analysis, one module per step:
``plink`` and ``tables`` read the inputs, ``kinship`` builds relationship
matrices, ``grouping`` clusters individuals into groups, ``null_model`` fits
the compressed model, ``scan`` tests SNP blocks, ``sumstats`` writes results,
and ``pipeline`` runs the steps top to bottom.
"""

__version__ = "0.1.0"

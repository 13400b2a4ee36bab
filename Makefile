# Two commands for a newcomer: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean validate power power-multilocus bench bench-shared bench-threads bench-traits bench-multilocus bench-dosage

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,plot,dask]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cmlm gwas --bfile data/mdp --pheno data/mdp.pheno.tsv --pheno-name EarHT --pcs 3 --out results/mdp
	@echo "Results are in results/ (results/mdp.EarHT.sumstats.tsv, .compression.tsv, .model.json, .groups.tsv, .blup.tsv, .manhattan.png, .qq.png, .compression.png, results/mdp.log)"

# The tests use small matrices: one BLAS thread each keeps them fast and
# steady when the machine is shared (threads fighting over 2 cores cost 10x).
# Two pytest-xdist processes share the tests out (TEST_WORKERS=0 runs them in
# this one process), so the suite keeps 2 cores busy: half the wall time.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check cmlm_cli tests conftest.py bench validate
	$(BIN)/mypy
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# Calibration (null traits) and power (causal traits) of cmlm, mlm and glm on
# simulated structured panels: a few minutes, so not part of `make test`.
validate: $(STAMP)
	OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 $(BIN)/python validate/run.py

# Power of GLM, GLM + PCs, MLM, CMLM and ECMLM on traits simulated on the
# real maize and mouse genotypes (100 replicates per setting, about 17
# minutes on 2 shared cores); the table goes to validate/power.md, the curves to
# validate/power.png.
power: $(STAMP)
	$(BIN)/python validate/power.py

# FarmCPU and BLINK (with 3 PCs, as GAPIT's users run them) beside GLM + 3 PCs,
# MLM and CMLM on the same traits: about 40 minutes on 2 cores; the tables go
# to validate/power-multilocus.md (maize) and validate/power-multilocus-mouse.md.
POWER_ML_MODELS := glm,glm+3PCs,mlm,cmlm,farmcpu+3PCs,blink+3PCs
power-multilocus: $(STAMP)
	$(BIN)/python validate/power.py --panels maize --models $(POWER_ML_MODELS) --out validate/power-multilocus.md --figure validate/power-multilocus.png
	$(BIN)/python validate/power.py --panels mouse --models $(POWER_ML_MODELS) --out validate/power-multilocus-mouse.md --figure validate/power-multilocus-mouse.png

# Wall time, CPU time and memory of cmlm, plink2 --glm and GEMMA on simulated
# panels S, M, L (hours on a laptop; SIZES=S for a few minutes); the table
# goes to bench/results.md. Not part of `make test`.
SIZES ?= S,M,L
bench: $(STAMP) bench-shared
	$(BIN)/python bench/run.py --sizes $(SIZES)

# The maize job against a bare `import numpy, scipy.linalg, numba`, and the
# maize job, S and M alone and beside a 2-thread BLAS job (a few minutes);
# the table goes to bench/shared.md.
SHARED_SIZES ?= S,M
bench-shared: $(STAMP)
	$(BIN)/python bench/shared.py --sizes $(SHARED_SIZES)

# Where threads stop paying: BLAS and numba, 1 thread against all, quiet and
# beside a BLAS job (the thresholds in cmlm_cli/resources.py).
bench-threads: $(STAMP)
	$(BIN)/python bench/threads.py

# Dosage input (a 16-bit BGEN by plink2) against the .bed for the same run,
# back to back on the simulated panel S; the table goes to
# bench/results-dosage.md.
bench-dosage: $(STAMP)
	$(BIN)/python bench/dosage.py --size $(or $(DOSAGE_SIZE),S)

# Twenty traits against one (the shared eigenbasis), with plink2 --glm on the
# same 20 phenotypes and GEMMA per trait (3 of its 20 runs), on S and M,
# every command TRAIT_REPEATS times in turn (about an hour at 3); the table
# goes to bench/results-traits.md.
TRAIT_SIZES ?= S,M
TRAIT_REPEATS ?= 3
bench-traits: $(STAMP)
	$(BIN)/python bench/traits.py --sizes $(TRAIT_SIZES) --repeats $(TRAIT_REPEATS)

# FarmCPU and BLINK against one plink2 --glm scan on S and M: seconds per
# iteration and the ratio to (iterations + 1) scans; the table goes to
# bench/results-multilocus.md.
MULTILOCUS_SIZES ?= S,M
bench-multilocus: $(STAMP)
	$(BIN)/python bench/multilocus.py --sizes $(MULTILOCUS_SIZES)

lint: $(STAMP)
	$(BIN)/ruff check cmlm_cli tests conftest.py bench validate
	$(BIN)/mypy

clean:
	rm -rf $(VENV) results .pytest_cache

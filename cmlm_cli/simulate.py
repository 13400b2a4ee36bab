"""Seeded simulated panels, for tests, demos and benchmarks.

:func:`simulate` writes a PLINK 1 fileset with population structure (the
Balding-Nichols model), optional full-sib families (close relatedness) and
traits made of a polygenic background, a few causal SNPs, a subpopulation
shift (confounding) and noise, together with the phenotype table and the
true causal effects. Genotypes are generated and written in blocks of SNPs,
so a panel far larger than memory (50,000 x 500,000, a 6.25 GB .bed) costs
memory in proportion to ``n * block_size`` only. The random streams belong
to fixed chunks of :data:`CHUNK` SNPs, not to the writing blocks, and the
genetic values are accumulated chunk by chunk, so the files are the same
bytes whatever ``block_size`` is.
"""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from cmlm_cli.errors import CmlmError
from cmlm_cli.files import atomic_open

log = logging.getLogger("cmlm")

CHUNK = 64
"""SNPs per random stream: chunk ``c`` draws from ``SeedSequence(seed, spawn_key=(1, c))``."""

_ALLELES = (("A", "G"), ("C", "T"), ("A", "C"), ("G", "T"))
# PLINK 1 codes of 2, 1 and 0 copies of A1 (bim column 5); 0b01 is missing.
_CODE_OF_COUNT = np.array([0b11, 0b10, 0b00], dtype=np.uint8)
_MISSING_CODE = 0b01
_BED_HEADER = bytes([0x6C, 0x1B, 0x01])


@dataclass(frozen=True)
class Simulation:
    """What :func:`simulate` wrote, and the truth behind it.

    Attributes
    ----------
    prefix : str
        The fileset ``prefix.bed/.bim/.fam``, beside ``prefix.pheno.tsv`` and
        ``prefix.causal.tsv``.
    causal : ndarray, shape (c,), int
        .bim rows (0-based, sorted) of the causal SNPs, shared by all traits.
    effects : ndarray, shape (c, t), float64
        Per-allele effect of A1 (the counted allele) of each causal SNP on
        each trait.
    population : ndarray, shape (n,), int
        Subpopulation ``0..n_pops-1`` of each individual, in .fam order.
    """

    prefix: str
    causal: np.ndarray
    effects: np.ndarray
    population: np.ndarray


@dataclass(frozen=True)
class _Layout:
    """Who is who: subpopulations and families of the n individuals."""

    population: np.ndarray  # (n,) subpopulation of each individual
    family: np.ndarray  # (n,) family of each individual, -1 without families
    family_pop: np.ndarray  # (f,) subpopulation of each family

    @classmethod
    def build(cls, n: int, n_pops: int, family_size: int) -> _Layout:
        # Contiguous, near-equal subpopulations; families never straddle two.
        population = (np.arange(n) * n_pops) // n
        if family_size == 0:
            return cls(population, np.full(n, -1), np.zeros(0, dtype=int))
        family = np.empty(n, dtype=int)
        family_pop = []
        next_family = 0
        for k in range(n_pops):
            members = np.flatnonzero(population == k)
            count = -(-len(members) // family_size)
            family[members] = next_family + np.arange(len(members)) // family_size
            family_pop.extend([k] * count)
            next_family += count
        return cls(population, family, np.array(family_pop, dtype=int))


def simulate(
    prefix: str,
    *,
    n: int,
    m: int,
    n_traits: int = 1,
    n_pops: int = 3,
    fst: float = 0.1,
    family_size: int = 0,
    h2: float = 0.5,
    n_causal: int = 10,
    causal_h2: float | None = None,
    pop_effect: float = 0.0,
    missing_rate: float = 0.0,
    n_chrom: int = 10,
    seed: int = 0,
    block_size: int = 10_000,
) -> Simulation:
    """Write a simulated PLINK 1 fileset, its traits and the true effects.

    Parameters
    ----------
    prefix : str
        Output path without extension; writes ``prefix.bed``, ``.bim``,
        ``.fam``, ``.pheno.tsv`` (``FID IID trait1 ...``, tab-separated) and
        ``.causal.tsv`` (``SNP trait effect``).
    n, m : int
        Individuals and SNPs.
    n_traits : int
        Traits, each with its own background and causal effects.
    n_pops : int
        Subpopulations; individuals are split evenly, in .fam order.
    fst : float
        Balding-Nichols F, ``0 <= fst < 1``: each subpopulation's frequency
        is ``Beta(p (1-F)/F, (1-p)(1-F)/F)`` around the ancestral
        ``p ~ U(0.05, 0.95)`` of the SNP.
    family_size : int
        0: unrelated individuals in Hardy-Weinberg proportions within their
        subpopulation. S > 0: full-sib families of S children (the last
        family of a subpopulation may be smaller) of two founders drawn from
        the subpopulation; each child gets one random allele of each parent
        at each SNP (unlinked SNPs).
    h2 : float
        Share of the trait variance due to the genotypes.
    n_causal : int
        Causal SNPs, drawn at random, shared by the traits.
    causal_h2 : float, optional
        Share explained by the causal SNPs (default ``h2 / 2`` when
        ``n_causal > 0``, else 0); every SNP carries a small polygenic effect
        that explains ``h2 - causal_h2``.
    pop_effect : float
        Variance of a shift of the trait by subpopulation (confounding).
    missing_rate : float
        Share of genotype calls written as missing, at random.
    n_chrom : int
        Chromosomes 1..n_chrom, near-equal numbers of SNPs, in .bim order.
    seed : int
        The same arguments and seed give the same bytes.
    block_size : int
        SNPs held in memory before they are written; changes no byte.

    Returns
    -------
    Simulation

    Raises
    ------
    CmlmError
        An argument is out of range; the message names it.

    Notes
    -----
    The genetic components are scaled to their stated variances over the n
    simulated individuals exactly (sample variance, ddof 0), using the true
    genotypes (before calls are set missing): the polygenic background
    ``sum_j u_j (g_j - 2 p_j) / sqrt(2 p_j (1 - p_j))`` with ``u_j ~ N(0, 1)``
    to ``h2 - causal_h2``, the causal part ``sum_c g_c b_c`` with standardised
    ``b_c ~ N(0, 1)`` to ``causal_h2``, and the subpopulation shift to
    ``pop_effect``. The noise is ``N(0, 1 - h2 - pop_effect)``, so the trait
    variance is about 1 and the realised h2 about ``h2``.
    """
    if causal_h2 is None:
        causal_h2 = h2 / 2 if n_causal > 0 else 0.0
    _check(locals())
    folder = Path(prefix).parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        msg = f"simulate: cannot create the output folder '{folder}' ({err.strerror})"
        raise CmlmError(msg) from None
    layout = _Layout.build(n, n_pops, family_size)
    main_rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,)))
    causal = np.sort(main_rng.choice(m, size=n_causal, replace=False))
    causal_draws = main_rng.standard_normal((n_causal, n_traits))

    background = np.zeros((n, n_traits))
    causal_value = np.zeros((n, n_traits))
    causal_beta = np.zeros((n_causal, n_traits))
    bytes_per_snp = -(-n // 4)
    with contextlib.ExitStack() as stack:
        # atomic_open gives a text handle; the .bed bytes go to the file beneath it.
        bed = cast(io.TextIOWrapper, stack.enter_context(atomic_open(f"{prefix}.bed"))).buffer
        bim = stack.enter_context(atomic_open(f"{prefix}.bim"))
        bed.write(_BED_HEADER)
        pending: list[bytes] = []
        pending_snps = 0
        for start in range(0, m, CHUNK):
            stop = min(start + CHUNK, m)
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, start // CHUNK)))
            p, G, missing, u = _draw_chunk(rng, stop - start, layout, fst, missing_rate, n_traits)
            sd = np.sqrt(2 * p * (1 - p))
            # Single precision is plenty for a background of many small
            # effects, and halves the cost of the widest product here.
            background += G.T.astype(np.float32) @ (u / sd[:, None]).astype(np.float32)
            here = (causal >= start) & (causal < stop)
            if here.any():
                rows = causal[here] - start
                causal_beta[here] = causal_draws[here] / sd[rows, None]
                causal_value += G[rows].T.astype(np.float64) @ causal_beta[here]
            pending.append(_pack(G, missing, bytes_per_snp))
            pending_snps += stop - start
            if pending_snps >= block_size:
                bed.write(b"".join(pending))
                pending, pending_snps = [], 0
            bim.write("".join(_bim_lines(start, stop, m, n_chrom)))
        bed.write(b"".join(pending))

        scale = _scale(causal_value, causal_h2)
        effects = causal_beta * scale
        traits = (
            _centre(background) * _scale(background, h2 - causal_h2) + _centre(causal_value) * scale
        )
        shift = main_rng.standard_normal(n_pops)[layout.population][:, None]
        traits += _centre(shift) * _scale(shift, pop_effect)
        traits += main_rng.standard_normal((n, n_traits)) * np.sqrt(1 - h2 - pop_effect)

        fid, iid = _ids(layout)
        with atomic_open(f"{prefix}.fam") as fam:
            fam.writelines(f"{f}\t{i}\t0\t0\t0\t-9\n" for f, i in zip(fid, iid, strict=True))
        names = [f"trait{t + 1}" for t in range(n_traits)]
        with atomic_open(f"{prefix}.pheno.tsv") as pheno:
            pheno.write("\t".join(["FID", "IID", *names]) + "\n")
            for f, i, row in zip(fid, iid, traits, strict=True):
                pheno.write("\t".join([f, i, *(f"{v:.8g}" for v in row)]) + "\n")
        with atomic_open(f"{prefix}.causal.tsv") as table:
            table.write("SNP\ttrait\teffect\n")
            for row, snp in enumerate(causal):
                for t, name in enumerate(names):
                    table.write(f"snp{snp}\t{name}\t{effects[row, t]:.8g}\n")
    kin = f"full-sib families of {family_size}" if family_size else "unrelated"
    log.info(
        "simulated %d individuals (%d subpopulations, Fst %g, %s) x %d SNPs, %d trait(s); "
        "wrote %s.bed, .bim, .fam, .pheno.tsv, .causal.tsv",
        n, n_pops, fst, kin, m, n_traits, prefix,
    )  # fmt: skip
    return Simulation(prefix, causal, effects, layout.population)


def _check(args: dict[str, Any]) -> None:
    """Refuse arguments outside the model's range, naming them."""
    rules = [
        (args["n"] >= 2, f"n must be at least 2, got {args['n']}"),
        (args["m"] >= 1, f"m must be at least 1, got {args['m']}"),
        (args["n_traits"] >= 1, f"n_traits must be at least 1, got {args['n_traits']}"),
        (
            1 <= args["n_pops"] <= args["n"],
            f"n_pops must be between 1 and n = {args['n']}, got {args['n_pops']}",
        ),
        (0 <= args["fst"] < 1, f"fst must be in [0, 1), got {args['fst']}"),
        (args["family_size"] >= 0, f"family_size must be 0 or more, got {args['family_size']}"),
        (0 <= args["h2"] <= 1, f"h2 must be in [0, 1], got {args['h2']}"),
        (
            0 <= args["n_causal"] <= args["m"],
            f"n_causal must be between 0 and m = {args['m']}, got {args['n_causal']}",
        ),
        (
            0 <= args["causal_h2"] <= args["h2"],
            f"causal_h2 must be between 0 and h2 = {args['h2']}, got {args['causal_h2']}",
        ),
        (
            args["n_causal"] > 0 or args["causal_h2"] == 0,
            f"causal_h2 = {args['causal_h2']} needs n_causal > 0",
        ),
        (args["pop_effect"] >= 0, f"pop_effect must be 0 or more, got {args['pop_effect']}"),
        (
            args["pop_effect"] == 0 or args["n_pops"] > 1,
            "pop_effect > 0 needs n_pops > 1 (a shift between subpopulations)",
        ),
        (
            args["h2"] + args["pop_effect"] <= 1,
            f"h2 + pop_effect must be at most 1 (the rest is noise), got "
            f"{args['h2']} + {args['pop_effect']}",
        ),
        (
            0 <= args["missing_rate"] < 1,
            f"missing_rate must be in [0, 1), got {args['missing_rate']}",
        ),
        (
            1 <= args["n_chrom"] <= args["m"],
            f"n_chrom must be between 1 and m = {args['m']}, got {args['n_chrom']}",
        ),
        (args["seed"] >= 0, f"seed must be 0 or more, got {args['seed']}"),
        (args["block_size"] >= 1, f"block_size must be at least 1, got {args['block_size']}"),
    ]
    for ok, problem in rules:
        if not ok:
            msg = f"simulate: {problem}"
            raise CmlmError(msg)


def _draw_chunk(
    rng: np.random.Generator,
    size: int,
    layout: _Layout,
    fst: float,
    missing_rate: float,
    n_traits: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Genotypes of one chunk of SNPs, in a fixed order of draws.

    Returns
    -------
    p : ndarray, shape (size,)
        Ancestral A1 frequencies.
    G : ndarray, shape (size, n), uint8
        A1 counts, SNP-major.
    missing : ndarray, shape (size, n), bool, or None
        Calls to write as missing; ``None`` when ``missing_rate`` is 0.
    u : ndarray, shape (size, n_traits)
        Polygenic effects per standardised genotype.
    """
    n_pops = int(layout.population.max()) + 1
    p = rng.uniform(0.05, 0.95, size)
    if fst > 0:
        a = p * (1 - fst) / fst
        b = (1 - p) * (1 - fst) / fst
        p_pop = rng.beta(a[:, None], b[:, None], (size, n_pops))
    else:
        p_pop = np.repeat(p[:, None], n_pops, axis=1)
    if len(layout.family_pop) == 0:
        G = _two_alleles(rng, p_pop, p_pop, layout.population)
    else:
        # Founders' genotypes, then one transmitted allele from each: A1 comes
        # from a parent with g copies with probability g / 2.
        founder_pop = np.repeat(layout.family_pop, 2)
        founders = _two_alleles(rng, p_pop, p_pop, founder_pop) / 2.0
        G = _two_alleles(rng, founders[:, 0::2], founders[:, 1::2], layout.family)
    missing = rng.random(G.shape, dtype=np.float32) < missing_rate if missing_rate > 0 else None
    u = rng.standard_normal((size, n_traits))
    return p, G, missing, u


def _two_alleles(
    rng: np.random.Generator, a: np.ndarray, b: np.ndarray, source: np.ndarray
) -> np.ndarray:
    """A1 counts: one allele A1 with probability ``a``, the other with ``b``.

    Parameters
    ----------
    a, b : ndarray, shape (size, s)
        Probabilities per SNP and source (subpopulation, or family's parent).
    source : ndarray, shape (k,), int
        Source of each of the k individuals drawn.

    Returns
    -------
    ndarray, shape (size, k), uint8

    Notes
    -----
    P(count >= 1) = 1 - (1-a)(1-b) and P(count = 2) = ab, so one uniform per
    genotype compared with both thresholds gives the right law; the
    thresholds are computed per source and only then spread to individuals.
    """
    at_least_one = (1 - (1 - a) * (1 - b)).astype(np.float32)[:, source]
    two = (a * b).astype(np.float32)[:, source]
    U = rng.random(at_least_one.shape, dtype=np.float32)
    G = (U < at_least_one).view(np.uint8)
    G += U < two
    return G


def _pack(G: np.ndarray, missing: np.ndarray | None, bytes_per_snp: int) -> bytes:
    """PLINK 1 SNP-major bytes of a chunk: four calls per byte, first in the low bits."""
    codes = np.zeros((G.shape[0], 4 * bytes_per_snp), dtype=np.uint8)
    codes[:, : G.shape[1]] = _CODE_OF_COUNT[G]
    if missing is not None:
        codes[:, : G.shape[1]][missing] = _MISSING_CODE
    packed = codes[:, 0::4] | (codes[:, 1::4] << 2) | (codes[:, 2::4] << 4) | (codes[:, 3::4] << 6)
    return packed.tobytes()


def _bim_lines(start: int, stop: int, m: int, n_chrom: int) -> list[str]:
    """Chromosome j * n_chrom // m + 1, positions 10 kb apart within each chromosome."""
    lines = []
    for j in range(start, stop):
        chrom = j * n_chrom // m
        first = -(-chrom * m // n_chrom)  # first SNP j with j * n_chrom // m == chrom
        a1, a2 = _ALLELES[j % len(_ALLELES)]
        lines.append(f"{chrom + 1}\tsnp{j}\t0\t{10_000 * (j - first + 1)}\t{a1}\t{a2}\n")
    return lines


def _centre(values: np.ndarray) -> np.ndarray:
    return values - values.mean(axis=0)


def _scale(values: np.ndarray, variance: float) -> np.ndarray:
    """Factor per column that gives ``values`` the sample variance ``variance``."""
    current = values.var(axis=0)
    safe = np.where(current > 0, current, 1.0)
    return np.where(current > 0, np.sqrt(variance / safe), 0.0)


def _ids(layout: _Layout) -> tuple[list[str], list[str]]:
    n = len(layout.population)
    iid = [f"ind{i}" for i in range(n)]
    if len(layout.family_pop) == 0:
        fid = [f"pop{k}_{i}" for i, k in enumerate(layout.population)]
    else:
        fid = [f"pop{k}_fam{f}" for k, f in zip(layout.population, layout.family, strict=True)]
    return fid, iid

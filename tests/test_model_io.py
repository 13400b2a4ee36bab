"""The fit file (:mod:`cmlm_cli.model_io`): each array stored once, unsaved fields, old formats.

Traits fitted on the same individuals share their group kinships, labels and
design in memory; the fit file stores each once and gives them back as one
array object, so that a fit of many traits is about the size of a fit of one
and :func:`cmlm_cli.association.make_scans` hashes each array once. That the
fit, scan and merge still write the bytes of ``cmlm gwas`` is checked by
``test_chunks.py`` and ``test_shared_scan.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import DATA

from cmlm_cli import __version__, model_io
from cmlm_cli.association import make_scans
from cmlm_cli.chunks import run_fit
from cmlm_cli.cli import main
from cmlm_cli.errors import CmlmError
from cmlm_cli.options import GwasOptions
from cmlm_cli.shared_scan import SharedScanner

TRAITS = ("T1", "T2", "T3")
# One compression level: every trait's model is that level's, with one Kc.
OPTIONS = GwasOptions(groups="120", plots=False, blup=False)


@pytest.fixture(scope="module")
def fits(tmp_path_factory) -> dict[str, str]:
    """Fits of the first trait and of all three, every trait on every sample.

    ``levels``: the three traits with three compression levels, of which
    each trait keeps the Kc of its chosen one (the others' are empty).
    """
    folder = tmp_path_factory.mktemp("fits")
    rng = np.random.default_rng(5)
    fam = [line.split() for line in (DATA / "mdp.fam").read_text().splitlines()]
    values = rng.normal(size=(len(fam), len(TRAITS)))
    lines = ["FID\tIID\t" + "\t".join(TRAITS)]
    lines += [
        f"{f[0]}\t{f[1]}\t" + "\t".join(f"{v:.6f}" for v in row)
        for f, row in zip(fam, values, strict=True)
    ]
    pheno = folder / "traits.tsv"
    pheno.write_text("\n".join(lines) + "\n")
    runs = {
        "one": dataclasses.replace(OPTIONS, pheno_names=TRAITS[:1]),
        "three": dataclasses.replace(OPTIONS, pheno_names=TRAITS),
        "levels": dataclasses.replace(OPTIONS, pheno_names=TRAITS, groups="281,120,31"),
    }
    return {
        name: run_fit(str(DATA / "mdp"), str(pheno), str(folder / name), options)
        for name, options in runs.items()
    }


def stored(path: str) -> tuple[list[str], dict[str, Any]]:
    """The entries written in an archive and its metadata."""
    with zipfile.ZipFile(path) as archive:
        names = [name.removesuffix(".npy") for name in archive.namelist()]
        with archive.open("meta.json.npy") as handle:
            meta = json.loads(str(np.lib.format.read_array(handle)))
    return names, meta


def test_traits_on_the_same_individuals_store_their_kinship_once(fits):
    names, meta = stored(fits["three"])
    assert [n for n in names if n.endswith(".Kc")] == ["trait0.level0.model.Kc"]

    def holder(key: str) -> str:
        return meta["shared"].get(key, key)

    for k in (1, 2):
        for name in ("Kc", "labels", "counts", "X"):
            key = f"level0.model.{name}"
            assert holder(f"trait{k}.{key}") == holder(f"trait0.{key}") != f"trait{k}.{key}"
        assert f"trait{k}.level0.model.y" in names  # the traits' own values
    one, three = Path(fits["one"]).stat().st_size, Path(fits["three"]).stat().st_size
    assert three < 1.2 * one, (one, three)


def test_shared_arrays_are_read_back_as_one_object(fits):
    loaded = model_io.load_fit(fits["three"])
    assert loaded.digest == hashlib.sha256(Path(fits["three"]).read_bytes()).hexdigest()
    first = loaded.results[0]
    for result in loaded.results[1:]:
        for name in ("Kc", "labels", "counts", "X"):
            assert getattr(result.model, name) is getattr(first.model, name), name
        assert result.analysed is first.analysed
        assert result.model.y is not first.model.y
        assert not np.array_equal(result.model.y, first.model.y)
    routes = make_scans(
        [r.model for r in loaded.results], [r.analysed for r in loaded.results], loaded.options
    )
    assert len(routes.sets) == 1
    assert isinstance(routes.sets[0], SharedScanner)


def test_each_level_kinship_is_stored_once(fits):
    names, _ = stored(fits["levels"])
    loaded = model_io.load_fit(fits["levels"])
    kept = {}  # each level's Kc, from the traits that chose it
    for result in loaded.results:
        for j, level in enumerate(result.levels):
            if level.model.Kc.size:
                assert kept.setdefault(j, level.model.Kc) is level.model.Kc, j
    assert len({r.chosen for r in loaded.results}) > 1  # not all the same level
    with np.load(fits["levels"]) as archive:
        sizes = [archive[n].size for n in names if n.endswith(".Kc")]
    assert sorted(size for size in sizes if size) == sorted(Kc.size for Kc in kept.values())


def test_only_equal_dtype_shape_order_and_bytes_are_stored_once(tmp_path):
    a = np.arange(6.0).reshape(2, 3)
    entries = {
        "a": a,
        "same": a.copy(),
        "itself": a,
        "fortran": np.asfortranarray(a),
        "float32": a.astype(np.float32),
        "reshaped": a.reshape(3, 2).copy(),
        "text": np.array(["x", "yz"]),
        "text again": np.array(["x", "yz"]),
        "scalar": np.asarray(1.5),
        "scalar again": np.asarray(1.5),
    }
    kept, shared = model_io._deduplicate(entries)
    assert shared == {"same": "a", "itself": "a", "text again": "text"}
    assert list(kept) == [key for key in entries if key not in shared]
    path = str(tmp_path / "a.npz")
    model_io._write_archive(
        path, {"format": "cmlm-fit", "version": model_io.FORMAT_VERSION}, entries
    )
    digest, meta, read = model_io._read_archive(path, "cmlm-fit", "fit file")
    assert meta["shared"] == shared
    assert read.keys() == entries.keys()
    assert read["same"] is read["a"]
    assert read["itself"] is read["a"]
    assert read["text again"] is read["text"]
    assert read["fortran"] is not read["a"]
    assert read["fortran"].flags.f_contiguous
    assert not read["fortran"].flags.c_contiguous
    for key, array in entries.items():
        assert read[key].dtype == array.dtype, key
        assert np.array_equal(read[key], array), key


@dataclass(frozen=True)
class Inner:
    values: np.ndarray
    cache: Any = field(default=None, metadata={"saved": False})


@dataclass(frozen=True)
class Cached:
    n: int
    inner: Inner
    factor: Any = field(default=None, metadata={"saved": False})
    calls: list[int] = field(default_factory=list, metadata={"saved": False})


def test_unsaved_fields_are_not_written_and_come_back_as_their_default(tmp_path):
    obj = Cached(3, Inner(np.arange(3.0), cache=np.eye(3)), factor=np.ones((3, 3)), calls=[1, 2])
    entries: dict[str, np.ndarray] = {}
    model_io._put(entries, "x.", obj)
    assert sorted(entries) == ["x.inner.values", "x.n"]
    path = str(tmp_path / "a.npz")
    model_io._write_archive(
        path, {"format": "cmlm-fit", "version": model_io.FORMAT_VERSION}, entries
    )
    _, _, read = model_io._read_archive(path, "cmlm-fit", "fit file")
    back = model_io._get(read, "x.", Cached, path, {"inner": Inner})
    assert back.n == 3
    assert np.array_equal(back.inner.values, obj.inner.values)
    assert back.inner.cache is None
    assert back.factor is None
    assert back.calls == []


def old_format(fit: str, path: Path) -> None:
    """The fit as version 2 wrote it: every trait's arrays, no references."""
    _, meta, entries = model_io._read_archive(fit, "cmlm-fit", "fit file")
    meta = {**meta, "version": 2}
    del meta["shared"]
    with path.open("wb") as handle:
        np.savez(handle, **{"meta.json": np.asarray(json.dumps(meta))}, **entries)


def test_an_older_format_is_refused_in_one_line(fits, tmp_path):
    old = tmp_path / "old.fit.npz"
    old_format(fits["three"], old)
    assert Path(old).stat().st_size > 2 * Path(fits["three"]).stat().st_size
    result = CliRunner().invoke(
        main,
        ["scan", "--null", str(old), "--out", str(tmp_path / "x"), "-q"],
        catch_exceptions=False,
    )
    assert result.exit_code == 2
    assert result.output == (
        f"cmlm: error: fit file '{old}' has format version 2, this cmlm ({__version__}) reads "
        f"version {model_io.FORMAT_VERSION}; make it again with this version\n"
    )


@pytest.mark.parametrize("damage", ["reference", "truncated", "npy"])
def test_a_damaged_file_is_refused_naming_it(tmp_path, damage):
    path = tmp_path / "bad.fit.npz"
    meta = {"format": "cmlm-fit", "version": model_io.FORMAT_VERSION, "shared": {"b": "gone"}}
    if damage == "npy":
        with path.open("wb") as handle:
            np.save(handle, np.arange(3))
        expected = f"'{path}' is not a fit file written by cmlm (no 'cmlm-fit' metadata)"
    else:
        with path.open("wb") as handle:
            np.savez(handle, **{"meta.json": np.asarray(json.dumps(meta))}, a=np.arange(9.0))
        expected = f"fit file '{path}' is damaged: 'b' refers to 'gone', which it lacks"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-30])
        expected = f"'{path}' is not a fit file written by cmlm (no 'cmlm-fit' metadata)"
    with pytest.raises(CmlmError) as err:
        model_io._read_archive(str(path), "cmlm-fit", "fit file")
    assert str(err.value) == expected

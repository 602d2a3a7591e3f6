"""Sparse bigWig reader: entries equal pyBigWig's values for every section type; sparse vs dense tracks."""

from __future__ import annotations

import numpy as np
import pyBigWig
import pytest

from seq2reads.config import Replicate
from seq2reads.data import bigwig
from seq2reads.data.bigwig import open_sparse
from seq2reads.data.tracks import open_track
from tests.data.test_store import write_bigwig

LENS = [("a", 5000), ("b", 3000), ("c", 800)]


def dense(reader, chrom, start, end):
    """Entries as pyBigWig's values would give them: NaN where nothing is stored."""
    pos, val = reader.entries(chrom, start, end)
    assert np.all(np.diff(pos) > 0) and pos.dtype == np.int64 and val.dtype == np.float32
    out = np.full(end - start, np.nan, np.float32)
    out[pos - start] = val
    return out


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """bedGraph, variableStep (span 1 and 7) and fixedStep sections over several chromosomes."""
    path = tmp_path_factory.mktemp("bw") / "mixed.bw"
    rng = np.random.default_rng(0)
    bw = pyBigWig.open(str(path), "w")
    bw.addHeader(LENS, maxZooms=0)
    bw.addEntries(["a"] * 3, [0, 10, 100], ends=[5, 11, 150], values=[1.0, -2.0, 3.5])
    bw.addEntries("a", [200, 210, 300], values=[1.0, 2.0, np.nan], span=7)
    bw.addEntries("a", 1000, values=rng.normal(size=500).tolist(), span=3, step=5)
    bw.addEntries("b", [5, 9], values=[4.0, 5.0], span=1)
    bw.addEntries("c", list(range(0, 800, 2)), values=rng.random(400).tolist(), span=1)
    bw.close()
    return str(path)


QUERIES = [("a", 0, 5000), ("a", 3, 1203), ("a", 1001, 1002), ("a", 204, 212), ("a", 3500, 4000),
           ("b", 0, 3000), ("b", 6, 9), ("c", 0, 800), ("c", 101, 399)]


@pytest.mark.parametrize("chrom, start, end", QUERIES)
def test_entries_equal_pybigwig_values(mixed, chrom, start, end):
    r = open_sparse(mixed)
    ref = pyBigWig.open(mixed).values(chrom, start, end, numpy=True)
    np.testing.assert_array_equal(dense(r, chrom, start, end), ref)


def test_many_blocks_and_the_block_cache(tmp_path, monkeypatch):
    """A file with many data blocks, read in pieces out of order, with a one-block cache."""
    monkeypatch.setattr(bigwig, "_CACHED_BLOCKS", 1)
    rng = np.random.default_rng(1)
    v = (rng.random(200_000) < 0.05) * rng.integers(1, 5, 200_000).astype(np.float32)
    path = write_bigwig(tmp_path / "x.bw", {"x": 200_000, "y": 10}, {"x": v})
    r = open_sparse(path)
    assert len(r.leaves) >= 3
    ref = pyBigWig.open(path)
    for s, e in [(150_000, 200_000), (0, 70_000), (69_999, 150_001), (123, 124), (0, 200_000)]:
        np.testing.assert_array_equal(dense(r, "x", s, e), ref.values("x", s, e, numpy=True))
    assert len(r.entries("y", 0, 10)[0]) == 0 and len(r.entries("nope", 0, 10)[0]) == 0
    assert r.covered_fraction == pytest.approx((v != 0).sum() / 200_010)


def test_not_a_bigwig_gives_none(tmp_path):
    p = tmp_path / "x.bw"
    p.write_bytes(b"\x00" * 100)
    assert open_sparse(p) is None


def test_sparse_and_dense_tracks_agree(tmp_path, monkeypatch):
    """The pair track's entries are exactly the non-zero values (abs, NaN dropped); a dense file is
    not read sparsely."""
    from seq2reads.data import tracks

    rng = np.random.default_rng(2)
    lens = {"c1": 5000}
    plus = {"c1": rng.poisson(0.05, 5000).astype(np.float32)}
    minus = {"c1": rng.poisson(0.05, 5000).astype(np.float32)}
    t = open_track(Replicate(plus=write_bigwig(tmp_path / "p.bw", lens, plus),
                             minus=write_bigwig(tmp_path / "m.bw", lens, minus, sign=-1.0)))
    assert t.sparse
    v = t.values("c1", 100, 4000)
    for strand, (pos, val) in enumerate(t.entries("c1", 100, 4000)):
        np.testing.assert_array_equal(pos, np.nonzero(v[strand])[0] + 100)
        np.testing.assert_array_equal(val, v[strand][pos - 100])
    monkeypatch.setattr(tracks, "SPARSE_MAX_COVERED", 0.01)
    t2 = open_track(Replicate(plus=str(t.paths[0]), minus=str(t.paths[1])))
    assert not t2.sparse

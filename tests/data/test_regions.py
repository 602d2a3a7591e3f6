"""Regions: BED/narrowPeak parsing, windows, splits, chromosome-name checks, GC-matched background."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from seq2reads.config import Splits
from seq2reads.data.genome import Genome, gc_fraction
from seq2reads.data.regions import (
    assign_splits,
    background_windows,
    check_chrom_names,
    read_intervals,
    read_regions,
    windows_around,
)
from seq2reads.errors import UserError
from tests.data.test_genome import write_fasta


def test_read_bed_and_narrowpeak(tmp_path):
    p = tmp_path / "r.narrowPeak"
    p.write_text(
        "# comment\ntrack name=peaks\n"
        "chr1\t100\t200\tpA\t0\t.\t5\t-1\t-1\t30\n"      # summit -> 130
        "chr2\t10\t21\t.\t0\t.\t5\t-1\t-1\t-1\n"         # no summit -> midpoint 15, default name
        "chr1\t500\t600\n"                               # plain BED3 line -> midpoint 550
    )
    df = read_regions(p)
    assert list(df.columns) == ["chrom", "start", "end", "centre", "name"]
    assert df["centre"].tolist() == [130, 15, 550]
    assert df["name"].tolist() == ["pA", "chr2:10-21", "chr1:500-600"]
    assert df["start"].dtype == np.int64


@pytest.mark.parametrize(
    "text, match",
    [
        ("", "no regions"),
        ("# only a header\n", "no regions"),
        ("chr1\t100\t200\nchr1\tabc\t300\n", "line 2"),
        ("chr1\t100\n", "line 1"),
        ("chr1\t300\t200\n", "start < end"),
        ("chr1\t100\t200\tx\t0\t.\t1\t1\t1\t500\n", "summit"),
    ],
)
def test_bad_regions(tmp_path, text, match):
    p = tmp_path / "r.bed"
    p.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        read_regions(p)
    assert "\n" not in str(e.value)


def test_windows_and_splits():
    s, e = windows_around(np.array([100, 5]), 10)
    assert s.tolist() == [95, 0] and e.tolist() == [105, 10]
    s, e = windows_around(np.array([100]), 11)
    assert s.tolist() == [95] and e.tolist() == [106]
    df = pd.DataFrame({"chrom": ["chr1", "chr2", "chr8", "chrX"]})
    out = assign_splits(df, Splits(valid=["chr8"], test=["chr1"]))
    assert out["split"].tolist() == ["test", "train", "valid", "train"]
    with pytest.raises(UserError, match="both"):
        assign_splits(df, Splits(valid=["chr1"], test=["chr1"]))


def test_chrom_name_checks():
    genome = {"chr1": 100, "chr2": 100, "chrM": 10}
    check_chrom_names(genome, ["chr1", "chr2"], {"t": {"chr1": 100}}, Splits(valid=["chr2"], test=["chr1"]))
    with pytest.raises(UserError, match=r"'1'.*'chr1'") as e:
        check_chrom_names(genome, ["1", "2"])
    assert "with or without 'chr'" in str(e.value)
    with pytest.raises(UserError, match=r"lacks.*'chr9'"):
        check_chrom_names(genome, ["chr1", "chr9"])
    with pytest.raises(UserError, match=r"track uses '1'"):
        check_chrom_names(genome, ["chr1"], {"sample 'A'": {"1": 100, "2": 100}})
    with pytest.raises(UserError, match=r"different assemblies"):
        check_chrom_names(genome, ["chr1"], {"sample 'A'": {"chr1": 120}})
    with pytest.raises(UserError, match="splits.test"):
        check_chrom_names(genome, ["chr1"], None, Splits(valid=["chr2"], test=["1"]))


def _genome(tmp_path, rng):
    # chr1: GC-poor first half, GC-rich second half; chr2 with an N run; chr3 for the test split
    def seq(n, p_gc):
        return "".join(rng.choice(list("ACGT"), size=n, p=[(1 - p_gc) / 2, p_gc / 2, p_gc / 2, (1 - p_gc) / 2]))

    seqs = {"chr1": seq(20000, 0.3) + seq(20000, 0.7), "chr2": seq(10000, 0.5) + "N" * 10000 + seq(10000, 0.5),
            "chr3": seq(30000, 0.5)}
    return Genome(write_fasta(tmp_path / "g.fa", seqs))


def test_background_windows_avoid_and_match(tmp_path):
    rng = np.random.default_rng(0)
    g = _genome(tmp_path, rng)
    span = 200
    # peaks in GC-rich DNA on chr1 (train), plus a few on chr3 (test)
    centres = np.r_[np.arange(21000, 39000, 1500), np.arange(2000, 28000, 4000)]
    chroms = ["chr1"] * 12 + ["chr3"] * 7
    regions = pd.DataFrame({"chrom": chroms, "start": centres - 50, "end": centres + 50, "centre": centres})
    regions = assign_splits(regions, Splits(valid=["chr9"], test=["chr3"]))
    s0, _ = windows_around(regions["centre"].to_numpy(), span)
    regions["gc"] = [gc_fraction(g.codes(c, a, a + span)) for c, a in zip(regions.chrom, s0)]
    exclude = pd.DataFrame({"chrom": ["chr3"], "start": [0], "end": [15000]})
    bg = background_windows(g, regions, 19, span, Splits(valid=["chr9"], test=["chr3"]), exclude, seed=3)
    assert len(bg) == 19
    assert set(bg["kind"]) == {"background"}
    assert (bg["end"] - bg["start"] == span).all()
    # proportional to regions per split: 12 train, 7 test
    assert (bg["split"] == "train").sum() == 12 and (bg["split"] == "test").sum() == 7
    assert set(bg.loc[bg.split == "test", "chrom"]) == {"chr3"}
    for _, b in bg.iterrows():
        codes = g.codes(b.chrom, b.start, b.end)
        assert (codes != 4).all()  # no N
        assert b.gc == pytest.approx(gc_fraction(codes), abs=1e-6)
        same = regions[regions.chrom == b.chrom]
        w0 = same["centre"] - span // 2
        assert not ((w0 < b.end) & (w0 + span > b.start)).any()  # no overlap with region windows
        if b.chrom == "chr3":
            assert b.start >= 15000  # excluded interval avoided
    # GC matched: background GC close to the peaks', far from the genome-wide average of chr1+chr2 train
    train_bg = bg[bg.split == "train"]
    assert abs(train_bg["gc"].mean() - regions.loc[regions.split == "train", "gc"].mean()) < 0.08
    # reproducible with a seed, different with another
    again = background_windows(g, regions, 19, span, Splits(valid=["chr9"], test=["chr3"]), exclude, seed=3)
    pd.testing.assert_frame_equal(bg, again)
    other = background_windows(g, regions, 19, span, Splits(valid=["chr9"], test=["chr3"]), exclude, seed=4)
    assert not bg["start"].equals(other["start"])
    # unmatched sampling lands in GC-poor DNA too
    plain = background_windows(g, regions, 200, span, Splits(valid=["chr9"], test=["chr3"]), exclude,
                               gc_matched=False, seed=3)
    assert plain.loc[plain.split == "train", "gc"].min() < 0.4


def test_read_intervals(tmp_path):
    p = tmp_path / "x.bed"
    p.write_text("")
    assert len(read_intervals(p)) == 0
    p.write_text("chr1\t5\t10\tsomething\n")
    assert read_intervals(p)[["start", "end"]].values.tolist() == [[5, 10]]


@pytest.mark.parametrize(
    "text",
    [
        "chr1\t100\t200\tpA\t0\t.\t5\t-1\t-1\t30\nchr2\t10\t21\t.\t0\t.\t5\t-1\t-1\t-1\nchr1\t500\t600\t\t0\t.\t1\t1\t1\t\n",
        "chr1\t100\t200\nchr3\t7\t9\n",
        "chr1\t100\t200\r\nchr3\t7\t9\r\n",
        "chr1\t100\t200\tx\nchr1\t300\t400\n",          # ragged: second line shorter
        "chr1\t100\t200\n\nchr2\t5\t6\n",                  # blank line
        "chr1 100 200 a\nchr2 5 6 b\n",                    # space-separated
        "chr1\t+100\t0200\n",                             # odd integers: names built by the line reader
        "chr1\t100\t200\tx\t0\t.\t1\t1\t1\t99\n",          # summit at the last base
    ],
)
def test_fast_reader_matches_line_reader(tmp_path, text):
    """The pandas fast path of read_regions gives exactly what the line-by-line reader gives."""
    from seq2reads.data.regions import _fast_regions, _line_regions

    p = tmp_path / "r.bed"
    p.write_text(text)
    slow = _line_regions(text, p)
    pd.testing.assert_frame_equal(read_regions(p), slow)
    fast = _fast_regions(text)
    if fast is not None:
        pd.testing.assert_frame_equal(fast, slow)


def test_fast_reader_used_on_plain_tables():
    from seq2reads.data.regions import _fast_regions

    text = "".join(f"chr{i % 3 + 1}\t{i * 100}\t{i * 100 + 50}\tr{i}\t0\t.\t1\t1\t1\t{i % 50}\n" for i in range(200))
    fast = _fast_regions(text)
    assert fast is not None and len(fast) == 200
    assert fast["centre"].tolist() == [i * 100 + i % 50 for i in range(200)]
    assert fast["name"].tolist() == [f"r{i}" for i in range(200)]
    assert _fast_regions("# header\n" + text) is None  # header lines: the line reader runs

"""Tracks: every assay preset on a hand-made BAM with per-base counts written out; bigWig pairs."""

from __future__ import annotations

import numpy as np
import pytest

from seq2reads.config import Reads, Replicate
from seq2reads.data.tracks import ASSAY_PRESETS, BamTrack, open_track, read_rule
from seq2reads.errors import UserError
from tests.data.test_store import write_bam, write_bigwig

L = 40
PAIRED_R1 = 1 | 2 | 64 | 32  # paired, proper, read 1, mate reverse
PAIRED_R2 = 1 | 2 | 128  # paired, proper, read 2 (reverse flag added by write_bam)

# (chrom, pos, cigar, is_reverse, mapq, extra flags)
READS = [
    ("c1", 2, "5M", False, 60, 0),           # + read, bases 2..6
    ("c1", 10, "4M", True, 60, 0),           # - read, bases 10..13
    ("c1", 20, "3M2D3M", False, 60, 0),      # + read with a deletion: bases 20-22, 25-27
    ("c1", 30, "2M3N2M", True, 60, 0),       # - spliced read: bases 30-31, 35-36
    ("c1", 5, "4M", False, 60, PAIRED_R1),   # read 1 of a pair, + , bases 5..8
    ("c1", 15, "4M", True, 60, PAIRED_R2),   # read 2 of that pair, -, bases 15..18
    ("c1", 11, "3S4M", False, 60, 0),        # soft-clipped + read, aligned bases 11..14
    ("c1", 0, "3M", False, 5, 0),            # low MAPQ (dropped at min_mapq=10)
    ("c1", 1, "3M", False, 60, 1024),        # duplicate: always dropped
    ("c1", 3, "3M", False, 60, 256),         # secondary: always dropped
    ("c1", 4, "3M", False, 60, 2048),        # supplementary: always dropped
    ("c1", 7, "3M", False, 60, 4),           # unmapped (placed): always dropped
]


def counts(s: str) -> np.ndarray:
    """Per-base counts written as digits, spaces ignored."""
    return np.array([int(ch) for ch in s.replace(" ", "")], dtype=np.float32)


#                         0123456789 0123456789 0123456789 0123456789
FIVE_PLUS = counts(      "0010010000 0100000000 1000000000 0000000000")  # 2, 5 (read 1), 11 (clip), 20
FIVE_MINUS = counts(     "0000000000 0001000000 0000000000 0000001000")  # 13, 36 (spliced read's 5' end)
THREE_PLUS = counts(     "0000001010 0000100000 0000000100 0000000000")  # 6, 8, 14, 27 (after the deletion)
THREE_MINUS = counts(    "0000000000 1000000000 0000000000 1000000000")  # 10, 30
COV_PLUS = counts(       "0011122110 0111111110 1110011100 0000000000")  # read 2 on read 1's strand
COV_MINUS = counts(      "0000000000 1111000000 0000000000 1100011000")  # no coverage over the N gap

EXPECTED = {
    # preset: (plus, minus) with min_mapq = 10
    "pro-seq": (FIVE_MINUS, FIVE_PLUS),   # read 5' end on the opposite strand
    "pro-cap": (FIVE_PLUS, FIVE_MINUS),
    "gro-seq": (FIVE_PLUS, FIVE_MINUS),
    "gro-cap": (FIVE_PLUS, FIVE_MINUS),
    "generic": (FIVE_PLUS, FIVE_MINUS),
}


@pytest.fixture(scope="module")
def bam(tmp_path_factory):
    return write_bam(tmp_path_factory.mktemp("bam") / "reads.bam", {"c1": L, "c2": 100}, READS)


@pytest.mark.parametrize("assay", sorted(ASSAY_PRESETS))
def test_every_preset(bam, assay):
    t = open_track(Replicate(bam=bam), Reads(min_mapq=10), assay)
    v = t.values("c1", 0, L)
    assert v.shape == (2, L) and v.dtype == np.float32
    np.testing.assert_array_equal(v[0], EXPECTED[assay][0])
    np.testing.assert_array_equal(v[1], EXPECTED[assay][1])


@pytest.mark.parametrize(
    "end, flip, plus, minus",
    [
        (3, False, THREE_PLUS, THREE_MINUS),
        (3, True, THREE_MINUS, THREE_PLUS),
        ("coverage", False, COV_PLUS, COV_MINUS),
        ("coverage", True, COV_MINUS, COV_PLUS),
        (5, True, FIVE_MINUS, FIVE_PLUS),
    ],
)
def test_generic_end_and_flip(bam, end, flip, plus, minus):
    t = open_track(Replicate(bam=bam), Reads(end=end, flip_strand=flip, min_mapq=10), "generic")
    v = t.values("c1", 0, L)
    np.testing.assert_array_equal(v[0], plus)
    np.testing.assert_array_equal(v[1], minus)


def test_min_mapq_zero_counts_low_quality_read(bam):
    v = open_track(Replicate(bam=bam), Reads(min_mapq=0), "pro-cap").values("c1", 0, L)
    expect = FIVE_PLUS.copy()
    expect[0] += 1  # the MAPQ-5 read
    np.testing.assert_array_equal(v[0], expect)


def test_sub_windows_and_padding(bam):
    t = open_track(Replicate(bam=bam), Reads(end="coverage", min_mapq=10), "generic")
    full = t.values("c1", 0, L)
    np.testing.assert_array_equal(t.values("c1", 12, 29), full[:, 12:29])  # reads crossing the edges
    v = t.values("c1", -5, L + 5)  # outside the chromosome: zeros
    np.testing.assert_array_equal(v[:, 5:-5], full)
    assert v[:, :5].sum() == 0 and v[:, -5:].sum() == 0
    assert t.values("c2", 0, 50).sum() == 0
    assert t.values("chrX", 0, 10).shape == (2, 10)  # a chromosome the BAM lacks: zeros


def test_preset_overrides():
    assert read_rule("pro-seq").flip_strand is True and read_rule("pro-seq").end == 5
    assert read_rule("pro-seq", Reads(flip_strand=False)).flip_strand is False
    assert read_rule("generic", Reads(end="coverage")).end == "coverage"


def test_bigwig_pair_minus_negative(tmp_path):
    lens = {"c1": 50, "c2": 20}
    plus = np.zeros(50, np.float32)
    plus[[3, 10, 11]] = [1.0, 2.5, 4.0]
    minus = np.zeros(50, np.float32)
    minus[[0, 10, 49]] = [2.0, 1.0, 3.0]
    p = write_bigwig(tmp_path / "p.bw", lens, {"c1": plus})
    m = write_bigwig(tmp_path / "m.bw", lens, {"c1": minus}, sign=-1.0)  # stored negative
    t = open_track(Replicate(plus=p, minus=m))
    v = t.values("c1", -2, 52)
    assert v.shape == (2, 54)
    np.testing.assert_array_equal(v[0, 2:52], plus)
    np.testing.assert_array_equal(v[1, 2:52], minus)  # abs of the negative values; NaN (no data) -> 0
    assert (v[:, :2] == 0).all() and (v[:, 52:] == 0).all()
    assert t.values("c2", 0, 20).sum() == 0
    assert t.chroms == lens


def test_bad_track_files(tmp_path, bam):
    import shutil

    unindexed = tmp_path / "noindex.bam"
    shutil.copy(bam, unindexed)
    with pytest.raises(UserError, match="samtools index"):
        open_track(Replicate(bam=str(unindexed)))
    txt = tmp_path / "x.bw"
    txt.write_text("not a bigwig\n")
    with pytest.raises(UserError, match="not a bigWig"):
        open_track(Replicate(plus=str(txt), minus=str(txt)))
    with pytest.raises(UserError, match="not a BAM"):
        BamTrack(txt, read_rule("pro-seq"))
    with pytest.raises(UserError, match="not found"):
        open_track(Replicate(bam=str(tmp_path / "missing.bam")))


def test_cram_matches_bam(tmp_path, bam):
    import pysam

    from tests.data.test_genome import write_fasta

    ref = write_fasta(tmp_path / "ref.fa", {"c1": "ACGT" * 10, "c2": "A" * 100})
    pysam.faidx(str(ref))
    cram = tmp_path / "reads.cram"
    pysam.view("-C", "-T", str(ref), "-o", str(cram), bam, catch_stdout=False)
    pysam.index(str(cram))
    t = open_track(Replicate(bam=str(cram)), Reads(min_mapq=10), "pro-seq", reference=str(ref))
    np.testing.assert_array_equal(t.values("c1", 0, L), np.stack(EXPECTED["pro-seq"]))

"""Genome access: FASTA plain/bgzip (index built if missing), 2bit, codes, one-hot, GC, bad files."""

from __future__ import annotations

import gzip

import numpy as np
import pyfaidx
import pysam
import pytest

from seq2reads.data.genome import Genome, codes_from_str, gc_fraction, one_hot, str_from_codes
from seq2reads.errors import UserError

SEQS = {"chr1": "ACGTNacgtnRYKM" * 20 + "GGCC", "chr2": "TTTTAAAACCCCGGGG" * 7}


def write_fasta(path, seqs=SEQS, width=60):
    """Write a FASTA with wrapped lines; return the path."""
    with open(path, "w") as f:
        for name, s in seqs.items():
            f.write(f">{name} description\n")
            for i in range(0, len(s), width):
                f.write(s[i : i + width] + "\n")
    return path


def bgzip(path):
    """bgzip ``path`` to ``path.gz`` with htslib (pysam) and return the new path."""
    out = str(path) + ".gz"
    pysam.tabix_compress(str(path), out, force=True)
    return out


def test_codes_and_one_hot():
    c = codes_from_str("ACGTNacgtRYn")
    assert c.dtype == np.uint8
    assert c.tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 4, 4]
    oh = one_hot(c)
    assert oh.shape == (4, 12) and oh.dtype == np.float32
    assert oh[:, 4].sum() == 0 and oh[:, 10].sum() == 0  # N and IUPAC all-zero
    assert (oh[:, [0, 1, 2, 3]] == np.eye(4)).all()
    batch = one_hot(np.stack([c, c[::-1]]))
    assert batch.shape == (2, 4, 12)
    assert np.array_equal(batch[1], oh[:, ::-1])
    assert str_from_codes(c) == "ACGTNACGTNNN"


def test_gc_fraction():
    assert gc_fraction(codes_from_str("GGCCAATT")) == pytest.approx(0.5)
    assert gc_fraction(codes_from_str("GGNN")) == pytest.approx(1.0)  # N not counted
    assert np.isnan(gc_fraction(codes_from_str("NNNN")))
    assert gc_fraction(np.stack([codes_from_str("GGGG"), codes_from_str("ATAT")])).tolist() == [1.0, 0.0]


@pytest.mark.parametrize("compress", [False, True])
def test_fasta_plain_and_bgzip_match_pyfaidx(tmp_path, compress):
    fa = write_fasta(tmp_path / "g.fa")
    ref = pyfaidx.Fasta(str(fa))
    path = bgzip(fa) if compress else fa
    g = Genome(path)
    assert g.kind == ("bgzf" if compress else "fasta")
    assert g.chroms == {"chr1": len(SEQS["chr1"]), "chr2": len(SEQS["chr2"])}
    import os

    assert os.path.exists(str(path) + ".fai")  # index built
    if compress:
        assert os.path.exists(str(path) + ".gzi")
    for chrom, s, e in [("chr1", 0, 50), ("chr1", 100, 284), ("chr2", 7, 93)]:
        assert g.fetch(chrom, s, e) == str(ref[chrom][s:e])
    # padding with N outside the chromosome
    L = g.chroms["chr2"]
    assert g.fetch("chr2", -3, 2) == "NNN" + SEQS["chr2"][:2]
    assert g.fetch("chr2", L - 2, L + 3) == SEQS["chr2"][-2:] + "NNN"
    assert g.fetch("chr2", L + 5, L + 8) == "NNN"
    assert g.codes("chr1", 0, 6).tolist() == [0, 1, 2, 3, 4, 0]
    assert g.one_hot("chr1", 0, 6).shape == (4, 6)


def test_twobit(tmp_path):
    # py2bit reads .2bit but cannot write it: write the format by hand (UCSC spec, version 0).
    path = tmp_path / "g.2bit"
    write_twobit(path, {"chrA": "ACGTACGTTTGCAN" * 3, "chrB": "GGGGCCCCAAAA"})
    g = Genome(path)
    assert g.kind == "2bit"
    assert g.chroms == {"chrA": 42, "chrB": 12}
    assert g.fetch("chrA", 0, 14).upper() == "ACGTACGTTTGCAN"
    assert g.codes("chrB", -1, 3).tolist() == [4, 2, 2, 2]


def write_twobit(path, seqs):
    """Minimal .2bit writer (no masked blocks; N blocks recorded)."""
    import struct

    code = {"T": 0, "C": 1, "A": 2, "G": 3}
    names = list(seqs)
    header = struct.pack("<IIII", 0x1A412743, 0, len(names), 0)
    index_size = sum(1 + len(n) + 4 for n in names)
    offset = len(header) + index_size
    records = []
    for n in names:
        s = seqs[n].upper()
        nblocks = []
        i = 0
        while i < len(s):
            if s[i] == "N":
                j = i
                while j < len(s) and s[j] == "N":
                    j += 1
                nblocks.append((i, j - i))
                i = j
            else:
                i += 1
        packed = bytearray()
        for k in range(0, len(s), 4):
            byte = 0
            chunk = s[k : k + 4].ljust(4, "T")
            for ch in chunk:
                byte = (byte << 2) | code.get(ch, 0)
            packed.append(byte)
        rec = struct.pack("<II", len(s), len(nblocks))
        rec += b"".join(struct.pack("<I", a) for a, _ in nblocks) + b"".join(struct.pack("<I", b) for _, b in nblocks)
        rec += struct.pack("<I", 0) + struct.pack("<I", 0) + bytes(packed)
        records.append(rec)
    index = b""
    for n, rec in zip(names, records):
        index += struct.pack("<B", len(n)) + n.encode() + struct.pack("<I", offset)
        offset += len(rec)
    path.write_bytes(header + index + b"".join(records))


def test_bad_genome_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        Genome(tmp_path / "missing.fa")
    bad = tmp_path / "bad.fa"
    bad.write_text("this is not a fasta\n")
    with pytest.raises(UserError, match="not a FASTA"):
        Genome(bad)
    gz = tmp_path / "g.fa.gz"
    with gzip.open(gz, "wt") as f:
        f.write(">chr1\nACGT\n")
    with pytest.raises(UserError, match="bgzip"):
        Genome(gz)


@pytest.mark.parametrize("compress", [False, True])
def test_window_codes_match_codes(tmp_path, compress):
    fa = write_fasta(tmp_path / "g.fa")
    g = Genome(bgzip(fa) if compress else fa)
    L = g.chroms["chr1"]
    starts = np.array([-5, 0, 17, L - 30, L - 3, L + 2])
    out = g.window_codes("chr1", starts, 12)
    assert out.shape == (6, 12) and out.dtype == np.uint8
    for s, row in zip(starts.tolist(), out):
        np.testing.assert_array_equal(row, g.codes("chr1", s, s + 12))
    with pytest.raises(UserError, match="not in genome"):
        g.window_codes("chrZ", starts, 12)

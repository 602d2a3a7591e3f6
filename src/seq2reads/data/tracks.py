"""Read tracks: stranded bigWig pairs and BAM/CRAM files as per-base counts per strand.

Every track answers ``.values(chrom, start, end) -> float32 (2, L)`` (index 0 = plus strand of the
*RNA*, 1 = minus), zero outside the chromosome, and ``.chroms -> dict[str, int]``.

Assay presets (``ASSAY_PRESETS``)
---------------------------------
Which read end marks the polymerase (or the TSS) and whether the read's strand is the RNA's strand:

============  =======  ===========  ==============================================================
assay         end      flip_strand  why (source)
============  =======  ===========  ==============================================================
``pro-seq``   5'       yes          Read 1 is the reverse complement of the RNA 3' end, so its 5'
                                    end, on the opposite strand, is the biotin-NTP incorporation
                                    site = the polymerase active site (Kwak et al. 2013 Science
                                    339:950; Mahat et al. 2016 Nat Protoc 11:1455; Danko lab
                                    proseq2.0 pipeline reports the 5' end of reverse-complemented
                                    R1).
``pro-cap``   5'       no           Read 1 starts at the capped RNA 5' end, sense to the RNA: its 5'
                                    end is the TSS (Kwak et al. 2013; Mahat et al. 2016).
``gro-seq``   5'       no           GRO-seq reads are sense to the RNA (Core et al. 2008 Science
                                    322:1845; Danko lab notes "GRO-seq libraries should not be
                                    reverse complemented"); the common base-resolution track counts
                                    the read 5' end on its own strand (proseq2.0, bedtools genomecov
                                    -5 -strand). The RNA is base-hydrolysed to ~100 nt first, so
                                    this is a fragment start, not the polymerase position.
``gro-cap``   5'       no           Like PRO-cap: read 1's 5' end is the capped RNA 5' end / TSS
                                    (Core et al. 2014 Nat Genet 46:1311).
``generic``   config   config       Set ``reads.end`` (5, 3 or ``coverage``) and
                                    ``reads.flip_strand`` yourself (defaults: 5, no).
============  =======  ===========  ==============================================================

``reads.end`` / ``reads.flip_strand`` in the config override any preset.

Counting rules (BAM/CRAM)
-------------------------
- Skipped: unmapped, secondary, supplementary, QC-fail, duplicate-flagged reads, and reads with
  MAPQ < ``reads.min_mapq``.
- Read ends are alignment ends (soft clips excluded): on the + strand the 5' end is
  ``reference_start`` and the 3' end ``reference_end - 1``; on the - strand the reverse. Deletions
  and spliced (N) gaps are inside ``reference_end``, so the 3' end of a spliced read is correct.
- Paired-end: ``end`` 5/3 counts read 1 only (read 2's 5' end is a fragment end of the other
  molecule side and would double count). ``coverage`` counts the aligned bases (M/=/X) of both
  mates, each on read 1's strand (so the fragment keeps one strand).
- ``flip_strand`` puts a count on the strand opposite to read 1's alignment strand.

Extraction is vectorised: a block's reads are fetched once and their positions binned with numpy
(coverage through a difference array), never one base at a time.

Sparse access (``prepare``)
---------------------------
Besides the dense ``values``, a track whose ``sparse`` attribute is True answers
``.entries(chrom, start, end)``: per strand, the sorted positions that carry a non-zero value and
those values (``float32``, already ``abs`` and NaN-free), i.e. exactly the non-zero entries of
``values``. Read-end counts from a BAM and base-resolution bigWigs are ~99% zeros, so ``prepare``
scatters these entries into its zero-filled windows instead of building and copying dense blocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seq2reads.errors import UserError, require_file

# bigWigs with a stored value on fewer than this fraction of bases are read sparsely (see
# seq2reads.data.bigwig); above it a dense array is the cheaper form.
SPARSE_MAX_COVERED = 0.25

Entries = tuple[np.ndarray, np.ndarray]  # (positions int64 sorted, values float32)


@dataclass(frozen=True)
class ReadRule:
    """How a read becomes counts: ``end`` in {5, 3, 'coverage'}; ``flip_strand``."""

    end: int | str
    flip_strand: bool


ASSAY_PRESETS: dict[str, ReadRule] = {
    "pro-seq": ReadRule(end=5, flip_strand=True),
    "pro-cap": ReadRule(end=5, flip_strand=False),
    "gro-seq": ReadRule(end=5, flip_strand=False),
    "gro-cap": ReadRule(end=5, flip_strand=False),
    "generic": ReadRule(end=5, flip_strand=False),
}


def read_rule(assay: str, reads_cfg=None) -> ReadRule:
    """The preset of ``assay`` with any ``reads.end`` / ``reads.flip_strand`` override applied."""
    if assay not in ASSAY_PRESETS:
        raise UserError(f"unknown assay '{assay}': use one of {', '.join(ASSAY_PRESETS)}.")
    rule = ASSAY_PRESETS[assay]
    end = getattr(reads_cfg, "end", None)
    flip = getattr(reads_cfg, "flip_strand", None)
    return ReadRule(end=rule.end if end is None else end, flip_strand=rule.flip_strand if flip is None else flip)


def _sniff_track(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head in (bytes.fromhex("888FFC26"), bytes.fromhex("26FC8F88")):
        return "bigwig"
    if head[:2] == b"\x1f\x8b":
        return "bam"
    if head == b"CRAM":
        return "cram"
    return "unknown"


def clean_values(x: np.ndarray) -> np.ndarray:
    """In place: ``|x|`` (minus strands stored negative) with NaN (no data) -> 0; returns ``x``."""
    np.abs(x, out=x)
    np.fmax(x, 0.0, out=x)
    return x


class BigWigPairTrack:
    """Two bigWigs (plus, minus strand). A minus strand stored negative is read as ``abs``; NaN -> 0."""

    def __init__(self, plus: str | Path, minus: str | Path) -> None:
        self.paths = (Path(plus), Path(minus))
        for p in self.paths:
            require_file(p, "bigWig file")
            if _sniff_track(p) != "bigwig":
                raise UserError(f"{p} is not a bigWig file: give stranded bigWigs (plus/minus) or a bam for this sample.")
        self._handles = None
        self._sparse_readers: list | None = None
        self._chroms: dict[str, int] | None = None

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_handles"] = None
        d["_sparse_readers"] = None
        return d

    def _open(self):
        if self._handles is None:
            import pyBigWig

            hs = []
            for p in self.paths:
                try:
                    h = pyBigWig.open(str(p))
                except RuntimeError:
                    h = None
                if h is None or not h.isBigWig():
                    raise UserError(f"{p} is not a readable bigWig file: check or re-create it.")
                hs.append(h)
            self._handles = hs
        return self._handles

    @property
    def chroms(self) -> dict[str, int]:
        if self._chroms is None:
            plus, minus = self._open()
            c = dict(plus.chroms())
            for k, v in minus.chroms().items():
                c.setdefault(k, v)
            self._chroms = {k: int(v) for k, v in c.items()}
        return self._chroms

    def values(self, chrom: str, start: int, end: int, raw: bool = False) -> np.ndarray:
        """Per-base values ``float32 (2, end - start)`` (plus, minus; >= 0; 0 outside the chromosome).

        ``raw=True`` skips the ``abs`` and NaN -> 0 clean-up (the caller applies :func:`clean_values`
        to what it keeps; ``prepare`` does so on the windows only, not on whole blocks).
        """
        start, end = int(start), int(end)
        out = np.zeros((2, end - start), dtype=np.float32)
        for s, h in enumerate(self._open()):
            length = h.chroms(chrom)
            if not length:
                continue
            lo, hi = max(start, 0), min(end, length)
            if hi <= lo:
                continue
            seg = out[s, lo - start : hi - start]
            seg[...] = h.values(chrom, lo, hi, numpy=True)
            if not raw:
                clean_values(seg)
        return out

    def _readers(self) -> list:
        """Per strand a :class:`~seq2reads.data.bigwig.BigWigIndex`, or ``[]`` if either file is dense
        or not readable that way."""
        if self._sparse_readers is None:
            from seq2reads.data.bigwig import open_sparse

            rs = [open_sparse(p) for p in self.paths]
            ok = all(r is not None and r.covered_fraction <= SPARSE_MAX_COVERED for r in rs)
            if not ok:
                for r in rs:
                    if r is not None:
                        r.close()
            self._sparse_readers = rs if ok else []
        return self._sparse_readers

    @property
    def sparse(self) -> bool:
        """True when both files are sparse enough for :meth:`entries` to beat :meth:`values`."""
        return bool(self._readers())

    def entries(self, chrom: str, start: int, end: int) -> tuple[Entries, Entries]:
        """Per strand (plus, minus) the non-zero entries of :meth:`values` in ``[start, end)``.

        Only when :attr:`sparse`. Returns ((positions int64 sorted, values float32 > 0), ...).
        """
        out = []
        for r in self._readers():
            pos, val = r.entries(chrom, int(start), int(end))
            val = np.abs(val)
            keep = val > 0  # drops zeros and NaN, which values() turns into 0
            out.append((pos[keep], val[keep]) if not keep.all() else (pos, val))
        return out[0], out[1]

    def close(self) -> None:
        for h in self._handles or ():
            h.close()
        for r in self._sparse_readers or ():
            r.close()
        self._handles = None
        self._sparse_readers = None


_NO_POS = np.zeros(0, np.int64)


class BamTrack:
    """A BAM/CRAM file (indexed) turned into per-base counts with a :class:`ReadRule`."""

    def __init__(self, path: str | Path, rule: ReadRule, min_mapq: int = 0, reference: str | None = None) -> None:
        self.path = Path(path)
        require_file(self.path, "BAM/CRAM file")
        kind = _sniff_track(self.path)
        if kind not in ("bam", "cram"):
            raise UserError(f"{self.path} is not a BAM or CRAM file: give an indexed BAM/CRAM, or plus/minus bigWigs.")
        if rule.end not in (5, 3, "coverage"):
            raise UserError(f"reads.end must be 5, 3 or coverage, got {rule.end!r}.")
        self.rule = rule
        self.min_mapq = int(min_mapq)
        self.reference = reference
        self._handle = None
        self._chroms: dict[str, int] | None = None
        self._open()  # fail early on a missing index

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_handle"] = None
        return d

    def _open(self):
        if self._handle is None:
            import pysam

            try:
                h = pysam.AlignmentFile(str(self.path), reference_filename=self.reference)
            except (ValueError, OSError) as e:
                raise UserError(f"cannot read alignments from {self.path} ({e}): check it is a valid BAM/CRAM.") from None
            try:
                has_index = h.check_index()
            except (ValueError, AttributeError):
                has_index = False
            if not has_index:
                h.close()
                raise UserError(
                    f"BAM/CRAM {self.path} has no index: sort and index it with "
                    f"`samtools sort` and `samtools index {self.path.name}` (or pysam.index)."
                )
            self._handle = h
        return self._handle

    @property
    def chroms(self) -> dict[str, int]:
        if self._chroms is None:
            h = self._open()
            self._chroms = {n: int(ln) for n, ln in zip(h.references, h.lengths)}
        return self._chroms

    @property
    def sparse(self) -> bool:
        """True for read-end counts (``entries`` available); False for coverage."""
        return self.rule.end != "coverage"

    def values(self, chrom: str, start: int, end: int) -> np.ndarray:
        """Per-base counts ``float32 (2, end - start)`` (RNA plus, minus), zero outside the chromosome."""
        start, end = int(start), int(end)
        L = end - start
        out = np.zeros((2, L), dtype=np.float32)
        length = self.chroms.get(chrom)
        if not length or min(end, length) <= max(start, 0):
            return out
        if self.rule.end == "coverage":
            starts, stops, strand = self._blocks(chrom, max(start, 0), min(end, length))
            # Coverage through a difference array: +1 at each block start, -1 at its end.
            n = 2 * (L + 1)
            up = np.bincount(strand * (L + 1) + np.clip(starts - start, 0, L), minlength=n)
            down = np.bincount(strand * (L + 1) + np.clip(stops - start, 0, L), minlength=n)
            diff = (up - down).reshape(2, L + 1)
            return np.cumsum(diff[:, :L], axis=1).astype(np.float32)
        for s, (pos, cnt) in enumerate(self.entries(chrom, start, end)):
            out[s, pos - start] = cnt
        return out

    def entries(self, chrom: str, start: int, end: int) -> tuple[Entries, Entries]:
        """Per strand (plus, minus): sorted positions in ``[start, end)`` with counts, and the counts.

        Read-end rules only (not ``coverage``). Returns ((positions int64, counts float32), ...).
        """
        start, end = int(start), int(end)
        length = self.chroms.get(chrom) or 0
        lo, hi = max(start, 0), min(end, length)
        out = []
        for pos in self._ends(chrom, lo, hi) if hi > lo else (_NO_POS, _NO_POS):
            pos = pos[(pos >= lo) & (pos < hi)]
            pos, cnt = np.unique(pos, return_counts=True)
            out.append((pos, cnt.astype(np.float32)))
        return out[0], out[1]

    # pysam yields one object per read (there is no vectorised reader), so reads are filtered in
    # a Python loop kept to the bare attribute reads; positions are then counted with numpy.
    def _ends(self, chrom: str, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Counted read-end positions (int64, unsorted) of the reads overlapping ``[lo, hi)``, per strand."""
        h = self._open()
        five, min_mapq = self.rule.end == 5, self.min_mapq
        fwd: list[int] = []  # reads aligned on the + strand
        rev: list[int] = []
        add_fwd, add_rev = fwd.append, rev.append
        for r in h.fetch(chrom, lo, hi):
            flag = r.flag
            # 0xF04: unmapped, secondary, QC-fail, duplicate, supplementary; 0x81: read 2 of a pair
            # (min_mapq first: with the default 0 the mapping-quality attribute is never read)
            if flag & 0xF04 or (flag & 0x81) == 0x81 or (min_mapq and r.mapping_quality < min_mapq):
                continue
            # 5' end: first aligned base on + reads, last on - reads; 3' end the other way round.
            # (reference_end is None for a mapped read without a CIGAR: no alignment end to count)
            if flag & 0x10:
                if five:
                    e = r.reference_end
                    if e is not None:
                        add_rev(e - 1)
                else:
                    add_rev(r.reference_start)
            elif five:
                add_fwd(r.reference_start)
            else:
                e = r.reference_end
                if e is not None:
                    add_fwd(e - 1)
        ends = (np.asarray(fwd, np.int64), np.asarray(rev, np.int64))
        # the RNA strand: the read's own, or the opposite one with flip_strand
        return (ends[1], ends[0]) if self.rule.flip_strand else ends

    def _blocks(self, chrom: str, lo: int, hi: int):
        """Aligned blocks (starts, stops, strand) of reads overlapping ``[lo, hi)`` (coverage)."""
        h = self._open()
        flip, min_mapq = int(self.rule.flip_strand), self.min_mapq
        starts: list[int] = []
        stops: list[int] = []
        strand: list[int] = []
        for r in h.fetch(chrom, lo, hi):
            flag = r.flag
            if flag & 0xF04 or (min_mapq and r.mapping_quality < min_mapq):
                continue
            rev = bool(flag & 0x10)
            if flag & 0x1 and flag & 0x80:
                rev = not rev  # read 2: the fragment's strand is read 1's
            s = int(rev) ^ flip
            for b0, b1 in r.get_blocks():
                starts.append(b0)
                stops.append(b1)
                strand.append(s)
        return np.asarray(starts, np.int64), np.asarray(stops, np.int64), np.asarray(strand, np.int64)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def open_track(sample, reads_cfg=None, assay: str = "generic", reference: str | None = None):
    """The track of one config sample (or replicate): a bigWig pair or a BAM/CRAM.

    Parameters
    ----------
    sample : config.Sample or config.Replicate
        With ``plus``/``minus`` bigWigs or a ``bam``.
    reads_cfg : config.Reads, optional
        ``end``/``flip_strand`` overrides and ``min_mapq`` (BAM only).
    assay : str
        Preset name (see ``ASSAY_PRESETS``).
    reference : str, optional
        Genome FASTA, needed to decode CRAM.
    """
    if getattr(sample, "bam", None):
        rule = read_rule(assay, reads_cfg)
        return BamTrack(sample.bam, rule, getattr(reads_cfg, "min_mapq", 0) or 0, reference=reference)
    return BigWigPairTrack(sample.plus, sample.minus)

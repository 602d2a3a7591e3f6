"""Genome access: FASTA (plain or bgzip) and .2bit, as strings, integer codes and one-hot.

Conventions: coordinates are 0-based, half-open; integer codes are ``uint8`` with
A C G T N = 0..4 (lower case = upper case, every other IUPAC letter = N); one-hot is
``float32 (4, L)`` (or ``(N, 4, L)``) in the order A C G T with N all-zero.

FASTA files are read through ``pysam.FastaFile`` (htslib ``faidx``): it reads plain and
BGZF-compressed files alike and builds the ``.fai`` (and ``.gzi``) index when missing. We use it
rather than pyfaidx because pyfaidx needs Biopython for bgzip files, and htslib's random access is
faster for the large block reads ``prepare`` does. ``.2bit`` files are read with ``py2bit``.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from seq2reads.errors import UserError, require_file

ALPHABET = "ACGT"
N_CODE = 4

# Byte -> code lookup table (256 entries): A/a=0, C/c=1, G/g=2, T/t=3, anything else (N, IUPAC) = 4.
_CODE_LUT = np.full(256, N_CODE, dtype=np.uint8)
for _i, _b in enumerate(ALPHABET):
    _CODE_LUT[ord(_b)] = _i
    _CODE_LUT[ord(_b.lower())] = _i

# The same table as bytes, for ``bytes.translate`` (a C loop, several times faster than indexing
# the numpy table with a uint8 array).
_CODE_TABLE = _CODE_LUT.tobytes()

# Code -> one-hot rows (5, 4): row 4 (N) is all zero.
_ONE_HOT_LUT = np.zeros((5, 4), dtype=np.float32)
_ONE_HOT_LUT[np.arange(4), np.arange(4)] = 1.0

_TWOBIT_MAGIC = (0x1A412743).to_bytes(4, "little")


def codes_from_str(s: str | bytes) -> np.ndarray:
    """Integer codes ``uint8 (L,)`` of a DNA string (A C G T N = 0..4; case-insensitive)."""
    b = s.encode("ascii", errors="replace") if isinstance(s, str) else s
    return _CODE_LUT[np.frombuffer(b, dtype=np.uint8)]


def str_from_codes(codes: np.ndarray) -> str:
    """The upper-case DNA string of integer codes (inverse of :func:`codes_from_str` up to case/IUPAC)."""
    return np.frombuffer(b"ACGTN", dtype=np.uint8)[np.asarray(codes)].tobytes().decode()


def one_hot(codes: np.ndarray) -> np.ndarray:
    """One-hot encode integer codes.

    Parameters
    ----------
    codes : uint8 array (L,) or (N, L)

    Returns
    -------
    float32 array (4, L) or (N, 4, L); N positions are all-zero.
    """
    x = _ONE_HOT_LUT[np.asarray(codes)]  # (..., L, 4)
    return np.ascontiguousarray(np.moveaxis(x, -1, -2))


def gc_fraction(codes: np.ndarray) -> np.ndarray | float:
    """G+C fraction among the A/C/G/T bases of ``codes`` (last axis); NaN where all bases are N."""
    codes = np.asarray(codes)
    acgt = (codes < N_CODE).sum(-1)
    gc = ((codes == 1) | (codes == 2)).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(acgt > 0, gc / np.maximum(acgt, 1), np.nan)
    return float(out) if out.ndim == 0 else out.astype(np.float32)


def _sniff(path: Path) -> str:
    """'2bit', 'fasta', 'bgzf' (bgzip FASTA) or raise UserError."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == _TWOBIT_MAGIC:
        return "2bit"
    if head[:2] == b"\x1f\x8b":
        # BGZF: gzip with the FEXTRA flag and a 'BC' subfield (SAM/BAM spec, section 4.1).
        is_bgzf = len(head) >= 14 and head[3] & 4 and head[12:14] == b"BC"
        with gzip.open(path, "rb") as g:
            try:
                first = g.read(256).lstrip()
            except OSError:
                first = b""
        if not first.startswith(b">"):
            raise UserError(f"genome {path} is a gzip file but not a FASTA inside: give a FASTA (.fa/.fa.gz) or .2bit file.")
        if not is_bgzf:
            raise UserError(
                f"genome {path} is gzip- but not bgzip-compressed, so it cannot be indexed: "
                f"recompress it with `gunzip -c {path.name} | bgzip > {path.stem}.gz` (or use the plain FASTA)."
            )
        return "bgzf"
    if head.lstrip()[:1] == b">":
        return "fasta"
    raise UserError(f"genome {path} is not a FASTA or .2bit file: give a FASTA (plain or bgzip) or a .2bit genome.")


class Genome:
    """A reference genome (FASTA plain/bgzip or .2bit), opened lazily and picklable.

    Parameters
    ----------
    path : str or Path
        FASTA (``.fa``, ``.fa.gz`` bgzip; ``.fai``/``.gzi`` built if missing) or ``.2bit``.

    Examples
    --------
    >>> g = Genome("genome.fa")                      # doctest: +SKIP
    >>> g.codes("chr1", -2, 3)                       # doctest: +SKIP
    array([4, 4, 0, 1, 2], dtype=uint8)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        require_file(self.path, "genome file")
        self.kind = _sniff(self.path)
        self._handle = None
        self._chroms: dict[str, int] | None = None

    # -- file handle (opened per process; dropped on pickling) ---------------------------------
    def __getstate__(self):
        d = dict(self.__dict__)
        d["_handle"] = None
        return d

    def _open(self):
        if self._handle is None:
            if self.kind == "2bit":
                import py2bit

                try:
                    self._handle = py2bit.open(str(self.path))
                except RuntimeError:
                    raise UserError(f"genome {self.path} is not a readable .2bit file: check or re-create it.") from None
            else:
                import pysam

                try:
                    self._handle = pysam.FastaFile(str(self.path))
                except (OSError, ValueError) as e:
                    raise UserError(
                        f"cannot read or index genome FASTA {self.path} ({e}): check the file is a valid FASTA "
                        "(bgzip, not gzip, if compressed) and its folder is writable for the .fai index."
                    ) from None
        return self._handle

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    # -- API -----------------------------------------------------------------------------------
    @property
    def chroms(self) -> dict[str, int]:
        """Chromosome name -> length (bp), in file order."""
        if self._chroms is None:
            h = self._open()
            if self.kind == "2bit":
                self._chroms = {k: int(v) for k, v in h.chroms().items()}
            else:
                self._chroms = {n: int(ln) for n, ln in zip(h.references, h.lengths)}
        return self._chroms

    def fetch(self, chrom: str, start: int, end: int) -> str:
        """Sequence of ``[start, end)`` as stored (case kept), padded with N outside the chromosome."""
        length = self.chroms.get(chrom)
        if length is None:
            raise UserError(f"chromosome '{chrom}' is not in genome {self.path.name}: check the chromosome names.")
        start, end = int(start), int(end)
        lo, hi = max(start, 0), min(end, length)
        inner = ""
        if hi > lo:
            h = self._open()
            inner = h.sequence(chrom, lo, hi) if self.kind == "2bit" else h.fetch(chrom, lo, hi)
        left = "N" * (min(lo, end) - start) if start < 0 else ""
        right = "N" * (end - max(hi, start)) if end > length else ""
        return left + inner + right

    def codes(self, chrom: str, start: int, end: int) -> np.ndarray:
        """Integer codes ``uint8 (end - start,)`` of ``[start, end)`` (N = 4 outside the chromosome)."""
        return codes_from_str(self.fetch(chrom, start, end))

    def window_codes(self, chrom: str, starts: np.ndarray, span: int, out: np.ndarray | None = None) -> np.ndarray:
        """Codes ``uint8 (n, span)`` of the windows ``[s, s + span)`` of one chromosome (N outside it).

        One read per window: cheaper than reading a block around many windows and slicing it when
        the windows cover less than about half of the block (and never slower than a few us each).

        Parameters
        ----------
        chrom : str
        starts : int array (n,)
            Window starts (may be negative or run past the chromosome end).
        span : int
        out : uint8 array (n, span), optional
            Filled in place and returned.
        """
        length = self.chroms.get(chrom)
        if length is None:
            raise UserError(f"chromosome '{chrom}' is not in genome {self.path.name}: check the chromosome names.")
        starts = np.asarray(starts, np.int64)
        if out is None:
            out = np.empty((len(starts), span), np.uint8)
        h = self._open()
        get = h.sequence if self.kind == "2bit" else h.fetch
        for i, s in enumerate(starts.tolist()):
            lo, hi = max(s, 0), min(s + span, length)
            if lo > s or hi < s + span or hi <= lo:
                out[i] = N_CODE
            if hi > lo:
                raw = get(chrom, lo, hi).encode("ascii", errors="replace").translate(_CODE_TABLE)
                out[i, lo - s : hi - s] = np.frombuffer(raw, np.uint8)
        return out

    def one_hot(self, chrom: str, start: int, end: int) -> np.ndarray:
        """One-hot ``float32 (4, end - start)`` of ``[start, end)``."""
        return one_hot(self.codes(chrom, start, end))

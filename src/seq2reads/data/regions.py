"""Regions: BED / narrowPeak reading, windows, chromosome splits, GC-matched background windows.

Coordinates are 0-based, half-open (as in BED). A region's centre is the narrowPeak summit
(``start + column 10``) when present and not -1, else the midpoint ``(start + end) // 2``.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from seq2reads.errors import UserError, require_file

SPLITS = ("train", "valid", "test")
log = logging.getLogger(__name__)
_HEADER_PREFIXES = ("#", "track", "browser")


def _read_text(path: Path, what: str) -> str:
    """The file's text (gzip allowed)."""
    require_file(path, what)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        import gzip

        raw = gzip.decompress(raw)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not a text BED file: give a BED or narrowPeak file (tab-separated).") from None
    return text


def _data_lines(text: str) -> list[tuple[int, list[str]]]:
    """(1-based line number, fields) of the data lines of a BED-like text."""
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith(_HEADER_PREFIXES):
            continue
        fields = line.rstrip("\r\n").split("\t")
        if len(fields) < 3:
            fields = line.split()
        rows.append((i, fields))
    return rows


def _parse_intervals(rows, path: Path, what: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    chroms, starts, ends = [], [], []
    for i, f in rows:
        if len(f) < 3:
            raise UserError(f"{what} {path} line {i} is malformed (need chrom, start, end separated by tabs): {'  '.join(f)[:60]!r}.")
        try:
            s, e = int(f[1]), int(f[2])
        except ValueError:
            raise UserError(
                f"{what} {path} line {i}: start/end must be integers, got {f[1][:20]!r}, {f[2][:20]!r}; fix that line."
            ) from None
        if s < 0 or e <= s:
            raise UserError(f"{what} {path} line {i}: need 0 <= start < end, got start={s}, end={e}; fix that line.")
        chroms.append(f[0])
        starts.append(s)
        ends.append(e)
    return chroms, np.asarray(starts, np.int64), np.asarray(ends, np.int64)


_IRREGULAR = re.compile(r"(?:^|\n)(?:#|track|browser|[ \t]*\r?(?:\n|$))")


def _irregular(text: str) -> bool:
    """Whether ``text`` may have a header, comment or blank line (``_IRREGULAR``); True also for a
    few regular texts (a first line starting with a space), which the line reader then parses.
    Plain substring tests first: the regular expression alone costs ~4 ms on 10,000 lines."""
    if not text or text[0] in " \t\r\n":
        return True
    if not any(x in text for x in ("#", "track", "browser", "\n\n", "\n\r", "\n ", "\n\t")):
        return False
    return _IRREGULAR.search(text) is not None


def _fast_regions(text: str) -> pd.DataFrame | None:
    """:func:`read_regions`' table through pandas' C parser, or None when the text is not a plain,
    regular, valid table (header or blank lines, ragged or space-separated columns, a bad value):
    the line-by-line reader then parses it and names the first bad line.

    Same result as that reader (a test checks); it only exists for speed: 10,000 regions in ~10 ms
    instead of ~80 ms, time that ``prepare`` spends before its workers start.
    """
    if not text or _irregular(text.rstrip("\r\n")):
        return None
    try:
        df = pd.read_csv(io.StringIO(text), sep="\t", header=None, dtype=str, na_filter=False, engine="c")
    except (ValueError, pd.errors.ParserError):
        return None
    if df.shape[1] < 3 or not len(df) or df.isna().to_numpy().any():
        return None  # too few columns, or a short (ragged) line
    try:
        starts = df[1].astype(np.int64).to_numpy()
        ends = df[2].astype(np.int64).to_numpy()
    except (ValueError, OverflowError):
        return None
    if (starts < 0).any() or (ends <= starts).any():
        return None
    centres = (starts + ends) // 2
    if df.shape[1] >= 10:
        col = df[9].str.strip() if " " in text or "\r" in text else df[9]
        has = ~col.isin(["", "-1"]).to_numpy()
        try:
            summit = col.where(has, "0").astype(np.int64).to_numpy()
        except (ValueError, OverflowError):
            return None
        if ((summit < 0) | (summit >= ends - starts))[has].any():
            return None
        centres = np.where(has, starts + summit, centres)
    chrom = df[0]
    unnamed = df[3].isin(["", "."]) if df.shape[1] >= 4 else None
    if unnamed is not None and not unnamed.any():
        names = df[3]  # every line named: skip building the default names
    else:
        # from the parsed integers, as the line reader does ('+5' and '05' name as 5)
        default = chrom + ":" + pd.Series(starts).astype(str) + "-" + pd.Series(ends).astype(str)
        names = default if unnamed is None else df[3].where(~unnamed, default)
    return pd.DataFrame({"chrom": chrom.to_numpy(dtype=object), "start": starts, "end": ends, "centre": centres,
                         "name": names.to_numpy(dtype=object)})


def read_regions(path: str | Path) -> pd.DataFrame:
    """Read a BED or narrowPeak file.

    Returns
    -------
    DataFrame with columns chrom (str), start, end, centre (int64, 0-based), name (str; column 4,
    or ``chrom:start-end`` when absent or '.'), in file order.

    Raises
    ------
    UserError
        Missing, empty or malformed file (naming the first bad line).
    """
    path = Path(path)
    text = _read_text(path, "regions file")
    fast = _fast_regions(text)
    return fast if fast is not None else _line_regions(text, path)


def _line_regions(text: str, path: Path) -> pd.DataFrame:
    """:func:`read_regions`' table, parsed line by line (any BED-like text; names the first bad line)."""
    rows = _data_lines(text)
    if not rows:
        raise UserError(f"regions file {path} has no regions: give a BED/narrowPeak file with at least one line.")
    chroms, starts, ends = _parse_intervals(rows, path, "regions file")
    centres = (starts + ends) // 2
    names = []
    for k, (i, f) in enumerate(rows):
        if len(f) >= 10 and f[9].strip() not in ("", "-1"):
            try:
                summit = int(f[9])
            except ValueError:
                raise UserError(f"regions file {path} line {i}: narrowPeak summit (column 10) must be an integer, got {f[9][:20]!r}.") from None
            if not 0 <= summit < ends[k] - starts[k]:
                raise UserError(
                    f"regions file {path} line {i}: summit offset {summit} lies outside the peak "
                    f"(length {ends[k] - starts[k]}); fix column 10 or set it to -1."
                )
            centres[k] = starts[k] + summit
        name = f[3] if len(f) >= 4 and f[3] not in ("", ".") else f"{f[0]}:{starts[k]}-{ends[k]}"
        names.append(name)
    return pd.DataFrame({"chrom": chroms, "start": starts, "end": ends, "centre": centres, "name": names})


def read_intervals(path: str | Path, what: str = "exclude file") -> pd.DataFrame:
    """The first three columns (chrom, start, end) of a BED file; an empty file is allowed."""
    path = Path(path)
    chroms, starts, ends = _parse_intervals(_data_lines(_read_text(path, what)), path, what)
    return pd.DataFrame({"chrom": chroms, "start": starts, "end": ends})


def windows_around(centres: np.ndarray, span: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed windows ``[centre - span // 2, + span)`` (may extend past chromosome ends)."""
    start = np.asarray(centres, np.int64) - span // 2
    return start, start + span


def assign_splits(df: pd.DataFrame, splits_cfg) -> pd.DataFrame:
    """Add a ``split`` column: 'valid'/'test' for the chromosomes named in ``splits_cfg``, else 'train'."""
    valid, test = set(splits_cfg.valid), set(splits_cfg.test)
    both = valid & test
    if both:
        raise UserError(f"chromosome(s) {sorted(both)} are in both splits.valid and splits.test: list each in one split only.")
    df = df.copy()
    df["split"] = np.where(df["chrom"].isin(test), "test", np.where(df["chrom"].isin(valid), "valid", "train"))
    return df


def chrom_split(chrom: str, splits_cfg) -> str:
    return "test" if chrom in splits_cfg.test else "valid" if chrom in splits_cfg.valid else "train"


# -- chromosome names --------------------------------------------------------------------------
def _alt_name(c: str) -> str:
    if c.startswith("chr"):
        rest = c[3:]
        return "MT" if rest == "M" else rest
    return "chrM" if c == "MT" else "chr" + c


def _examples(names: Iterable[str], n: int = 3) -> str:
    names = list(dict.fromkeys(names))
    return ", ".join(f"'{x}'" for x in names[:n]) + (", ..." if len(names) > n else "")


def check_chrom_names(
    genome_chroms: Mapping[str, int],
    region_chroms: Iterable[str],
    track_chroms: Mapping[str, Mapping[str, int]] | None = None,
    splits_cfg=None,
    exclude_chroms: Iterable[str] = (),
    genome_label: str = "genome",
    regions_label: str = "regions",
) -> None:
    """Check that genome, regions, tracks (and splits) use the same chromosome names.

    Detects the 'chr1' vs '1' naming mismatch and says so with examples; a region on a
    chromosome the genome lacks is an error too. A track may lack some chromosomes (no reads
    there) but must share at least one chromosome with the regions.

    Raises
    ------
    UserError
    """
    gset = set(genome_chroms)
    rchroms = list(dict.fromkeys(region_chroms))
    missing = [c for c in rchroms if c not in gset]
    if missing:
        fixed = [c for c in missing if _alt_name(c) in gset]
        if fixed:
            raise UserError(
                f"chromosome names differ between {regions_label} and {genome_label}: {regions_label} use "
                f"{_examples(fixed)} but the genome has {_examples(_alt_name(c) for c in fixed)}; "
                "rename them so both use the same style (with or without 'chr')."
            )
        raise UserError(
            f"{regions_label} lie on chromosome(s) the genome lacks: {_examples(missing)} (genome has "
            f"{_examples(genome_chroms)}); remove those regions or use the matching genome."
        )
    xmiss = [c for c in dict.fromkeys(exclude_chroms) if c not in gset]
    if xmiss and all(_alt_name(c) in gset for c in xmiss) and not (set(exclude_chroms) & gset):
        raise UserError(
            f"chromosome names differ between the exclude file and the genome: exclude uses {_examples(xmiss)} "
            f"but the genome has {_examples(_alt_name(c) for c in xmiss)}; rename them to the genome's style."
        )
    for label, tchroms in (track_chroms or {}).items():
        diff = [c for c in rchroms if c in tchroms and int(tchroms[c]) != int(genome_chroms[c])]
        if diff:
            c = diff[0]
            raise UserError(
                f"{label} and the genome disagree on chromosome lengths ({c}: {tchroms[c]} vs {genome_chroms[c]} bp): "
                "they come from different assemblies; use tracks made on this genome."
            )
        if not set(tchroms) & set(rchroms):
            alt = [c for c in tchroms if _alt_name(c) in gset]
            if alt:
                raise UserError(
                    f"chromosome names differ between {label} and the genome: the track uses {_examples(alt)} but "
                    f"the genome and regions use {_examples(_alt_name(c) for c in alt)}; rename one side "
                    "(with or without 'chr') so they match."
                )
            raise UserError(
                f"{label} has no data on any chromosome of the regions ({_examples(rchroms)}; the track has "
                f"{_examples(tchroms)}): check it belongs to this genome."
            )
    if splits_cfg is not None:
        for split in ("valid", "test"):
            names = list(getattr(splits_cfg, split))
            if names and not set(names) & gset:
                alt = [c for c in names if _alt_name(c) in gset]
                hint = (f"the genome names them {_examples(_alt_name(c) for c in alt)}" if alt
                        else f"the genome has {_examples(genome_chroms)}")
                raise UserError(
                    f"splits.{split} names chromosomes {_examples(names)} that are not in the genome ({hint}); "
                    f"set splits.{split} to chromosomes of this genome."
                )


# -- background windows -----------------------------------------------------------------------
def _merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge intervals (sorted output, non-overlapping)."""
    if len(starts) == 0:
        return starts.astype(np.int64), ends.astype(np.int64)
    o = np.argsort(starts, kind="stable")
    s, e = starts[o], ends[o]
    run_end = np.maximum.accumulate(e)
    new = np.r_[True, s[1:] > run_end[:-1]]
    grp = np.cumsum(new) - 1
    ms = s[new]
    me = np.zeros(len(ms), np.int64)
    np.maximum.at(me, grp, e)
    return ms, me


def _overlaps(ms: np.ndarray, me: np.ndarray, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Whether each ``[s, e)`` overlaps any merged interval ``[ms, me)``."""
    if len(ms) == 0:
        return np.zeros(len(s), bool)
    i = np.searchsorted(me, s, side="right")  # first merged interval ending after s
    ok = i < len(ms)
    out = np.zeros(len(s), bool)
    out[ok] = ms[i[ok]] < e[ok]
    return out


def background_windows(
    genome,
    regions: pd.DataFrame,
    n: int,
    span: int,
    splits_cfg,
    exclude: pd.DataFrame | None = None,
    gc_matched: bool = True,
    seed: int = 0,
    n_bins: int = 20,
    oversample: int = 8,
) -> pd.DataFrame:
    """Sample background windows of ``span`` bp away from regions, N bases and excluded intervals.

    Windows lie fully inside a chromosome, overlap no region (neither its BED interval nor its
    stored window), no excluded interval and contain no N. Each split gets background in
    proportion to its number of regions, drawn from that split's chromosomes weighted by length;
    with ``gc_matched`` the GC histogram (``n_bins`` bins) of the chosen windows follows that of
    the regions' windows. Seeded, hence reproducible.

    Parameters
    ----------
    genome : Genome
    regions : DataFrame with chrom, start, end, centre, split and gc (GC of the stored window)
    n : int
        Number of background windows wanted (fewer are returned, with a warning, if the genome
        has not enough room).

    Returns
    -------
    DataFrame with chrom, start, end (the window), centre, name, split, gc, kind='background'.
    """
    from seq2reads.data.genome import N_CODE, gc_fraction

    cols = ["chrom", "start", "end", "centre", "name", "split", "gc", "kind"]
    if n <= 0 or len(regions) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object if c in ("chrom", "name", "split", "kind") else float)
                             for c in cols})
    rng = np.random.default_rng(seed)
    chroms = genome.chroms
    forbidden: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    w0, _ = windows_around(regions["centre"].to_numpy(), span)
    parts = [pd.DataFrame({"chrom": regions["chrom"], "start": regions["start"], "end": regions["end"]}),
             pd.DataFrame({"chrom": regions["chrom"], "start": w0, "end": w0 + span})]
    if exclude is not None and len(exclude):
        parts.append(exclude[["chrom", "start", "end"]])
    allf = pd.concat(parts, ignore_index=True)
    for c, g in allf.groupby("chrom", sort=False):
        forbidden[c] = _merge(g["start"].to_numpy(np.int64), g["end"].to_numpy(np.int64))

    counts = regions["split"].value_counts()
    total = int(counts.sum())
    peak_gc = regions["gc"].to_numpy(np.float64)
    peak_gc = peak_gc[np.isfinite(peak_gc)]
    bins = np.linspace(0, 1, n_bins + 1)
    out = []
    for split in SPLITS:
        n_split = int(round(n * counts.get(split, 0) / total))
        if n_split == 0:
            continue
        cands = [c for c, ln in chroms.items() if chrom_split(c, splits_cfg) == split and ln > span]
        if not cands:
            continue
        lens = np.array([chroms[c] - span for c in cands], np.float64)
        k = n_split * oversample
        which = rng.choice(len(cands), size=k, p=lens / lens.sum())
        starts = (rng.random(k) * lens[which]).astype(np.int64)
        ok = np.ones(k, bool)
        for j, c in enumerate(cands):
            sel = which == j
            if c in forbidden and sel.any():
                ok[sel] = ~_overlaps(*forbidden[c], starts[sel], starts[sel] + span)
        which, starts = which[ok], starts[ok]
        _, first = np.unique(which * (1 << 40) + starts, return_index=True)  # no window drawn twice
        keep = np.sort(first)
        which, starts = which[keep], starts[keep]
        # Candidates sorted by position so sequence is read in order; GC computed per window.
        gcs = np.full(len(starts), np.nan, np.float32)
        for j, c in enumerate(cands):
            idx = np.nonzero(which == j)[0]
            for i in idx[np.argsort(starts[idx])]:
                codes = genome.codes(c, int(starts[i]), int(starts[i]) + span)
                if not (codes == N_CODE).any():
                    gcs[i] = gc_fraction(codes)
        good = np.isfinite(gcs)
        which, starts, gcs = which[good], starts[good], gcs[good]
        chosen = _pick_gc_matched(gcs, peak_gc, bins, n_split, rng) if gc_matched else \
            rng.permutation(len(gcs))[:n_split]
        if len(chosen) < n_split:
            log.warning("seq2reads prepare: warning: only %d of %d background windows found on %s chromosomes "
                        "(little room away from regions, excluded intervals and N runs)", len(chosen), n_split, split)
        for i in chosen:
            c = cands[which[i]]
            s = int(starts[i])
            out.append((c, s, s + span, s + span // 2, f"bg:{c}:{s}-{s + span}", split, float(gcs[i]), "background"))
    return pd.DataFrame(out, columns=cols)


def _pick_gc_matched(gcs: np.ndarray, target_gc: np.ndarray, bins: np.ndarray, n: int, rng) -> np.ndarray:
    """Indices into ``gcs`` whose GC histogram follows ``target_gc``'s (nearest bins fill gaps)."""
    nb = len(bins) - 1
    if len(target_gc) == 0:
        return rng.permutation(len(gcs))[:n]
    want = np.histogram(target_gc, bins=bins)[0].astype(np.float64)
    want = np.floor(want / want.sum() * n).astype(int)
    # distribute the rounding remainder to the largest bins
    rem = n - want.sum()
    if rem > 0:
        want[np.argsort(-want)[:rem]] += 1
    cb = np.clip(np.digitize(gcs, bins) - 1, 0, nb - 1)
    pools = [list(rng.permutation(np.nonzero(cb == b)[0])) for b in range(nb)]
    chosen = []
    short = 0
    for b in range(nb):
        take = min(want[b], len(pools[b]))
        chosen += pools[b][:take]
        pools[b] = pools[b][take:]
        short += want[b] - take
    # Fill what a bin lacked from the nearest bins with candidates left.
    order = np.argsort(np.abs(np.arange(nb) - np.average(np.arange(nb), weights=np.maximum(want, 1e-9))))
    for b in order:
        if short <= 0:
            break
        take = min(short, len(pools[b]))
        chosen += pools[b][:take]
        short -= take
    return np.asarray(chosen, np.int64)

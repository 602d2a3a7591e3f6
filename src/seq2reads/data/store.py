"""The on-disk windowed dataset: ``prepare(cfg)`` writes ``RUN/dataset/`` (Zarr v3), ``open_dataset`` reads it.

Layout (docs/ARCHITECTURE.md, "The Zarr dataset"); W windows, C cell types, S = input + 2 * jitter:

- ``seq``    uint8   (W, S)        base codes A C G T N = 0..4
- ``signal`` float32 (W, C, 2, S)  per-base counts per cell type and strand (0 = plus, 1 = minus)
- ``mask``   bool    (W, S)        True where a position counts in the loss
- ``replicate_signal`` float32 (W, C, 2, S), only when some sample has replicates: the pooled
  replicates of each sample (zeros where a sample has none; see attr ``has_replicate``)
- ``regions/{chrom,start,end,centre,name,split,kind,gc}`` (W,) the window table

Window ``w`` spans ``[start, end)`` with ``start = centre - S // 2`` (``regions/start,end`` are this
stored span, not the BED interval); ``gc`` is the G+C fraction of its A/C/G/T bases; ``name`` is the
BED name (``bg:chrom:start-end`` for background). Rows are sorted by chromosome (genome order) and
start, so each chromosome is one contiguous row range.

Loss mask rule: False on excluded intervals (``exclude`` BED), on positions past a chromosome end
(stored as N with zero signal) and on N bases inside the genome (nothing can map there, so a zero
count there says nothing about the sequence); True elsewhere.

How it is fast and memory-bounded: windows are processed in tasks of a few hundred rows (whole Zarr
chunks, so tasks never write the same chunk); within a task each chromosome's windows are grouped
into a few large sorted blocks, and every track is read once per block (one ``fetch`` per BAM, one
read per bigWig). Base-resolution tracks are ~99% zeros, so sparse ones (read-end counts from a
BAM; bigWigs with values on few bases, decoded by :mod:`seq2reads.data.bigwig`) give their non-zero
entries, which are scattered into the zero-filled windows (work proportional to the entries, not
to the bases); dense ones (coverage, dense bigWigs) are read as block arrays and sliced. The
sequence is read window by window. Tasks run in a process pool (each worker opens its files once)
and write their rows straight into the Zarr chunk files; only the window table and per-window
totals are held for the whole genome. Peak memory per worker is one task's rows
(``4 * chunk_rows`` rows, about 32 MB of signal) plus one block (at most ``MAX_BLOCK`` bp per
track), whatever the genome size.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import multiprocessing
import os
import pickle
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from seq2reads.errors import UserError

FORMAT = "seq2reads-dataset"
VERSION = 1
DATASET_DIR = "dataset"
REGION_COLUMNS = ("chrom", "start", "end", "centre", "name", "split", "kind", "gc")
_STR_COLUMNS = ("chrom", "name", "split", "kind")

# Block reads: windows closer than MAX_GAP bp join one block of at most MAX_BLOCK bp.
MAX_GAP = 20_000
MAX_BLOCK = 2_000_000
TARGET_CHUNK_BYTES = 8 << 20
ROWS_PER_TASK_CHUNKS = 4
# Below these many windows, starting workers costs more than it saves (forked workers start in
# milliseconds; forkserver/spawn ones import numpy/zarr/pysam again, seconds on a busy machine).
PARALLEL_MIN_WINDOWS = {"fork": 1000, "forkserver": 20000, "spawn": 20000}
# Fill values: the mask is True almost everywhere, so with True as its fill value its chunks are
# mostly never written (SKIP_FILL_CHUNKS; zarr reads a missing chunk as the fill value): fewer files
# to create, and to delete when a re-run replaces the dataset (~3 ms each on ext4 with discard).
FILL = {"seq": 0, "signal": 0, "mask": True, "replicate_signal": 0}
SKIP_FILL_CHUNKS = ("mask",)
# Blosc-LZ4 per array: sparse counts compress ~20x at a fraction of zstd's cost. No shuffle for
# the signal (its bytes are mostly zero words either way; shuffling only adds ~50% compression
# time and makes the output larger); bit shuffle for the sequence (2 bits of 8 carry the base, so
# it halves the size and compresses 4x faster than byte-wise LZ4).
BLOSC = {
    "seq": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    "signal": {"cname": "lz4", "clevel": 5, "shuffle": "noshuffle"},
    "mask": {"cname": "lz4", "clevel": 5, "shuffle": "noshuffle"},
    "replicate_signal": {"cname": "lz4", "clevel": 5, "shuffle": "noshuffle"},
}

log = logging.getLogger(__name__)


# -- inputs ------------------------------------------------------------------------------------
@dataclass
class Inputs:
    """Opened and validated inputs of a config (files are re-opened lazily in each worker)."""

    genome: Any
    tracks: list
    replicates: list  # per sample: list of replicate tracks (possibly empty)
    peaks: pd.DataFrame
    exclude: pd.DataFrame | None


def open_inputs(cfg) -> Inputs:
    """Open and check every input file of ``cfg`` before anything is written.

    Raises
    ------
    UserError
        Missing/unreadable/wrong-type file, BAM without index, chromosome-name mismatch, a region
        on a chromosome the genome lacks, empty or malformed regions.
    """
    from seq2reads.data.genome import Genome
    from seq2reads.data.regions import assign_splits, check_chrom_names, read_intervals, read_regions
    from seq2reads.data.tracks import open_track

    genome = Genome(cfg.genome)
    reference = str(genome.path) if genome.kind != "2bit" else None
    tracks, reps = [], []
    for s in cfg.samples:
        tracks.append(open_track(s, cfg.reads, cfg.assay, reference=reference))
        reps.append([open_track(r, cfg.reads, cfg.assay, reference=reference) for r in s.replicates])
    peaks = read_regions(cfg.regions)
    exclude = read_intervals(cfg.exclude) if cfg.exclude else None
    track_chroms = {}
    for s, t, rs in zip(cfg.samples, tracks, reps):
        track_chroms[f"sample '{s.name}' ({_track_label(s)})"] = t.chroms
        for i, r in enumerate(rs):
            track_chroms[f"replicate {i + 1} of sample '{s.name}'"] = r.chroms
    check_chrom_names(genome.chroms, peaks["chrom"], track_chroms, cfg.splits,
                      exclude["chrom"] if exclude is not None else (), regions_label=f"regions ({Path(cfg.regions).name})")
    peaks = assign_splits(peaks, cfg.splits)
    n_split = peaks["split"].value_counts()
    if not n_split.get("train", 0):
        raise UserError(
            f"no region lies on a training chromosome: all are on splits.valid/test chromosomes "
            f"({', '.join(cfg.splits.valid + cfg.splits.test)}); leave some chromosomes with regions for training."
        )
    for split in ("valid", "test"):
        if not n_split.get(split, 0):
            log.warning("seq2reads prepare: warning: no region lies on the %s chromosomes (%s): that split is "
                        "empty; set splits.%s to chromosomes with regions", split,
                        ", ".join(getattr(cfg.splits, split)) or "none given", split)
    return Inputs(genome, tracks, reps, peaks, exclude)


def _track_label(s) -> str:
    return Path(s.bam).name if s.bam else f"{Path(s.plus).name}, {Path(s.minus).name}"


def build_windows(cfg, inp: Inputs, seed: int = 0) -> tuple[pd.DataFrame, int]:
    """The sorted window table (peaks + background) and the number of peak windows past a chromosome end."""
    from seq2reads.data.genome import gc_fraction
    from seq2reads.data.regions import background_windows, windows_around

    S = span_of(cfg.window)
    peaks = inp.peaks
    start, end = windows_around(peaks["centre"].to_numpy(), S)
    lengths = peaks["chrom"].map(inp.genome.chroms).to_numpy(np.int64)
    past = int(((start < 0) | (end > lengths)).sum())
    win = pd.DataFrame({"chrom": peaks["chrom"], "start": start, "end": end, "centre": peaks["centre"],
                        "name": peaks["name"], "split": peaks["split"], "kind": "peak", "gc": np.nan})
    n_bg = int(round(cfg.background.ratio * len(peaks)))
    if n_bg > 0:
        # The target GC histogram from (at most) 5000 peak windows; exact GC of every window is
        # computed later while the store is written.
        rng = np.random.default_rng(seed)
        sub = peaks.iloc[np.sort(rng.permutation(len(peaks))[:5000])].copy()
        s0, _ = windows_around(sub["centre"].to_numpy(), S)
        sub["gc"] = [gc_fraction(inp.genome.codes(c, int(a), int(a) + S)) for c, a in zip(sub["chrom"], s0)]
        # background must avoid all peaks: pass every peak with its gc (NaN outside the subsample)
        allp = peaks.copy()
        allp["gc"] = np.nan
        allp.loc[sub.index, "gc"] = sub["gc"].to_numpy()
        bg = background_windows(inp.genome, allp, n_bg, S, cfg.splits, inp.exclude,
                                gc_matched=cfg.background.gc_matched, seed=seed)
        if len(bg):
            win = pd.concat([win, bg.assign(gc=np.nan)], ignore_index=True)
    # sort by (chromosome in genome order, start, kind): np.lexsort is stable, like a stable sort_values
    order = {c: i for i, c in enumerate(inp.genome.chroms)}
    rank = np.array([order[c] for c in win["chrom"].tolist()], np.int64)
    idx = np.lexsort(((win["kind"] == "peak").to_numpy(), win["start"].to_numpy(), rank))  # background < peak
    return win.take(idx).reset_index(drop=True), past


def span_of(window_cfg) -> int:
    """Stored span S = input + 2 * jitter (bp)."""
    return int(window_cfg.input + 2 * window_cfg.jitter)


# -- the worker ----------------------------------------------------------------------------------
def _blocks(starts: np.ndarray, ends: np.ndarray, max_gap: int = MAX_GAP, max_block: int = MAX_BLOCK):
    """Group sorted windows into blocks: yields (i0, i1, block_start, block_end)."""
    i0 = 0
    n = len(starts)
    bs, be = starts[0], ends[0]
    for i in range(1, n):
        if starts[i] - be > max_gap or max(be, ends[i]) - bs > max_block:
            yield i0, i, int(bs), int(be)
            i0, bs, be = i, starts[i], ends[i]
        else:
            be = max(be, ends[i])
    yield i0, n, int(bs), int(be)


def _copy_windows(dst: np.ndarray, block: np.ndarray, offsets: np.ndarray, S: int, add: bool = False) -> None:
    """``dst[i] (=|+=) block[..., o_i : o_i + S]`` for each window ``i``.

    A loop of contiguous slice copies (one memcpy per window and array) is several times faster
    than one fancy-indexed gather with an (n, S) index array.
    """
    for i, o in enumerate(offsets.tolist()):
        if add:
            dst[i] += block[..., o : o + S]
        else:
            dst[i] = block[..., o : o + S]


def _scatter(flat: np.ndarray, row_at: np.ndarray, starts: np.ndarray, S: int, pos: np.ndarray, val: np.ndarray,
             add: bool = False) -> np.ndarray | None:
    """``flat[row_at[i] + p - starts[i]] (=|+=) v`` for every entry (p, v) in window ``i`` = ``[starts[i], + S)``.

    ``flat`` is a flat view of the output, ``row_at[i]`` where window ``i``'s S values begin in it;
    ``pos`` is sorted and unique, so each target occurs once. Cost is proportional to the entries
    inside the windows, not to the windows' length: the point for sparse tracks. Returns the flat
    indices written (None if none).
    """
    j0 = np.searchsorted(pos, starts)
    cnt = np.searchsorted(pos, starts + S) - j0
    total = int(cnt.sum())
    if not total:
        return None
    # entry index of each (window, entry) pair: j0[i], j0[i] + 1, ..., j0[i] + cnt[i] - 1
    k = np.arange(total) + np.repeat(j0 - (np.cumsum(cnt) - cnt), cnt)
    idx = pos[k] + np.repeat(row_at - starts, cnt)
    if add:
        flat[idx] += val[k]
    else:
        flat[idx] = val[k]
    return idx


def _fill_track(out: "_ZeroBuffer", c: int, track, chrom: str, i0: int, i1: int, bs: int, be: int,
                starts: np.ndarray, add: bool, totals: np.ndarray | None = None,
                out_lo: int = 0, out_len: int = 0) -> tuple[bool, bool]:
    """Fill ``out.array[i0:i1, c]`` ((n, C, 2, S)) with ``track`` over windows ``starts[i0:i1]`` inside
    block ``[bs, be)``, recording what it writes in ``out``.

    Sparse tracks scatter their entries (and, given ``totals`` (n, C), add each window's sum over
    ``[out_lo, out_lo + out_len)`` to ``totals[i, c]`` from the entries); dense ones are read as a
    block and sliced. ``add`` sums into ``out`` (replicates).

    Returns
    -------
    (dense, raw): whether the track was read densely (its totals are left to the caller) and
    whether raw bigWig values were copied (the caller then applies
    :func:`~seq2reads.data.tracks.clean_values` to those windows).
    """
    from seq2reads.data.tracks import BigWigPairTrack

    _, C, _, S = out.array.shape
    st = starts[i0:i1]
    if track.sparse:
        flat = out.array.reshape(-1)
        for strand, (pos, val) in enumerate(track.entries(chrom, bs, be)):
            row_at = (np.arange(i0, i1) * (2 * C) + (2 * c + strand)) * S
            out.touched.append(_scatter(flat, row_at, st, S, pos, val, add))
            if totals is not None and len(pos):
                # window sums as differences of a running sum: O(entries), exact for counts
                run = np.concatenate(([0.0], np.cumsum(val, dtype=np.float64)))
                a = np.searchsorted(pos, st + out_lo)
                totals[i0:i1, c] += run[np.searchsorted(pos, st + out_lo + out_len)] - run[a]
        return False, False
    raw = isinstance(track, BigWigPairTrack) and not add
    block = track.values(chrom, bs, be, raw=True) if raw else track.values(chrom, bs, be)
    _copy_windows(out.array[i0:i1, c], block, st - bs, S, add)
    out.touched.append((i0, i1, c))
    return True, raw


class _ZeroBuffer:
    """A zero-filled float32 array reused by the tasks of a process.

    A fresh ~30 MB zeroed array per task costs its page faults (or a full memset) every time,
    while the tracks write to ~1% of it: after each task only what was written (``touched``: flat
    index arrays, or (i0, i1, c) row ranges of densely read tracks) is set back to zero.
    """

    def __init__(self) -> None:
        self._buf: np.ndarray | None = None
        self._clean = False
        self.array = np.zeros((0, 0, 0, 0), np.float32)
        self.touched: list = []

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        """An all-zero float32 array of ``shape`` (a prefix view of the buffer); call :meth:`reset` after."""
        b = self._buf
        if b is None or not self._clean or b.shape[1:] != shape[1:] or len(b) < shape[0]:
            # first use, a task that failed half-way, or another shape: start from fresh zeros
            b = self._buf = np.zeros(shape, np.float32)
        self._clean, self.touched = False, []
        self.array = b[: shape[0]]
        return self.array

    def reset(self) -> None:
        """Zero what the last task wrote."""
        flat = self._buf.reshape(-1)
        for t in self.touched:
            if isinstance(t, tuple):
                self._buf[t[0] : t[1], t[2]] = 0
            elif t is not None:
                flat[t] = 0
        self._clean, self.touched = True, []


# What every task of a worker process shares (inputs with their open files, sizes): set once per
# worker by _init_worker, so that files are opened (and bigWig indexes read) once per worker, not
# once per task.
_WORKER_SHARED: dict | None = None


def _init_worker(shared: bytes) -> None:
    # Unpickled, never inherited through fork: open file handles must not be shared between
    # processes (the BAM was opened in the parent to check its index), and pickling drops them.
    global _WORKER_SHARED
    # Keep the cyclic garbage collector away from the objects inherited from the parent: its passes
    # write to every object's header, copying (page-faulting) the parent's whole heap into the worker.
    gc.freeze()
    _WORKER_SHARED = pickle.loads(shared)


def _fill_task(job: dict, shared: dict | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Compute and write rows ``[r0, r1)``; return (r0, output-window totals (n, C), gc (n,)).

    ``shared`` (default: this worker's, see :func:`_init_worker`) holds genome, tracks,
    replicates, S, chunk, output_len and has_rep; ``job`` the task's r0, chroms, starts, exclude
    intervals and output chunk files.
    """
    from seq2reads.data.genome import N_CODE, gc_fraction
    from seq2reads.data.tracks import clean_values

    sh = shared if shared is not None else _WORKER_SHARED
    # Signal and replicate buffers live as long as ``sh``: one run_tasks call in-process, or a worker.
    sig_buf, rep_buf = sh.setdefault("buffers", (_ZeroBuffer(), _ZeroBuffer()))
    r0, chroms, starts, exclude = job["r0"], job["chroms"], job["starts"], job["exclude"]
    S, out_len, genome, tracks, reps = sh["S"], sh["output_len"], sh["genome"], sh["tracks"], sh["replicates"]
    n, C = len(starts), len(tracks)
    seq = np.empty((n, S), np.uint8)
    sig = sig_buf.take((n, C, 2, S))
    rep = rep_buf.take((n, C, 2, S)) if sh["has_rep"] else None
    ends = starts + S
    lo = (S - out_len) // 2
    totals = np.zeros((n, C), np.float64)
    dense, raw = np.zeros(C, bool), np.zeros(C, bool)
    # chroms is sorted in blocks of equal names: walk the runs
    change = np.r_[0, np.nonzero(chroms[1:] != chroms[:-1])[0] + 1, n]
    for a, b in zip(change[:-1], change[1:]):
        chrom = chroms[a]
        genome.window_codes(chrom, starts[a:b], S, out=seq[a:b])
        for i0, i1, bs, be in _blocks(starts[a:b], ends[a:b]):
            i0, i1 = i0 + a, i1 + a
            for c, t in enumerate(tracks):
                d, r_ = _fill_track(sig_buf, c, t, chrom, i0, i1, bs, be, starts, False, totals, lo, out_len)
                dense[c] |= d
                raw[c] |= r_
                for r in reps[c]:
                    _fill_track(rep_buf, c, r, chrom, i0, i1, bs, be, starts, add=True)
    for c in np.nonzero(raw)[0]:
        clean_values(sig[:, c])  # abs / NaN -> 0 of raw bigWig values, on the windows only
    for c in np.nonzero(dense)[0]:
        totals[:, c] = sig[:, c, :, lo : lo + out_len].sum(axis=(1, 2), dtype=np.float64)
    mask = seq != N_CODE
    for a, b in zip(change[:-1], change[1:]):
        if chroms[a] in exclude:
            _mask_intervals(mask[a:b], starts[a:b], *exclude[chroms[a]])
    gc = gc_fraction(seq)
    outputs = {"seq": seq, "signal": sig, "mask": mask, "replicate_signal": rep}
    for name, (files, codec, skip) in (job["out"] or {}).items():
        _write_chunks(files, outputs[name], sh["chunk"], codec, skip)
    sig_buf.reset()
    if rep is not None:
        rep_buf.reset()
    return r0, totals, np.atleast_1d(gc)


def _mask_intervals(mask: np.ndarray, starts: np.ndarray, xs: np.ndarray, xe: np.ndarray) -> None:
    """Set ``mask[i]`` False over the sorted, merged intervals ``[xs, xe)`` inside window ``i``."""
    S = mask.shape[-1]
    j0 = np.searchsorted(xe, starts, side="right")
    j1 = np.searchsorted(xs, starts + S, side="left")
    for i in np.nonzero(j1 > j0)[0].tolist():
        s = int(starts[i])
        for a, b in zip(xs[j0[i] : j1[i]].tolist(), xe[j0[i] : j1[i]].tolist()):
            mask[i, max(a - s, 0) : max(b - s, 0)] = False


def _chunk_files(root: str, name: str, shape: tuple[int, ...], dtype: str, chunk: int) -> tuple[list[str], dict, Any]:
    """The file of every chunk of the Zarr array ``root/name`` that :func:`_create_arrays` makes (row
    chunks of ``chunk`` rows, keys ``c.i.0.0`` in the array's folder), its numcodecs Blosc settings
    (those zarr derives from ``BLOSC[name]``: typesize = item size, automatic block size) and its fill
    value when chunks holding only that value are left unwritten (else None).

    Computed rather than read from the array so that workers can write chunks before the array's
    metadata exists (``prepare`` creates it while they run); a test checks both agree.
    """
    b = BLOSC[name]
    codec = {"cname": b["cname"], "clevel": b["clevel"],
             "shuffle": {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[b["shuffle"]], "blocksize": 0,
             "typesize": np.dtype(dtype).itemsize}
    rest = ".0" * (len(shape) - 1)
    files = [f"{root}/{name}/c.{i}{rest}" for i in range(-(-shape[0] // chunk))]
    return files, codec, (FILL[name] if name in SKIP_FILL_CHUNKS else None)


def _store_arrays(W: int, C: int, S: int, has_rep: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """Name -> (shape, dtype) of the dataset's window arrays."""
    arrays = {"seq": ((W, S), "uint8"), "signal": ((W, C, 2, S), "float32"), "mask": ((W, S), "bool")}
    if has_rep:
        arrays["replicate_signal"] = ((W, C, 2, S), "float32")
    return arrays


# Zarr metadata is written by hand: through zarr's API each array costs ~4 ms CPU (its async
# store machinery), ~50 ms per prepare for the 11 arrays and 2 groups, spent in the main process
# while the workers need both cores. The documents are small and fixed by the Zarr v3 core
# specification; they are the JSON zarr itself writes (a test compares them with zarr's, and every
# array is read back through zarr).
def _bytes_codec(dtype: np.dtype) -> dict:
    return {"name": "bytes"} if dtype.itemsize == 1 else {"name": "bytes", "configuration": {"endian": "little"}}


def _array_json(shape: tuple[int, ...], chunk_shape: tuple[int, ...], data_type: str, fill_value: Any,
                codecs: list[dict]) -> dict:
    """The ``zarr.json`` of a Zarr v3 array with regular chunks keyed ``c.i.j`` (separator '.')."""
    return {"shape": [int(x) for x in shape], "data_type": data_type,
            "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [int(x) for x in chunk_shape]}},
            "chunk_key_encoding": {"name": "default", "configuration": {"separator": "."}},
            "fill_value": fill_value, "codecs": codecs, "attributes": {}, "zarr_format": 3,
            "node_type": "array", "storage_transformers": []}


def _group_json(attributes: dict | None = None) -> dict:
    return {"attributes": attributes or {}, "zarr_format": 3, "node_type": "group"}


def _write_json(path: Path, doc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2))


def _create_arrays(root: Path, arrays: dict, chunk: int) -> None:
    """Write the metadata of the window ``arrays`` (see :func:`_store_arrays`) under folder ``root``:
    row chunks of ``chunk`` rows, Blosc settings ``BLOSC[name]``, fill value ``FILL[name]``.

    Chunk files are named c.i.0.0 in the array's folder rather than nested c/i/0/0 folders: creating
    and (on a re-run) deleting hundreds of folders costs more than writing the data.
    """
    for name, (shape, dtype) in arrays.items():
        dt = np.dtype(dtype)
        b = BLOSC[name]
        blosc = {"name": "blosc", "configuration": {"typesize": dt.itemsize, "cname": b["cname"],
                                                    "clevel": b["clevel"], "shuffle": b["shuffle"], "blocksize": 0}}
        fill = dt.type(FILL[name]).item()
        _write_json(root / name / "zarr.json",
                    _array_json(shape, (chunk, *shape[1:]), str(dt), fill, [_bytes_codec(dt), blosc]))


def _write_chunks(files: list[str], arr: np.ndarray, chunk: int, codec: dict, skip_fill: Any = None) -> None:
    """Write ``arr`` (rows of whole ``chunk``-row chunks; the array's last may be partial) as the chunk
    ``files`` of a Zarr array; with ``skip_fill``, chunks holding only that value are not written
    (zarr reads a missing chunk as the fill value).

    Written by hand rather than with ``zarr_array[r0:r1] = arr``: zarr copies every chunk into a
    freshly filled buffer and runs the codec through its async pipeline, which costs as much CPU
    again as the compression itself here. The bytes are zarr's own (its Blosc codec is numcodecs'
    Blosc with the array's settings, ``codec`` from :func:`_chunk_files`; tests read the store back
    through zarr).
    """
    from numcodecs import Blosc

    blosc = Blosc(**codec)
    for k, path in enumerate(files):
        rows = arr[k * chunk : (k + 1) * chunk]
        if skip_fill is not None and (rows == skip_fill).all():
            continue
        if len(rows) < chunk:
            # zarr stores edge chunks full-size, padded with the fill value
            full = np.full((chunk, *arr.shape[1:]), 0 if skip_fill is None else skip_fill, arr.dtype)
            full[: len(rows)] = rows
            rows = full
        out = Path(path)
        if not out.parent.exists():
            out.parent.mkdir(parents=True, exist_ok=True)  # another worker may make it meanwhile
        out.write_bytes(blosc.encode(np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))))


# -- prepare -------------------------------------------------------------------------------------
def _chunk_rows(row_bytes: int) -> int:
    r = max(1, TARGET_CHUNK_BYTES // max(row_bytes, 1))
    return int(min(1024, max(8, 2 ** int(math.log2(r)))))


def prepare(cfg, workers: int | None = None, progress: bool = True) -> Path:
    """Build ``RUN/dataset/`` (Zarr) from the config's genome, samples and regions; write ``RUN/config.yaml``.

    Parameters
    ----------
    cfg : config.Config
    workers : int, optional
        Worker processes; 0 = in this process. Default: 2, or 0 for data sets too small to gain.
    progress : bool
        Show a progress bar (stderr).

    Returns
    -------
    Path of the dataset folder.

    Raises
    ------
    UserError
        Any bad input (checked before anything is written).
    """
    from seq2reads.atomic import atomic_path
    from seq2reads.config import save_run_config

    inp = open_inputs(cfg)
    win, past = build_windows(cfg, inp, seed=cfg.train.seed)
    if past:
        # logging, not warnings.warn: without a configured handler Python prints just this line.
        log.warning("seq2reads prepare: warning: %d region window(s) extend past a chromosome end: padded with N "
                    "and zero signal and masked from the loss", past)
    S, C, W = span_of(cfg.window), len(cfg.samples), len(win)
    has_rep = [bool(r) for r in inp.replicates]
    chunk = _chunk_rows(C * 2 * S * 4)
    if workers is None:
        workers = 2 if W >= PARALLEL_MIN_WINDOWS[_start_method()] else 0
    out = cfg.run_path / DATASET_DIR
    with atomic_path(out) as tmp:
        tmp.mkdir()
        arrays = _store_arrays(W, C, S, any(has_rep))
        before = [c for c in REGION_COLUMNS if c != "gc"]

        def meanwhile() -> None:
            # the arrays' metadata and the window table (but its gc column) are written by this
            # process while the workers extract and write the chunks
            _create_arrays(tmp, arrays, chunk)
            _write_regions(tmp, win, before)

        totals, win["gc"] = run_tasks(cfg, inp, win, str(tmp), chunk, workers, progress, meanwhile=meanwhile)
        _write_regions(tmp, win, ("gc",))
        _write_json(tmp / "zarr.json", _group_json(_attrs(cfg, win, totals, has_rep, past, chunk)))
    save_run_config(cfg)
    return out


def run_tasks(cfg, inp: Inputs, win: pd.DataFrame, root: str | None, chunk: int, workers: int,
              progress: bool = False, meanwhile: Callable[[], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Extract every window (tasks of ``ROWS_PER_TASK_CHUNKS`` chunks) and write it under ``root``.

    ``root=None`` extracts without writing (benchmarks measure extraction alone this way).
    ``meanwhile`` is called once in this process while the workers run (without workers: first).

    Returns
    -------
    (totals float64 (W, C): output-window counts per cell type, gc float32 (W,))
    """
    from seq2reads.data.regions import _merge

    S, C, W = span_of(cfg.window), len(cfg.samples), len(win)
    exclude = {}
    if inp.exclude is not None:
        for c, g in inp.exclude.groupby("chrom", sort=False):
            exclude[c] = _merge(g["start"].to_numpy(np.int64), g["end"].to_numpy(np.int64))
    per_task = chunk * ROWS_PER_TASK_CHUNKS
    chrom_arr = win["chrom"].to_numpy(dtype=object)
    start_arr = win["start"].to_numpy(np.int64)
    has_rep = any(bool(r) for r in inp.replicates)
    files = {}
    if root is not None:
        for name, (shape, dtype) in _store_arrays(W, C, S, has_rep).items():
            files[name] = _chunk_files(root, name, shape, dtype, chunk)
    shared = dict(genome=inp.genome, tracks=inp.tracks, replicates=inp.replicates, S=S, chunk=chunk,
                  output_len=cfg.window.output, has_rep=has_rep)
    jobs = []
    for r0 in range(0, W, per_task):
        r1 = min(W, r0 + per_task)
        out = {k: (f[r0 // chunk : -(-r1 // chunk)], codec, skip) for k, (f, codec, skip) in files.items()}
        jobs.append(dict(out=out, r0=r0, chroms=chrom_arr[r0:r1], starts=start_arr[r0:r1],
                         exclude={c: exclude[c] for c in set(chrom_arr[r0:r1]) if c in exclude}))
    totals = np.zeros((W, C), np.float64)
    gc = np.full(W, np.nan, np.float32)
    for r0, tot, g in _run_jobs(jobs, shared, workers, progress, W, meanwhile):
        totals[r0 : r0 + len(tot)] = tot
        gc[r0 : r0 + len(g)] = g
    return totals, gc


def _run_jobs(jobs: list[dict], shared: dict, workers: int, progress: bool, W: int,
              meanwhile: Callable[[], None] | None = None):
    meanwhile = meanwhile or (lambda: None)
    with _progress_bar(progress) as bar:
        task = bar.add_task("prepare", total=W)
        if workers <= 0 or len(jobs) == 1:
            meanwhile()
            for j in jobs:
                res = _fill_task(j, shared)
                bar.advance(task, len(res[1]))
                yield res
            return
        ctx = multiprocessing.get_context(_start_method())
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                                 initargs=(pickle.dumps(shared),)) as ex:
            # Submit a bounded number of tasks at a time so results never pile up in memory.
            pending = []
            it = iter(jobs)
            for j in it:
                pending.append(ex.submit(_fill_task, j))
                if len(pending) >= 2 * workers:
                    break
            meanwhile()  # after the first submit: the workers exist (a fork never sees this work)
            while pending:
                res = pending.pop(0).result()
                bar.advance(task, len(res[1]))
                yield res
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(ex.submit(_fill_task, nxt))


def _progress_bar(show: bool):
    """A rich progress bar on stderr, or a stand-in that does nothing (rich is not even imported:
    its import costs ~0.1 s CPU)."""
    if not show:
        return _NoBar()
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    cols = [TextColumn("preparing windows"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    return Progress(*cols, console=Console(stderr=True), transient=False)


class _NoBar:
    def __enter__(self) -> "_NoBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        return None


def _start_method() -> str:
    """'fork' (cheap: workers inherit the imported modules; zarr resets its loop after a fork)
    unless torch is loaded, whose thread pools do not survive a fork: then 'forkserver'."""
    if sys.platform.startswith("linux") and "torch" not in sys.modules:
        return "fork"
    return "forkserver" if sys.platform != "win32" else "spawn"


REGION_CHUNK_ROWS = 65536
_ZSTD = {"name": "zstd", "configuration": {"level": 0, "checksum": False}}  # zarr's default compressor


def _write_regions(root: Path, win: pd.DataFrame, columns=REGION_COLUMNS) -> None:
    """Write ``columns`` of the window table as the arrays ``regions/<column>`` under folder ``root``
    (and the ``regions`` group): chunks of up to ``REGION_CHUNK_ROWS`` rows, zarr's default codecs
    (vlen-utf8 for strings, little-endian bytes for numbers; zstd level 0)."""
    from numcodecs import VLenUTF8, Zstd

    g = root / "regions"
    if not (g / "zarr.json").exists():
        _write_json(g / "zarr.json", _group_json())
    W = len(win)
    chunk = max(1, min(W, REGION_CHUNK_ROWS))
    zstd = Zstd(level=0, checksum=False)
    for c in columns:
        if c in _STR_COLUMNS:
            vals, data_type, fill, codec = win[c].astype(str).to_numpy(dtype=object), "string", "", VLenUTF8()
            codecs = [{"name": "vlen-utf8", "configuration": {}}, _ZSTD]
        else:
            dt = np.dtype("<f4" if c == "gc" else "<i8")  # little-endian bytes, as the codec says
            vals, data_type, fill, codec = win[c].to_numpy(dtype=dt), dt.name, dt.type(0).item(), None
            codecs = [_bytes_codec(dt), _ZSTD]
        _write_json(g / c / "zarr.json", _array_json((W,), (chunk,), data_type, fill, codecs))
        for k, r0 in enumerate(range(0, W, chunk)):
            rows = vals[r0 : r0 + chunk]
            if len(rows) < chunk:  # zarr stores edge chunks full-size, padded with the fill value
                rows = np.concatenate([rows, np.full(chunk - len(rows), fill, dtype=rows.dtype)])
            raw = codec.encode(rows) if codec is not None else rows.tobytes()
            (g / c / f"c.{k}").write_bytes(zstd.encode(raw))


def _attrs(cfg, win: pd.DataFrame, totals: np.ndarray, has_rep: list[bool], past: int, chunk: int) -> dict:
    from seq2reads import __version__ as pkg_version
    from seq2reads.data.tracks import read_rule

    sel = ((win["kind"] == "peak") & (win["split"] == "train")).to_numpy()
    if not sel.any():
        sel = (win["kind"] == "peak").to_numpy()
    stats = {}
    for c, name in enumerate(cfg.cell_types):
        t = totals[sel, c]
        stats[name] = {"mean": float(t.mean()) if len(t) else 0.0, "median": float(np.median(t)) if len(t) else 0.0}
    rule = read_rule(cfg.assay, cfg.reads)
    return {
        "format": FORMAT,
        "version": VERSION,
        "package_version": pkg_version,
        "samples": list(cfg.cell_types),
        "input_len": int(cfg.window.input),
        "output_len": int(cfg.window.output),
        "jitter": int(cfg.window.jitter),
        "span": span_of(cfg.window),
        "assay": cfg.assay,
        "read_rule": {"end": rule.end, "flip_strand": rule.flip_strand, "min_mapq": cfg.reads.min_mapq},
        "config_hash": cfg.section_hash("genome", "regions", "samples", "assay", "reads", "exclude", "window",
                                        "splits", "background"),
        "n_windows": int(len(win)),
        "n_peaks": int((win["kind"] == "peak").sum()),
        "n_background": int((win["kind"] == "background").sum()),
        "n_past_chrom_end": int(past),
        "count_stats": stats,
        "has_replicate": has_rep,
        "chunk_rows": int(chunk),
        "genome": str(cfg.genome),
        "mask_rule": "False on exclude intervals, positions past chromosome ends and N bases",
    }


# -- reading -------------------------------------------------------------------------------------
class DatasetStore:
    """A prepared dataset: arrays (Zarr on disk, or numpy after :meth:`load`) plus the window table.

    Attributes
    ----------
    seq : uint8 (W, S);  signal : float32 (W, C, 2, S);  mask : bool (W, S)
    replicate_signal : float32 (W, C, 2, S) or None
    regions : DataFrame (chrom, start, end, centre, name, split, kind, gc)
    samples : list[str];  input_len, output_len, jitter, span : int;  attrs : dict
    """

    def __init__(self, arrays: dict[str, Any], regions: pd.DataFrame, attrs: dict, path: str | None = None) -> None:
        self.seq = arrays["seq"]
        self.signal = arrays["signal"]
        self.mask = arrays["mask"]
        self.replicate_signal = arrays.get("replicate_signal")
        self.regions = regions
        self.attrs = attrs
        self.path = path
        self.samples = list(attrs["samples"])
        self.input_len = int(attrs["input_len"])
        self.output_len = int(attrs["output_len"])
        self.jitter = int(attrs["jitter"])
        self.span = int(attrs["span"])
        self.has_replicate = list(attrs.get("has_replicate", [False] * len(self.samples)))

    def __len__(self) -> int:
        return len(self.regions)

    def __repr__(self) -> str:
        return (f"DatasetStore({self.path or 'in memory'}: {len(self)} windows, samples={self.samples}, "
                f"span={self.span})")

    def indices(self, split: str | None = None, kinds=("peak", "background")) -> np.ndarray:
        """Sorted rows (int64) of the windows in ``split`` ('train'/'valid'/'test'; None = all) of ``kinds``."""
        if isinstance(kinds, str):
            kinds = (kinds,)
        sel = self.regions["kind"].isin(list(kinds)).to_numpy().copy()
        if split is not None and split != "all":
            splits = [split] if isinstance(split, str) else list(split)
            sel &= self.regions["split"].isin(splits).to_numpy()
        return np.nonzero(sel)[0].astype(np.int64)

    def load(self) -> "DatasetStore":
        """A copy with every array read fully into memory (numpy)."""
        arrays = {k: np.asarray(v[...]) for k, v in
                  (("seq", self.seq), ("signal", self.signal), ("mask", self.mask),
                   ("replicate_signal", self.replicate_signal)) if v is not None}
        return DatasetStore(arrays, self.regions.copy(), dict(self.attrs), self.path)

    @property
    def nbytes(self) -> int:
        """Uncompressed size of the arrays (bytes)."""
        arrs = [self.seq, self.signal, self.mask] + ([self.replicate_signal] if self.replicate_signal is not None else [])
        return int(sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in arrs))


def open_dataset(path: str | os.PathLike) -> DatasetStore:
    """Open a prepared dataset (``RUN/dataset``, or the run directory ``RUN`` itself; fsspec URLs work).

    Raises
    ------
    UserError
        No dataset there (run ``seq2reads prepare CONFIG`` first) or not a seq2reads dataset.
    """
    import zarr

    p = str(path)
    if "://" not in p:
        pp = Path(p)
        if (pp / DATASET_DIR / "zarr.json").exists():
            pp = pp / DATASET_DIR
        if not (pp / "zarr.json").exists():
            raise UserError(f"no prepared dataset at {path}: run `seq2reads prepare CONFIG` first.")
        p = str(pp)
    try:
        root = zarr.open_group(p, mode="r")
    except Exception as e:  # noqa: BLE001 - any read failure is the user's path/dataset
        raise UserError(f"cannot open dataset {path} ({type(e).__name__}): re-run `seq2reads prepare CONFIG`.") from None
    attrs = json.loads(json.dumps(root.attrs.asdict()))
    if attrs.get("format") != FORMAT:
        raise UserError(f"{path} is not a seq2reads dataset: run `seq2reads prepare CONFIG` to create one.")
    if int(attrs.get("version", 0)) > VERSION:
        raise UserError(f"dataset {path} was written by a newer seq2reads (version {attrs['version']}): upgrade seq2reads.")
    arrays = {k: root[k] for k in ("seq", "signal", "mask", "replicate_signal") if k in root}
    reg = root["regions"]
    cols = {}
    for c in REGION_COLUMNS:
        v = reg[c][...]
        cols[c] = v.astype(object) if c in _STR_COLUMNS else v
    return DatasetStore(arrays, pd.DataFrame(cols), attrs, p)

"""Batches of windows from the Zarr dataset, augmented per batch, and a Lightning DataModule.

A batch is a dict of tensors (docs/ARCHITECTURE.md):

- ``seq``    float32 ``(B, 4, L_in)``     one-hot DNA, N all-zero
- ``signal`` float32 ``(B, C, 2, L_in)``  read counts over the whole input span (strand 0 = plus)
- ``mask``   bool    ``(B, L_in)``        True where a position counts in the loss
- ``index``  int64   ``(B,)``             row of the window in the store
- ``background`` bool ``(B,)``            True for background windows (``regions/kind``)

Augmentation is vectorised over the batch: each window gets its own jitter offset in
``[0, 2 * jitter]`` (a crop of the stored span) and, with probability 1/2, the reverse complement
(sequence reversed and complemented, strands swapped and each reversed, mask reversed).

Two sources feed the same code path. :class:`MemorySource` holds the needed rows as numpy arrays
(used when they fit in memory); :class:`ChunkSource` reads Zarr chunks on demand through a small
LRU cache, paired with :class:`BlockShuffleSampler`, which shuffles the order of chunk blocks and
the rows within a buffer of blocks, so every chunk is decoded about once per epoch. Both expose
``__getitems__`` so that PyTorch's fetcher hands them a whole batch of indices at once; the
standard samplers (and Lightning's distributed-sampler injection) therefore work unchanged.

Hand-written because no maintained library does genomic window batching with strand-aware
reverse complement over a multi-cell-type store (bpnet-lite's loader is single-task and
per-example).
"""

from __future__ import annotations

import abc
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

_BASES_NP = np.arange(4, dtype=np.uint8).reshape(1, 4, 1)

# Fraction of currently available memory that an in-memory split may take.
MEMORY_FRACTION = 0.4


def center_crop(x, length: int):
    """Crop the last axis of ``x`` (tensor or array) to its central ``length`` positions.

    For an odd surplus the extra position is dropped on the right, matching the store's
    ``start = centre - S // 2`` convention.
    """
    n = x.shape[-1]
    if length > n:
        raise ValueError(f"cannot crop length {n} to {length}")
    start = (n - length) // 2
    return x[..., start : start + length]


class _Source(abc.ABC):
    """Rows of the store as numpy arrays.

    ``rows(idx) -> (seq (R, S), signal (R, C, 2, S), mask (R, S), pos (B,))``: arrays holding the
    rows and the position of each requested store row in them. ``background`` bool (W,): which
    store rows are background windows (``regions/kind``), indexed by store row.
    """

    input_len: int
    jitter: int
    background: np.ndarray

    @abc.abstractmethod
    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Arrays holding the rows ``idx`` and the position of each of them in those arrays."""


def _background_rows(store) -> np.ndarray:
    """bool (W,): True for the store's background windows."""
    return (store.regions["kind"] == "background").to_numpy()


class MemorySource(_Source):
    """The given rows of a store held in memory (numpy), indexed by store row."""

    def __init__(self, store, indices: np.ndarray):
        indices = np.sort(np.asarray(indices, dtype=np.int64))
        self.input_len, self.jitter = store.input_len, store.jitter
        self.background = _background_rows(store)
        self._pos = np.full(int(indices.max()) + 1 if len(indices) else 0, -1, dtype=np.int64)
        self._pos[indices] = np.arange(len(indices))
        self.seq = _read_rows(store.seq, indices)
        self.signal = _read_rows(store.signal, indices).astype(np.float32, copy=False)
        self.mask = _read_rows(store.mask, indices).astype(bool, copy=False)

    def rows(self, idx):
        return self.seq, self.signal, self.mask, self._pos[idx]


class ChunkSource(_Source):
    """Rows read from Zarr chunk by chunk, with an LRU cache of decoded chunks (streaming)."""

    def __init__(self, store, cache_chunks: int = 16):
        self.input_len, self.jitter = store.input_len, store.jitter
        self.background = _background_rows(store)
        self.store = store
        self.chunk = int(chunk_rows(store))
        self.cache_chunks = cache_chunks
        self._cache: OrderedDict[int, tuple] = OrderedDict()

    def _chunk(self, c: int):
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        sl = slice(c * self.chunk, (c + 1) * self.chunk)
        data = (np.asarray(self.store.seq[sl]), np.asarray(self.store.signal[sl], dtype=np.float32),
                np.asarray(self.store.mask[sl], dtype=bool))
        self._cache[c] = data
        if len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return data

    def rows(self, idx):
        idx = np.asarray(idx, dtype=np.int64)
        n = len(idx)
        seq = sig = msk = None
        for c in np.unique(idx // self.chunk):
            sel = np.nonzero(idx // self.chunk == c)[0]
            s, g, m = self._chunk(int(c))
            local = idx[sel] - c * self.chunk
            if seq is None:
                seq = np.empty((n, *s.shape[1:]), s.dtype)
                sig = np.empty((n, *g.shape[1:]), np.float32)
                msk = np.empty((n, *m.shape[1:]), bool)
            seq[sel], sig[sel], msk[sel] = s[local], g[local], m[local]
        return seq, sig, msk, np.arange(n)


class WindowDataset(Dataset):
    """Map-style dataset over store rows whose ``__getitems__`` builds a whole augmented batch.

    Parameters
    ----------
    source : MemorySource or ChunkSource
    indices : int array of store rows in this split
    jitter : bool
        Random crop within the stored margin (else the central crop).
    revcomp : bool
        Reverse-complement half of the examples at random.
    """

    def __init__(self, source: _Source, indices: np.ndarray, jitter: bool = False, revcomp: bool = False):
        self.source = source
        self.indices = np.asarray(indices, dtype=np.int64)
        self.jitter = jitter and source.jitter > 0
        self.revcomp = revcomp

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.__getitems__([i])

    def __getitems__(self, items: Sequence[int]) -> dict:
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        return make_batch(self.source, rows, jitter=self.jitter, revcomp=self.revcomp)


def make_batch(source: _Source, rows: np.ndarray, jitter: bool = False, revcomp: bool = False,
               generator: torch.Generator | None = None) -> dict:
    """Gather ``rows`` from ``source``, crop to the input length (jittered or central), augment.

    Vectorised over the batch: every crop is one fancy-indexed read of a strided window view,
    and reverse-complemented examples are read through reversed views (positions and strands
    reversed), so augmentation costs no extra pass over the data. Flipped examples come first in
    the batch (the order of a shuffled batch carries no meaning).
    """
    seq, sig, msk, pos = source.rows(rows)
    n = len(pos)
    span = seq.shape[-1]
    L = source.input_len
    margin = span - L
    if jitter and margin > 0:
        offsets = torch.randint(0, margin + 1, (n,), generator=generator).numpy()
    else:
        offsets = np.full(n, margin // 2, dtype=np.int64)
    flip = (torch.rand(n, generator=generator) < 0.5).numpy() if revcomp else np.zeros(n, bool)
    order = np.argsort(~flip, kind="stable")  # flipped first
    k = int(flip.sum())
    pos, offsets, rows = pos[order], offsets[order], np.asarray(rows)[order]
    # A reversed crop at offset o of the stored span is the forward crop at margin - o of the
    # reversed span.
    seq_c = _crop(seq, pos, offsets, L, k, lambda a: a[:, ::-1])
    msk_c = _crop(msk, pos, offsets, L, k, lambda a: a[:, ::-1])
    sig_c = _crop(sig, pos, offsets, L, k, lambda a: a[:, :, ::-1, ::-1])
    onehot = (seq_c[:, None, :] == _BASES_NP).astype(np.float32)
    if k:
        onehot[:k] = onehot[:k, ::-1]  # complement = reversed channel order (A C G T -> T G C A)
    return {"seq": torch.from_numpy(onehot), "signal": torch.from_numpy(sig_c), "mask": torch.from_numpy(msk_c),
            "index": torch.from_numpy(rows.astype(np.int64)),
            "background": torch.from_numpy(source.background[rows.astype(np.int64)])}


def _crop(arr: np.ndarray, pos: np.ndarray, offsets: np.ndarray, length: int, k: int, reverse) -> np.ndarray:
    """Crops ``arr[pos[i], ..., offsets[i]:offsets[i] + length]``; the first ``k`` reversed."""
    swv = np.lib.stride_tricks.sliding_window_view
    margin = arr.shape[-1] - length
    fwd = swv(arr, length, axis=-1)
    idx = (slice(None),) * (arr.ndim - 2)
    if k == 0:
        return np.ascontiguousarray(fwd[(pos, *idx, offsets)])
    out = np.empty((len(pos), *arr.shape[1:-1], length), arr.dtype)
    out[k:] = fwd[(pos[k:], *idx, offsets[k:])]
    out[:k] = swv(reverse(arr), length, axis=-1)[(pos[:k], *idx, margin - offsets[:k])]
    return out


class BlockShuffleSampler(Sampler[int]):
    """Shuffle for streaming: permute blocks of consecutive rows, then rows within a buffer of blocks.

    Yields positions into ``indices`` (the dataset's own numbering). Consecutive rows share Zarr
    chunks, so with a chunk cache of ``buffer`` blocks each chunk is decoded about once an epoch.
    """

    def __init__(self, indices: np.ndarray, block: int, buffer: int = 8, seed: int = 0):
        self.indices = np.asarray(indices)
        self.block, self.buffer, self.seed, self.epoch = max(1, block), max(1, buffer), seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch))
        n = len(self.indices)
        # Group dataset positions by the store block (chunk) their row falls into.
        block_of = self.indices // self.block
        _, starts = np.unique(block_of, return_index=True)
        groups = np.split(np.arange(n), starts[1:]) if n else []
        order = rng.permutation(len(groups))
        for b in range(0, len(order), self.buffer):
            pos = np.concatenate([groups[g] for g in order[b : b + self.buffer]])
            yield from rng.permutation(pos).tolist()


def chunk_rows(store) -> int:
    """Rows per Zarr chunk of the store's signal array (1 for in-memory arrays)."""
    chunks = getattr(store.signal, "chunks", None)
    return int(chunks[0]) if chunks else 1


def split_nbytes(store, n_rows: int) -> int:
    """Bytes that ``n_rows`` rows take in memory (sequence + signal + mask)."""
    span, c = store.span, len(store.samples)
    return n_rows * span * (1 + 4 * 2 * c + 1)


def available_memory() -> int:
    """Bytes of memory currently available (Linux ``SC_AVPHYS_PAGES``; 4 GiB if unknown)."""
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def _read_rows(arr, indices: np.ndarray) -> np.ndarray:
    """Rows ``indices`` (sorted) of a Zarr or numpy array, reading contiguous runs as slices."""
    if isinstance(arr, np.ndarray):
        return arr[indices]
    if len(indices) == 0:
        return np.empty((0, *arr.shape[1:]), dtype=arr.dtype)
    out = np.empty((len(indices), *arr.shape[1:]), dtype=arr.dtype)
    breaks = np.nonzero(np.diff(indices) != 1)[0] + 1
    pos = 0
    for run in np.split(indices, breaks):
        out[pos : pos + len(run)] = arr[int(run[0]) : int(run[-1]) + 1]
        pos += len(run)
    return out


def _open(store):
    if isinstance(store, (str, os.PathLike)):
        from seq2reads.data.store import open_dataset

        return open_dataset(Path(store))
    return store


def make_source(store, indices: np.ndarray, in_memory: bool | str = "auto") -> _Source:
    """A :class:`MemorySource` when the rows fit (``auto``: < 40 % of free memory), else a :class:`ChunkSource`."""
    if in_memory == "auto":
        in_memory = split_nbytes(store, len(indices)) < MEMORY_FRACTION * available_memory()
    return MemorySource(store, indices) if in_memory else ChunkSource(store)


def iter_batches(store, indices: np.ndarray, batch_size: int = 64, in_memory: bool | str = "auto") -> Iterator[dict]:
    """Un-augmented batches (central crop) of the given store rows, in order (for evaluation)."""
    store = _open(store)
    indices = np.asarray(indices, dtype=np.int64)
    source = make_source(store, indices, in_memory)
    for b in range(0, len(indices), batch_size):
        yield make_batch(source, indices[b : b + batch_size])


def _identity(batch):
    return batch


try:  # Lightning is a dependency, but keep the module importable for plain-PyTorch users.
    import lightning as L

    _Base = L.LightningDataModule
except ImportError:  # pragma: no cover
    _Base = object


class S2RDataModule(_Base):
    """Lightning DataModule over a prepared dataset: train (augmented), valid and test loaders.

    Parameters
    ----------
    store : path or DatasetStore
        ``RUN/dataset`` or an opened store.
    batch_size : int
    jitter, revcomp : bool
        Augmentations of the training loader.
    seed : int
        Seed of the streaming sampler's shuffles (the in-memory path uses the global torch RNG,
        seeded by ``lightning.seed_everything``).
    num_workers : int
    in_memory : bool or "auto"
        Hold each split in memory (``auto``: when it fits), else stream chunks.
    kinds : tuple of str
        Which window kinds (``peak``, ``background``) the loaders use.
    """

    def __init__(self, store, batch_size: int = 64, jitter: bool = True, revcomp: bool = True, seed: int = 0,
                 num_workers: int = 0, in_memory: bool | str = "auto", kinds=("peak", "background")):
        super().__init__()
        self.store = _open(store)
        self.batch_size, self.jitter, self.revcomp = batch_size, jitter, revcomp
        self.seed, self.num_workers, self.in_memory, self.kinds = seed, num_workers, in_memory, tuple(kinds)
        self._datasets: dict[str, WindowDataset] = {}

    def dataset(self, split: str) -> WindowDataset:
        """The :class:`WindowDataset` of a split (built once)."""
        if split not in self._datasets:
            idx = self.store.indices(split, kinds=self.kinds)
            train = split == "train"
            source = make_source(self.store, idx, self.in_memory)
            self._datasets[split] = WindowDataset(source, idx, jitter=train and self.jitter,
                                                  revcomp=train and self.revcomp)
        return self._datasets[split]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        sampler = None
        if isinstance(ds.source, ChunkSource) and shuffle:
            sampler = BlockShuffleSampler(ds.indices, ds.source.chunk, seed=self.seed)
            shuffle = False
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler,
                          collate_fn=_identity, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("valid", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

"""Loader: cropping, reverse complement, in-memory vs streaming, distributed sharding."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from seq2reads.data.loader import (
    BlockShuffleSampler,
    ChunkSource,
    MemorySource,
    S2RDataModule,
    WindowDataset,
    center_crop,
    iter_batches,
    make_batch,
)


def array_store(n=40, c=2, input_len=20, jitter=3, seed=0):
    """A store-shaped namespace over numpy arrays (the loader only needs these attributes)."""
    rng = np.random.default_rng(seed)
    span = input_len + 2 * jitter
    regions = pd.DataFrame({"split": ["train"] * (n - 10) + ["valid"] * 5 + ["test"] * 5,
                            "kind": ["peak", "background"] * (n // 2)})

    def indices(split, kinds=("peak", "background")):
        sel = regions["split"].eq(split) & regions["kind"].isin(kinds)
        return np.nonzero(sel.to_numpy())[0].astype(np.int64)

    return SimpleNamespace(
        seq=rng.integers(0, 5, (n, span)).astype(np.uint8),
        signal=rng.poisson(2.0, (n, c, 2, span)).astype(np.float32),
        mask=rng.random((n, span)) > 0.1,
        input_len=input_len, jitter=jitter, span=span, samples=[f"ct{i}" for i in range(c)],
        regions=regions, indices=indices,
    )


def test_center_crop_matches_store_convention():
    x = np.arange(10)
    assert center_crop(x, 4).tolist() == [3, 4, 5, 6]
    assert center_crop(np.arange(9), 4).tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError):
        center_crop(x, 11)


def test_one_hot_n_is_zero_and_revcomp_is_exact():
    st = array_store(n=64)
    src = MemorySource(st, np.arange(64))
    torch.manual_seed(0)
    b = make_batch(src, np.arange(64), revcomp=True)
    comp = np.array([3, 2, 1, 0, 4])
    n_flip = 0
    for i, row in enumerate(b["index"].tolist()):
        codes = st.seq[row, 3:23]
        sig, msk = st.signal[row, ..., 3:23], st.mask[row, 3:23]
        oh = b["seq"][i].numpy()
        if np.array_equal(b["signal"][i].numpy(), sig):
            expect_codes, expect_mask = codes, msk
        else:
            n_flip += 1
            # Plus strand of the reverse complement = reversed minus strand of the original.
            assert np.array_equal(b["signal"][i].numpy(), sig[:, ::-1, ::-1])
            expect_codes, expect_mask = comp[codes[::-1]], msk[::-1]
        assert np.array_equal(b["mask"][i].numpy(), expect_mask)
        for p, c in enumerate(expect_codes):
            assert oh[:, p].sum() == (c < 4) and (c == 4 or oh[c, p] == 1)
    assert 10 < n_flip < 54


def test_jitter_crops_are_windows_of_the_stored_span():
    st = array_store()
    src = MemorySource(st, np.arange(40))
    torch.manual_seed(0)
    b = make_batch(src, np.arange(40), jitter=True)
    assert b["seq"].shape == (40, 4, 20) and b["signal"].shape == (40, 2, 2, 20) and b["mask"].shape == (40, 20)
    offsets = set()
    assert b["index"].tolist() == list(range(40))
    for i in range(40):
        row_sig = st.signal[i]
        # Find the offset at which the crop sits; it must exist and be within the margin.
        hits = [o for o in range(7) if np.array_equal(row_sig[..., o:o + 20], b["signal"][i].numpy())]
        assert hits, f"window {i} is not a crop of its stored span"
        offsets.add(hits[0])
        codes = b["seq"][i].argmax(0).numpy()
        ok = b["seq"][i].sum(0).numpy() > 0
        assert np.array_equal(codes[ok], st.seq[i, hits[0]:hits[0] + 20][ok])
    assert len(offsets) > 2, "jitter offsets should vary across the batch"
    central = make_batch(src, np.arange(3))
    assert np.array_equal(central["signal"].numpy(), st.signal[:3, ..., 3:23])


def test_chunk_source_equals_memory_source():
    st = array_store(n=40)
    # zarr-like: chunks attribute on the signal array
    import zarr

    g = zarr.group(store=zarr.storage.MemoryStore())
    for name in ("seq", "signal", "mask"):
        arr = getattr(st, name)
        z = g.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=(8, *arr.shape[1:]))
        z[:] = arr
    zst = SimpleNamespace(**{**vars(st), "seq": g["seq"], "signal": g["signal"], "mask": g["mask"]})
    rows = np.array([3, 17, 5, 39, 8])
    a = make_batch(MemorySource(st, np.arange(40)), rows)
    b = make_batch(ChunkSource(zst, cache_chunks=2), rows)
    for key in a:
        assert torch.equal(a[key], b[key])
    # background flags follow each example's store row (regions/kind: odd rows are background)
    assert a["background"].tolist() == [r % 2 == 1 for r in a["index"].tolist()]


def test_block_shuffle_covers_every_row_once_and_keeps_blocks_together():
    idx = np.arange(96, 160)  # 8 whole blocks of 8 rows
    s = BlockShuffleSampler(idx, block=8, buffer=2, seed=3)
    order = list(s)
    assert sorted(order) == list(range(64))
    # Each consecutive run of 16 positions (a buffer of 2 blocks) touches at most 2 store blocks.
    for k in range(0, 64, 16):
        assert len({int(idx[p] // 8) for p in order[k:k + 16]}) <= 2
    s.set_epoch(1)
    assert list(s) != order


def test_distributed_sampler_shards_batches_disjointly():
    st = array_store(n=40)
    ds = WindowDataset(MemorySource(st, np.arange(40)), st.indices("train"))
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        dl = DataLoader(ds, batch_size=4, sampler=sampler, collate_fn=lambda b: b)
        for batch in dl:
            assert batch["seq"].shape[0] <= 4
            seen.extend(batch["index"].tolist())
    assert sorted(seen) == sorted(st.indices("train").tolist())


def test_datamodule_on_a_prepared_store(prepared_run):
    from seq2reads.data.store import open_dataset

    store = open_dataset(prepared_run.run_path / "dataset")
    dm = S2RDataModule(store, batch_size=16, seed=0)
    batch = next(iter(dm.train_dataloader()))
    L, C = store.input_len, len(store.samples)
    assert batch["seq"].shape == (16, 4, L) and batch["signal"].shape == (16, C, 2, L)
    assert batch["mask"].dtype == torch.bool and batch["index"].dtype == torch.int64
    assert set(batch["index"].tolist()) <= set(store.indices("train").tolist())
    # Un-augmented evaluation batches are the central crop of the stored span.
    test_idx = store.indices("test")
    ev = next(iter_batches(store, test_idx[:5], batch_size=5))
    expect = center_crop(np.asarray(store.signal[int(test_idx[0])]), L)
    assert np.array_equal(ev["signal"][0].numpy(), expect)
    # Streaming gives the same evaluation batches as in-memory.
    ev2 = next(iter_batches(store, test_idx[:5], batch_size=5, in_memory=False))
    assert torch.equal(ev["seq"], ev2["seq"]) and torch.equal(ev["signal"], ev2["signal"])
    streamed = S2RDataModule(store, batch_size=16, in_memory=False)
    n = sum(b["seq"].shape[0] for b in streamed.train_dataloader())
    assert n == len(store.indices("train"))

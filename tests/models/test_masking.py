"""Variable span masking: masked-fraction distribution, contiguous spans, joint/independent, S2R."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seq2reads.models.masking import draw_masks, run_lengths, span_mask


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_masked_fraction_within_bounds_and_uniform():
    m = span_mask(4000, 256, 0.15, 0.40, span=16, generator=gen())
    assert m.shape == (4000, 256) and m.dtype == torch.bool
    f = m.float().mean(1).numpy()
    # exactly round(f * L) positions: within the bounds up to one position of rounding
    assert f.min() >= 0.15 - 1 / 256 and f.max() <= 0.40 + 1 / 256
    assert abs(f.mean() - 0.275) < 0.01
    # uniform on [0.15, 0.40]: each quarter of the range holds about a quarter of the examples
    hist, _ = np.histogram(f, bins=4, range=(0.15 - 1 / 512, 0.40 + 1 / 512))
    assert np.all(np.abs(hist / len(f) - 0.25) < 0.04), hist
    assert f.std() == pytest.approx(0.25 / np.sqrt(12), rel=0.1)


def test_spans_are_contiguous_with_the_requested_mean_length():
    for span in (4, 16, 40):
        m = span_mask(300, 512, 0.15, 0.40, span=span, generator=gen(span))
        runs = run_lengths(m)
        lengths = np.concatenate([np.asarray(r) for r in runs])
        # each example is a few runs, not scattered positions: the number of runs is k / span
        n_masked = m.sum(1).numpy()
        n_runs = np.array([len(r) for r in runs])
        expected = np.maximum(1, np.round(n_masked / span))
        assert np.all(n_runs == expected)
        assert lengths.mean() == pytest.approx(span, rel=0.1)
        assert sum(map(sum, runs)) == int(m.sum())
    # lengths vary (random composition), not all equal to the mean
    assert lengths.std() > 0.3 * lengths.mean()


def test_span_one_gives_isolated_positions():
    m = span_mask(50, 200, 0.2, 0.3, span=1, generator=gen(3))
    assert all(max(r) == 1 for r in run_lengths(m))


def test_short_windows_and_reproducibility():
    a = span_mask(20, 8, 0.15, 0.40, span=16, generator=gen(7))
    b = span_mask(20, 8, 0.15, 0.40, span=16, generator=gen(7))
    assert torch.equal(a, b)
    assert (a.sum(1) >= 1).all() and (a.sum(1) <= 7).all()
    assert not torch.equal(a, span_mask(20, 8, 0.15, 0.40, span=16, generator=gen(8)))


def test_bad_bounds_rejected():
    with pytest.raises(ValueError):
        span_mask(2, 100, 0.0, 0.4)
    with pytest.raises(ValueError):
        span_mask(2, 100, 0.5, 0.4)


def test_joint_independent_s2r_and_cell_masks():
    n, length = 2000, 128
    ms = draw_masks(n, length, 0.15, 0.40, span=8, joint=True, cell_mask_prob=0.3, s2r_prob=0.25, generator=gen(1))
    s2r = ms.s2r
    assert abs(s2r.float().mean().item() - 0.25) < 0.04
    assert ms.reads[s2r].all()  # S2R: reads fully masked ...
    assert not ms.seq[s2r].any()  # ... sequence fully visible ...
    assert not ms.cell[s2r].any()  # ... and the cell type given
    assert torch.equal(ms.seq[~s2r], ms.reads[~s2r])  # joint: the same spans
    assert abs(ms.cell[~s2r].float().mean().item() - 0.3) < 0.04
    ind = draw_masks(n, length, 0.15, 0.40, span=8, joint=False, cell_mask_prob=0.0, s2r_prob=0.0, generator=gen(2))
    assert not ind.cell.any() and not ind.s2r.any()
    assert not torch.equal(ind.seq, ind.reads)
    f_seq, f_reads = ind.seq.float().mean(1), ind.reads.float().mean(1)
    assert abs(f_seq.mean().item() - 0.275) < 0.01 and abs(f_reads.mean().item() - 0.275) < 0.01
    # independent draws: overlap is about the product of the fractions, far from full agreement
    overlap = (ind.seq & ind.reads).float().mean().item()
    assert overlap < 0.5 * f_seq.mean().item()

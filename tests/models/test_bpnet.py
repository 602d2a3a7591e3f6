"""BPNet: shapes, crop-early geometry, equivalence with bpnet-lite, embeddings, registry checks."""

from __future__ import annotations

import pytest
import torch

from seq2reads.config import BPNetModel
from seq2reads.errors import UserError
from seq2reads.models.bpnet import BPNet
from seq2reads.models.heads import box_halves
from seq2reads.models.registry import build_model, check_window, min_input_len


def _onehot(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 4, (n, length), generator=g)
    return torch.nn.functional.one_hot(idx, 4).permute(0, 2, 1).float()


def test_shapes_and_min_input_len():
    m = BPNet(n_cell_types=3, output_len=40, filters=8, layers=3, profile_kernel=25)
    # 40 + 20 (conv0) + 2*(2+4+8) (dilated) + 24 (profile head)
    assert m.min_input_len == 40 + 20 + 28 + 24
    cfg = BPNetModel(filters=8, layers=3, profile_kernel=25)
    assert min_input_len(cfg, 40) == m.min_input_len
    prof, lc = m(_onehot(2, m.min_input_len))
    assert prof.shape == (2, 3, 2, 40) and lc.shape == (2, 3)
    with pytest.raises(ValueError, match="shorter"):
        m(_onehot(1, m.min_input_len - 1))


def test_default_architecture_is_2114_to_1000():
    assert min_input_len(BPNetModel(), 1000) == 2114


def test_longer_input_is_centre_cropped():
    """A longer window gives exactly the prediction of its centre span (crop early)."""
    m = BPNet(n_cell_types=2, output_len=30, filters=8, layers=2, profile_kernel=11).eval()
    need = m.min_input_len
    x = _onehot(2, need + 20)
    with torch.no_grad():
        p_long, c_long = m(x)
        p_c, c_c = m(x[..., 10:10 + need])
    torch.testing.assert_close(p_long, p_c)
    torch.testing.assert_close(c_long, c_c)
    # The centre crop follows loader.center_crop's rule: start = (L - length) // 2.
    with torch.no_grad():
        p_odd, _ = m(x[..., : need + 3])
        p_ref, _ = m(x[..., 1 : 1 + need])
    torch.testing.assert_close(p_odd, p_ref)


def test_profile_matches_bpnet_lite_with_same_weights():
    """Valid convolutions give bpnet-lite's (same-padding, cropped) profile exactly."""
    import bpnetlite.bpnet as bl  # installed by the Makefile (pip --no-deps)
    torch.manual_seed(0)
    ref = bl.BPNet(n_filters=8, n_layers=3, n_control_tracks=0, verbose=False).eval()
    out_len = 50
    m = BPNet(n_cell_types=1, output_len=out_len, filters=8, layers=3).eval()
    with torch.no_grad():
        m.conv0.weight.copy_(ref.iconv.weight)
        m.conv0.bias.copy_(ref.iconv.bias)
        for a, b in zip(m.dil, ref.rconvs):
            a.weight.copy_(b.weight)
            a.bias.copy_(b.bias)
        m.profile_head.weight.copy_(ref.fconv.weight)
        m.profile_head.bias.copy_(ref.fconv.bias)
        x = _onehot(3, out_len + 2 * ref.trimming, seed=1)
        assert x.shape[-1] == m.min_input_len
        p_ref, _ = ref(x)
        p, _ = m(x)
    torch.testing.assert_close(p[:, 0], p_ref, rtol=1e-4, atol=1e-4)


def test_embed_layers():
    m = BPNet(n_cell_types=2, output_len=30, filters=8, layers=3, profile_kernel=11)
    assert m.layer_names() == ["conv0", "dil1", "dil2", "dil3"]
    x = _onehot(2, m.min_input_len)
    e0 = m.embed(x, "conv0")
    e3 = m.embed(x, "dil3")
    assert e0.shape == (2, 8, m.min_input_len - 20)
    assert e3.shape == (2, 8, 30 + 10)
    with pytest.raises(ValueError, match="unknown layer"):
        m.embed(x, "nope")


def test_gradients_flow_to_all_parameters():
    m = BPNet(n_cell_types=2, output_len=20, filters=8, layers=2, profile_kernel=11)
    p, c = m(_onehot(4, m.min_input_len))
    (p.square().mean() + c.square().mean()).backward()
    assert all(q.grad is not None and torch.isfinite(q.grad).all() for q in m.parameters())


def test_registry_build_and_short_window():
    cfg = BPNetModel(filters=8, layers=3, profile_kernel=25)
    m = build_model(cfg, n_cell_types=2, input_len=200, output_len=100)
    assert isinstance(m, BPNet) and m.n_cell_types == 2
    need = min_input_len(cfg, 100)
    with pytest.raises(UserError, match=f"at least {need} bp"):
        check_window(cfg, need - 1, 100)
    with pytest.raises(UserError, match=f"at least {need} bp"):
        build_model(cfg, 2, need - 1, 100)


def test_channels_last_layout_gives_the_same_outputs_and_grads():
    torch.manual_seed(0)
    a = BPNet(n_cell_types=2, output_len=20, filters=8, layers=2, profile_kernel=11, channels_last=True)
    b = BPNet(n_cell_types=2, output_len=20, filters=8, layers=2, profile_kernel=11, channels_last=False)
    b.load_state_dict(a.state_dict())
    x = _onehot(3, a.min_input_len)
    pa, ca = a(x)
    pb, cb = b(x)
    torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ca, cb, rtol=1e-5, atol=1e-5)
    (pa.sum() + ca.sum()).backward()
    (pb.sum() + cb.sum()).backward()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-4, msg=n)
    torch.testing.assert_close(a.embed(x, "dil2"), b.embed(x, "dil2"), rtol=1e-5, atol=1e-5)


def test_count_norm_batch_statistics_and_eval_affine():
    """count_norm: batch statistics in training (a batch of one uses the running ones), a fixed
    affine map in eval mode (a window's prediction does not depend on the rest of its batch)."""
    torch.manual_seed(0)
    m = BPNet(n_cell_types=2, output_len=20, filters=8, layers=2, profile_kernel=11)
    assert isinstance(m.count_norm, torch.nn.BatchNorm1d)
    x = _onehot(6, m.min_input_len, seed=1)
    before = m.count_norm.running_mean.clone()
    m.train()
    _, c_batch = m(x)
    assert not torch.equal(m.count_norm.running_mean, before)  # running statistics updated
    _, c_one = m(x[:1])  # no ValueError for a training batch of one window
    assert torch.isfinite(c_one).all() and not torch.allclose(c_one, c_batch[:1])
    m.eval()
    with torch.no_grad():
        _, full = m(x)
        _, alone = m(x[2:3])
    torch.testing.assert_close(full[2:3], alone)
    off = BPNet(n_cell_types=2, output_len=20, filters=8, layers=2, profile_kernel=11, count_norm=False)
    assert off.count_norm is None and "count_norm.running_mean" not in off.state_dict()


def test_count_scales_average_nested_centred_windows():
    """count_scales=k: the count head reads the means of the features over the output window and
    its centred halves, quarters, ... (here windows [0, 16), [4, 12), [6, 10) of 16 outputs)."""
    m = BPNet(n_cell_types=1, output_len=16, filters=4, layers=1, profile_kernel=5, count_scales=3)
    h = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    pooled = m._pool(h)
    assert pooled.shape == (2, 12) and m.count_head.in_features == 12
    for k, (a, b) in enumerate([(0, 16), (4, 12), (6, 10)]):
        torch.testing.assert_close(pooled[:, 4 * k : 4 * k + 4], h[..., a:b].mean(-1))
    with pytest.raises(ValueError, match="count_scales"):
        BPNet(n_cell_types=1, output_len=16, filters=4, layers=1, profile_kernel=5, count_scales=6)
    with pytest.raises(UserError, match="count_scales <= 5"):
        check_window(BPNetModel(filters=4, layers=1, profile_kernel=5, count_box=0, count_scales=6), 100, 16)


def test_count_box_averages_centred_windows_growing_by_a_step():
    """count_box=B: the count head reads the means over [c - B, c + B), [c - 2B, c + 2B), ... and
    the whole output window (here B=3 on 16 outputs: [5, 11), [2, 14), [0, 16)); reverse
    complements (reversed positions) pool alike; count_scales is then unused (not even checked)."""
    m = BPNet(n_cell_types=1, output_len=16, filters=4, layers=1, profile_kernel=5, count_box=3, count_scales=9)
    h = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(0))
    pooled = m._pool(h)
    assert pooled.shape == (2, 12) and m.count_head.in_features == 12
    for k, (a, b) in enumerate([(5, 11), (2, 14), (0, 16)]):
        torch.testing.assert_close(pooled[:, 4 * k : 4 * k + 4], h[..., a:b].mean(-1))
    torch.testing.assert_close(m._pool(h.flip(-1)), pooled)
    assert box_halves(16, 8) == [16] and box_halves(16, 100) == [16] and box_halves(17, 4) == [4, 17]
    with pytest.raises(ValueError, match="count_box"):
        box_halves(16, 0)
    check_window(BPNetModel(filters=4, layers=1, profile_kernel=5, count_box=3, count_scales=9), 100, 16)
    assert BPNetModel().count_box == 32  # the config's default (the class's 0 is BPNet's head)


def test_count_stem_reads_the_centred_output_window():
    """The count stem convolves the input span under the output window (conv_kernel - 1 more) and
    feeds only the count head: the profile does not depend on its weights."""
    torch.manual_seed(0)
    m = BPNet(n_cell_types=2, output_len=20, filters=8, layers=2, profile_kernel=11, conv_kernel=5,
              count_stem=6, count_scales=2).eval()
    assert m.count_head.in_features == (8 + 6) * 2
    x = _onehot(3, m.min_input_len + 7, seed=2)  # longer and odd-length: centring must still hold
    a = (x.shape[-1] - 20) // 2 - 2
    want = m.count_relu(m.count_conv(x[..., a : a + 24]))
    torch.testing.assert_close(m._stem(x), want)
    with torch.no_grad():
        p0, c0 = m(x)
        m.count_conv.weight.add_(1.0)
        p1, c1 = m(x)
    torch.testing.assert_close(p0, p1)
    assert not torch.allclose(c0, c1)


def test_count_stem_learns_a_central_motif_count():
    """A small model with the count stem and centred pooling learns a count set by the number of
    copies of a motif near the window centre (copies elsewhere have no effect): held-out r > 0.9."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    m = BPNet(n_cell_types=1, output_len=64, filters=8, layers=2, profile_kernel=5, conv_kernel=9,
              count_stem=8, count_scales=3)
    L = m.min_input_len
    motif = torch.tensor([2, 0, 3, 3, 0, 1, 0, 2])  # GATTACAG

    def batch(n):
        idx = torch.randint(0, 4, (n, L), generator=g)
        k = torch.randint(0, 4, (n,), generator=g)
        for i in range(n):
            for j in range(int(k[i])):  # central copies: within +-12 bp of the centre, no overlap
                idx[i, L // 2 - 12 + 8 * j : L // 2 - 4 + 8 * j] = motif
            if torch.rand(1, generator=g) < 0.5:  # a decoy copy far from the centre
                idx[i, 4:12] = motif
        x = torch.nn.functional.one_hot(idx, 4).permute(0, 2, 1).float()
        return x, k.float()

    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    for _ in range(250):
        x, y = batch(64)
        loss = ((m(x)[1][:, 0] - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x, y = batch(256)
    with torch.no_grad():
        pred = m(x)[1][:, 0]
    assert torch.corrcoef(torch.stack([pred, y]))[0, 1] > 0.9

"""The masked encoder: shapes, S2R contract, masking without leaks, gradients, embeddings, RoPE,
losses and adaptive balancing — on synthetic tensors with tiny models."""

from __future__ import annotations

import pytest
import torch

from seq2reads.config import EncoderModel
from seq2reads.errors import UserError
from seq2reads.models.balancing import AdaptiveBalancer
from seq2reads.models.encoder import MaskedEncoder, apply_rope, rope_angles
from seq2reads.models.heads import cell_loss, count_loss, profile_loss, sequence_loss
from seq2reads.models.masking import span_mask


def tiny(patch=4, length=128, out=64, c=3, **kw):
    torch.manual_seed(0)
    cfg = EncoderModel(d_model=16, depth=2, heads=2, patch=patch, seq_kernels=[1, 5], **kw)
    return MaskedEncoder.from_config(cfg, c, length, out).eval()


def one_hot(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 4, (n, length), generator=g)
    return torch.nn.functional.one_hot(codes, 4).permute(0, 2, 1).float()


def reads_like(n, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.poisson(torch.rand(n, 2, length, generator=g) * 3, generator=g)


@pytest.mark.parametrize("patch,length,out", [(1, 256, 128), (4, 128, 64), (8, 256, 100)])
def test_forward_is_the_s2r_contract(patch, length, out):
    m = tiny(patch, length, out)
    x = one_hot(5, length)
    prof, lc = m(x)
    assert prof.shape == (5, 3, 2, out) and lc.shape == (5, 3)
    assert torch.isfinite(prof).all() and torch.isfinite(lc).all()
    # forward == encode with reads fully masked, per cell type, cropped to the centre
    start = (length - out) // 2
    for c in range(3):
        o = m.encode(x, None, c)
        assert torch.allclose(prof[:, c], o["profile_logits"][..., start : start + out], atol=1e-5)
        assert torch.allclose(lc[:, c], o["log_count"], atol=1e-5)
    # cell types differ (the cell embedding reaches the output)
    assert not torch.allclose(prof[:, 0], prof[:, 1])


def test_encode_outputs_shapes_at_base_resolution():
    m = tiny(4, 128, 64)
    o = m.encode(one_hot(3, 128), reads_like(3, 128), torch.tensor([0, 1, 2]))
    assert o["hidden"].shape == (3, 32, 16)
    assert o["profile_logits"].shape == (3, 2, 128)
    assert o["seq_logits"].shape == (3, 4, 128)
    assert o["log_count"].shape == (3,) and o["cell_logits"].shape == (3, 3)


def test_patch_must_divide_the_window():
    with pytest.raises(UserError, match="not divisible by model.patch"):
        tiny(patch=3, length=128, out=64)


@pytest.mark.parametrize("seq_dilated", [0, 2])
def test_masked_inputs_do_not_leak(seq_dilated):
    m = tiny(4, 128, 64, seq_dilated=seq_dilated)
    x, r = one_hot(4, 128, 1), reads_like(4, 128, 1)
    cell = torch.tensor([0, 1, 2, 0])
    sm = span_mask(4, 128, 0.2, 0.4, 8, torch.Generator().manual_seed(0))
    rm = span_mask(4, 128, 0.2, 0.4, 8, torch.Generator().manual_seed(1))
    cm = torch.tensor([True, False, True, False])
    base = m.encode(x, r, cell, sm, rm, cm)
    # change everything that is masked: outputs identical
    x2 = torch.where(sm[:, None], one_hot(4, 128, 9), x)
    r2 = torch.where(rm[:, None], reads_like(4, 128, 9) * 5, r)
    cell2 = torch.where(cm, torch.tensor([1, 1, 1, 1]), cell)
    same = m.encode(x2, r2, cell2, sm, rm, cm)
    for k in ("profile_logits", "log_count", "seq_logits", "cell_logits"):
        assert torch.allclose(base[k], same[k], atol=1e-5), k
    # change something unmasked: outputs move
    x3 = torch.where(~sm[:, None], one_hot(4, 128, 9), x)
    assert not torch.allclose(base["seq_logits"], m.encode(x3, r, cell, sm, rm, cm)["seq_logits"], atol=1e-4)
    r3 = torch.where(~rm[:, None], r + 3, r)
    assert not torch.allclose(base["profile_logits"], m.encode(x, r3, cell, sm, rm, cm)["profile_logits"], atol=1e-4)


def test_seq_dilated_widens_what_a_position_sees():
    """At base resolution the embedding of a position reaches 2 bp (kernel 5) without the dilated
    blocks and 2 + 2 + 4 = 8 bp with two of them (dilations 2 and 4)."""
    x = one_hot(1, 128)

    def moved(m, distance):
        y = x.clone()
        y[0, :, 64 + distance] = y[0, :, 64 + distance].roll(1)  # another base, `distance` bp away
        return not torch.allclose(m.embed(x, "embed", cell=0)[0, :, 64], m.embed(y, "embed", cell=0)[0, :, 64])

    plain, stem = tiny(1, 128, 64, seq_dilated=0), tiny(1, 128, 64, seq_dilated=2)
    assert len(stem.seq_dilated) == 2 and len(plain.seq_dilated) == 0
    assert moved(plain, 2) and not moved(plain, 6)
    assert moved(stem, 6) and moved(stem, 8) and not moved(stem, 9)


def test_sum_read_norm_uses_only_unmasked_reads():
    m = tiny(4, 128, 64, read_norm="sum")
    r = reads_like(2, 128, 3)
    rm = span_mask(2, 128, 0.3, 0.3, 8, torch.Generator().manual_seed(0))
    z = m.normalise_reads(r, rm)
    assert (z[rm[:, None].expand_as(z)] == 0).all()
    assert torch.allclose(z.flatten(1).sum(1), torch.full((2,), 128.0))


def test_gradients_reach_sequence_reads_and_one_hot_cell():
    m = tiny(4, 128, 64)
    x = one_hot(2, 128).requires_grad_(True)
    r = reads_like(2, 128).requires_grad_(True)
    cell = torch.eye(3)[[0, 2]].requires_grad_(True)
    o = m.encode(x, r, cell)
    (o["log_count"].sum() + o["profile_logits"].logsumexp((1, 2)).sum()).backward()
    for t in (x, r, cell):
        assert t.grad is not None and t.grad.abs().sum() > 0
    # a float one-hot cell gives the same result as the index
    assert torch.allclose(o["log_count"], m.encode(x.detach(), r.detach(), torch.tensor([0, 2]))["log_count"], atol=1e-6)


def test_layer_names_and_embed():
    m = tiny(4, 128, 64)
    assert m.layer_names() == ["embed", "block0", "block1", "final"]
    x = one_hot(2, 128)
    for layer in m.layer_names():
        e = m.embed(x, layer)
        assert e.shape == (2 * 3, 16, 32)  # all cell types stacked: row n * C + c
        for c in range(3):
            assert torch.allclose(e[c::3], m.embed(x, layer, cell=c), atol=1e-5)
    assert m.embed(x, "block0", reads=reads_like(2, 128), cell=torch.tensor([1, 2])).shape == (2, 16, 32)
    with pytest.raises(UserError, match="valid layers are embed, block0, block1, final"):
        m.embed(x, "block7")
    # 'final' embeddings are what the heads read
    h = m.encode(x, None, 1)["hidden"]
    assert torch.allclose(m.embed(x, "final", cell=1), h.transpose(1, 2), atol=1e-6)


def test_intervention_replaces_a_layer():
    m = tiny(4, 128, 64)
    x = one_hot(2, 128)
    p0, c0 = m(x)
    p1, c1 = m(x, intervene={"block0": lambda h: h})
    assert torch.allclose(p0, p1) and torch.allclose(c0, c1)
    p2, _ = m(x, intervene={"block0": torch.zeros_like})
    assert not torch.allclose(p0, p2)
    # the function sees the layout of embed(): (N, D, T)
    seen = []
    m(x, intervene={"final": lambda h: seen.append(h.shape) or h})
    assert seen == [(2 * 3, 16, 32)]
    # replacing a layer by its own embedding (same row order as forward) is a no-op
    e = m.embed(x, "block1")
    assert torch.allclose(m(x, intervene={"block1": lambda h: e})[0], p0, atol=1e-5)
    with pytest.raises(UserError):
        m(x, intervene={"nope": torch.zeros_like})


def test_rope_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    cos, sin = rope_angles(64, 8)
    q, k = torch.randn(8), torch.randn(8)
    qs = apply_rope(q.expand(64, 8), cos, sin)
    ks = apply_rope(k.expand(64, 8), cos, sin)
    s = qs @ ks.T  # s[i, j] = f(i - j)
    assert torch.allclose(s[3, 1], s[40, 38], atol=1e-4) and torch.allclose(s[10, 17], s[50, 57], atol=1e-4)
    assert not torch.allclose(s[3, 1], s[3, 2], atol=1e-3)
    assert torch.allclose(qs.norm(dim=1), q.norm().expand(64), atol=1e-5)  # a rotation


def test_losses_on_masked_positions():
    counts = torch.zeros(2, 2, 10)
    counts[0, 0, 2] = 6
    counts[0, 1, 7] = 2
    counts[1, 0, 9] = 3  # example 1: its only reads are outside the masked positions
    keep = torch.zeros(2, 10, dtype=torch.bool)
    keep[:, :8] = True
    exact = torch.log(counts + 1e-9)
    loss, n = profile_loss(exact, counts, keep, "rms")
    assert n == 1 and loss.item() < 1e-3
    flat = torch.zeros(2, 2, 10)
    loss, _ = profile_loss(flat, counts, keep, "rms")
    p, q = torch.full((16,), 1 / 16), torch.zeros(16)
    q[2], q[15] = 0.75, 0.25
    assert loss.item() == pytest.approx((16 * ((p - q) ** 2).sum()).sqrt().item(), rel=1e-4)
    nll, _ = profile_loss(flat, counts, keep, "multinomial")
    assert nll.item() == pytest.approx(8 * torch.log(torch.tensor(16.0)).item(), rel=1e-5)
    # count loss: log1p total of the central window (positions 1..8 of 10: example 1's read is outside)
    lc = torch.log1p(torch.tensor([8.0, 3.0]))
    cl, n = count_loss(lc, counts, torch.ones(2, 10, dtype=torch.bool), output_len=8)
    assert n == 2 and cl.item() == pytest.approx(torch.log1p(torch.tensor(3.0)).item() ** 2 / 2, rel=1e-5)
    cl, _ = count_loss(lc, counts, torch.ones(2, 10, dtype=torch.bool), output_len=10)
    assert cl.item() < 1e-10
    # a per-example weight scales each squared error (mean over all examples)
    cw, _ = count_loss(lc, counts, torch.ones(2, 10, dtype=torch.bool), output_len=8, weight=torch.tensor([1.0, 0.3]))
    assert cw.item() == pytest.approx(0.3 * torch.log1p(torch.tensor(3.0)).item() ** 2 / 2, rel=1e-5)
    # sequence: only masked positions with a base
    seq = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 3]]), 4).permute(0, 2, 1).float()
    seq[0, :, 3] = 0  # N
    logits = 10 * seq.clone()
    logits[0, 3, 1] = 50  # wrong prediction at an unmasked position
    sl, n = sequence_loss(logits, seq, torch.tensor([[True, False, True, True]]))
    assert n == 2 and sl.item() < 1e-3
    cell = torch.eye(3)[[0, 1]]
    cl, n = cell_loss(torch.tensor([[5.0, 0, 0], [5.0, 0, 0]]), cell, torch.tensor([True, False]))
    assert n == 1 and cl.item() < 0.02
    assert cell_loss(torch.zeros(2, 3), cell, torch.tensor([False, False]))[1] == 0


def test_balancer_matches_gradient_norms_smooths_and_clamps():
    w = torch.nn.Parameter(torch.ones(4))
    a = torch.tensor([1.0, 2.0, 0.0, 0.0])

    def losses(scale_b, scale_c):
        return {"ref": (w * a).sum(), "b": scale_b * (w * a).sum(), "c": scale_c * (w * a).sum(),
                "fixed": 7 * (w * a).sum()}

    bal = AdaptiveBalancer(["ref", "b", "c", "fixed"], "ref", smoothing=0.5, clamp=(0.01, 100.0), fixed={"fixed": 2.0})
    wts = bal.update(losses(10.0, 1e-6), w)
    assert wts["ref"] == 1.0 and wts["fixed"] == 2.0
    assert wts["b"] == pytest.approx(0.1, rel=1e-5)  # ratio of gradient norms
    assert wts["c"] == pytest.approx(100.0)  # clamped
    wts = bal.update(losses(2.0, 1.0), w)
    assert wts["b"] == pytest.approx(0.5 * 0.1 + 0.5 * 0.5, rel=1e-5)  # EMA
    assert wts["c"] == pytest.approx(0.5 * 100 + 0.5 * 1.0, rel=1e-5)
    total = bal.combine(losses(2.0, 1.0))
    assert total.item() == pytest.approx(3 * (1 + 2 * wts["b"] + wts["c"] + 7 * 2.0), rel=1e-5)
    # a loss without a gradient path keeps its weight; disabled balancing keeps 1
    ls = losses(2.0, 1.0)
    ls["b"] = torch.zeros(())
    assert bal.update(ls, w)["b"] == pytest.approx(wts["b"])
    off = AdaptiveBalancer(["ref", "b"], "ref", enabled=False)
    assert off.update({"ref": (w * a).sum(), "b": 3 * (w * a).sum()}, w)["b"] == 1.0
    assert "weights" in bal.state_dict()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (thread hand-offs dominate on a busy 2-core box)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_tiny_encoder_learns_masked_sequence(one_thread):
    """A few dozen steps on a periodic sequence: masked bases become predictable from context."""
    torch.manual_seed(0)
    m = MaskedEncoder(1, 64, 32, d_model=16, depth=1, heads=2, patch=2, seq_kernels=[3])
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    codes = torch.arange(64).remainder(4)
    g = torch.Generator().manual_seed(0)

    def batch():
        shift = torch.randint(0, 4, (16, 1), generator=g)
        x = torch.nn.functional.one_hot((codes[None] + shift) % 4, 4).permute(0, 2, 1).float()
        return x, span_mask(16, 64, 0.15, 0.4, 4, g)

    x, sm = batch()
    first = sequence_loss(m.encode(x, None, 0, sm)["seq_logits"], x, sm)[0].item()
    for _ in range(80):
        x, sm = batch()
        loss = sequence_loss(m.encode(x, None, 0, sm)["seq_logits"], x, sm)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, sm = batch()
    with torch.no_grad():
        logits = m.encode(x, None, 0, sm)["seq_logits"]
    acc = (logits.argmax(1) == x.argmax(1))[sm].float().mean().item()
    # chance is 0.25 / ln 4 = 1.39 nats; spans of several bases keep it from being perfect in 80 steps
    assert first > 1.2 and loss.item() < 0.5 * first and acc > 0.6, (first, loss.item(), acc)


def test_count_head_norm_uses_batch_statistics_only_in_training():
    from seq2reads.models.heads import PooledHead

    torch.manual_seed(0)
    head = PooledHead(8, 1, norm=True)
    h = torch.randn(5, 7, 8)
    head.train()
    before = head.norm.running_mean.clone()
    y = head(h)
    assert not torch.equal(head.norm.running_mean, before)
    assert torch.isfinite(head(h[:1])).all()  # a batch of one: running statistics
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(head(h)[2:3], head(h[2:3]))
    assert y.shape == (5, 1) and PooledHead(8, 1).norm is None
    m = MaskedEncoder.from_config(EncoderModel(d_model=16, depth=1, heads=2, count_norm=False), 2, 64, 32)
    assert m.count_head.norm is None


def test_count_scales_and_count_stem():
    """count_scales: the count head also averages the centred half, quarter, ... of its tokens;
    count_stem: a per-cell-type term from the sequence (pooled, batch-normalised, linear), taken at
    the given cell type (a float one-hot mixes them), absent where the cell type is masked."""
    from seq2reads.models.heads import PooledHead

    h = torch.randn(3, 16, 4)
    head = PooledHead(4, 1, tokens=(0, 16), scales=3)
    want = torch.cat([h.mean(1), h[:, 4:12].mean(1), h[:, 6:10].mean(1)], dim=1)
    torch.testing.assert_close(head(h), head.linear(want))
    # 14 output tokens halve 4 times (14, 7, 3, 1); the stem's 100 positions 7 times: each keeps
    # as many of the 5 windows as it can
    short = tiny(8, 256, 100, count_scales=5, count_stem=3)
    assert short.count_head.scales == 4 and short.count_scales == 5
    m = tiny(8, 256, 96, count_scales=2, count_stem=5).eval()
    x = one_hot(2, 256)
    with torch.no_grad():
        pooled = torch.cat([
            m.count_relu(m.count_conv(x[..., 70:186])).mean(-1),
            m.count_relu(m.count_conv(x[..., 94:162])).mean(-1)], dim=1)  # 96 and the central 48 outputs
        per_cell = m.count_stem_head(m.count_stem_norm(pooled))  # eval: the running statistics
        no_stem = m.encode(x, None, None)["log_count"]  # cell type absent: no stem term
        for c in range(3):
            got = m.encode(x, None, c)["log_count"]
            cell_only = m.encode(x, None, c, cell_mask=torch.ones(2, dtype=torch.bool))["log_count"]
            torch.testing.assert_close(cell_only, no_stem)
            m.count_stem = 0
            without = m.encode(x, None, c)["log_count"]
            m.count_stem = 5
            torch.testing.assert_close(got - without, per_cell[:, c])
        mix = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
        m.count_stem = 0
        without = m.encode(x, None, mix)["log_count"]
        m.count_stem = 5
        torch.testing.assert_close(m.encode(x, None, mix)["log_count"] - without,
                                   (per_cell * mix).sum(-1))


def test_count_pool_output_averages_the_output_window_tokens():
    from seq2reads.models.heads import PooledHead

    h = torch.randn(3, 10, 4)
    head = PooledHead(4, 1, tokens=(2, 7))
    torch.testing.assert_close(head(h), head.linear(h[:, 2:7].mean(1)))
    m = tiny(8, 256, 100, count_pool="output")
    assert m.output_tokens() == (9, 23)  # output window [78, 178) bp: tokens 9 .. 22
    assert m.count_head.tokens == (9, 23) and tiny(8, 256, 100, count_pool="window").count_head.tokens is None
    # the count reads only the output tokens: edit a token outside them and it stays, inside and it moves
    x = one_hot(2, 256)

    def edit(t):
        def f(h):
            h = h.clone()
            h[..., t] += 5.0
            return h
        return {"final": f}

    base = m.encode(x, None, 0)["log_count"]
    torch.testing.assert_close(m.encode(x, None, 0, intervene=edit(3))["log_count"], base)
    assert not torch.allclose(m.encode(x, None, 0, intervene=edit(12))["log_count"], base)
    with pytest.raises(UserError, match="count_pool"):
        MaskedEncoder(3, 256, 100, d_model=16, depth=1, heads=2, count_pool="middle")

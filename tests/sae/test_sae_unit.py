"""SAE unit tests on synthetic sparse data, the activation store, and enrichment statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seq2reads.atomic import atomic_path
from seq2reads.errors import UserError
from seq2reads.sae.activations import RunningMoments, StoreWriter, open_store, resolve_layer
from seq2reads.sae.features import enrichment
from seq2reads.sae.model import SparseAutoencoder, load_sae, save_sae
from seq2reads.sae.train import evaluate_sae, train_sae

D, F, K = 16, 32, 3


def planted(n: int, seed: int = 0, offset: float = 3.0):
    """Vectors that are sparse (K of F) non-negative combinations of a unit-norm dictionary."""
    rng = np.random.default_rng(seed)
    dic = rng.normal(size=(F, D))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    idx = np.argsort(rng.random((n, F)), 1)[:, :K]
    z = np.zeros((n, F))
    np.put_along_axis(z, idx, rng.exponential(1, (n, K)) + 0.5, 1)
    return z @ dic + offset, dic


def make_store(path, x, per_window=16, model_hash="abc", chunk=4096):
    n = len(x)
    win = np.arange(n) // per_window
    with atomic_path(path) as tmp:
        w = StoreWriter(tmp, x.shape[1], {"model_hash": model_hash, "layer": "toy"}, chunk=chunk)
        for b in range(0, n, 3000):  # uneven blocks, to exercise chunk alignment
            sl = slice(b, b + 3000)
            w.add_vectors(x[sl], win[sl], np.arange(n)[sl] % per_window, (win[sl] % 3))
        nw = int(win.max()) + 1
        w.close(np.arange(nw), np.arange(nw) % 10 == 9)
    return open_store(path, model_hash)


@pytest.fixture(scope="module")
def planted_store(tmp_path_factory):
    x, dic = planted(20000)
    return make_store(tmp_path_factory.mktemp("sae") / "acts", x), dic


def test_topk_recovers_planted_dictionary(planted_store):
    store, dic = planted_store
    torch.set_num_threads(1)
    res = train_sae(store, F, K, kind="topk", epochs=5, batch_size=256, lr=3e-3, chunk=4096, progress=False)
    ev = evaluate_sae(res.sae, store, chunk=4096)
    assert ev["fvu"] < 0.2, ev
    assert ev["mean_l0"] == pytest.approx(K)
    assert ev["dead_fraction"] <= 0.1
    cos = np.abs(res.sae.W_dec.detach().numpy() @ dic.T).max(0)
    assert (cos > 0.9).mean() >= 0.6  # most planted directions found as decoder rows
    # unit-norm decoder rows hold after training
    norms = res.sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    assert res.vectors_per_s > 0


def test_relu_l1_trains_sparse(planted_store):
    store, dic = planted_store
    res = train_sae(store, F, K, kind="relu", l1=3.0, epochs=3, batch_size=256, lr=3e-3, chunk=4096, progress=False)
    ev = evaluate_sae(res.sae, store, chunk=4096)
    assert ev["fvu"] < 0.5 and ev["mean_l0"] < 0.25 * F, ev
    hist = res.history
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_batchtopk_average_l0(planted_store):
    store, _ = planted_store
    res = train_sae(store, F, K, kind="batchtopk", epochs=2, batch_size=256, lr=3e-3, chunk=4096, progress=False)
    assert float(res.sae.threshold) > 0  # inference threshold was estimated
    ev = evaluate_sae(res.sae, store, chunk=4096)
    assert 1 <= ev["mean_l0"] <= 3 * K and ev["fvu"] < 0.5, ev


def test_decoder_gradient_projection_keeps_unit_norm():
    sae = SparseAutoencoder(8, 16, 2)
    opt = torch.optim.SGD(sae.parameters(), lr=0.5)
    x = torch.randn(64, 8) * 3
    out = sae(x)
    out.loss.backward()
    sae.remove_parallel_grad()
    # the remaining decoder gradient is orthogonal to every row
    assert torch.allclose((sae.W_dec.grad * sae.W_dec).sum(1), torch.zeros(16), atol=1e-5)
    opt.step()
    sae.normalize_decoder()
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(16), atol=1e-6)
    # encoder initialised as the decoder's transpose
    fresh = SparseAutoencoder(8, 16, 2, seed=3)
    assert torch.equal(fresh.W_enc, fresh.W_dec.t())


def _revived(dead_after: int, steps: int = 300) -> tuple[int, float]:
    """Train with half the latents crippled (encoder rows too small to ever win the TopK); return
    how many of those fire afterwards and the largest AuxK loss seen."""
    torch.manual_seed(0)
    x, _ = planted(4096, seed=1, offset=0.0)
    x = torch.as_tensor(x, dtype=torch.float32)
    sae = SparseAutoencoder(D, F, K, dead_after=dead_after, aux_k=8)
    with torch.no_grad():
        sae.W_enc[:, : F // 2] *= 0.02
    opt = torch.optim.Adam(sae.parameters(), lr=3e-3)
    sae.train()
    aux = 0.0
    for step in range(steps):
        xb = x[(step * 128) % 4096:(step * 128) % 4096 + 128]
        out = sae(xb)
        aux = max(aux, float(out.aux.detach()))
        opt.zero_grad()
        out.loss.backward()
        sae.remove_parallel_grad()
        opt.step()
        sae.normalize_decoder()
    fired = (sae.eval().encode(x) > 0).any(0)
    return int(fired[: F // 2].sum()), aux


def test_auxk_revives_dead_latents():
    revived, aux = _revived(dead_after=256)
    control, aux_ctrl = _revived(dead_after=10**9)  # never declared dead: no AuxK gradient
    assert aux > 0 and aux_ctrl == 0
    assert revived >= 12 and revived >= control + 8, (revived, control)


def test_sae_files_round_trip(tmp_path):
    sae = SparseAutoencoder(8, 16, 2, kind="batchtopk")
    save_sae(sae, tmp_path, {"layer": "block1"})
    back, extra = load_sae(tmp_path)
    assert extra["layer"] == "block1" and back.kind == "batchtopk"
    for k, v in sae.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])
    (tmp_path / "sae.json").write_text("{}")
    with pytest.raises(UserError):
        load_sae(tmp_path)


def test_store_round_trip_float16_indices_and_moments(tmp_path):
    rng = np.random.default_rng(0)
    N, Dd, Lp = 37, 24, 11
    emb = rng.normal(5, 2, size=(N, Dd, Lp)).astype(np.float32)
    wins = np.arange(100, 100 + N)
    cells = rng.integers(0, 3, N)
    with atomic_path(tmp_path / "acts") as tmp:
        w = StoreWriter(tmp, Dd, {"model_hash": "h1", "layer": "block0"}, chunk=64)
        for b in range(0, N, 5):
            w.add(emb[b:b + 5], wins[b:b + 5], cells[b:b + 5])
        w.close(wins, np.zeros(N, bool), {"stride": 1, "offset": 0})
    st = open_store(tmp_path / "acts", "h1", "block0")
    assert st.n_vectors == N * Lp and st.d == Dd
    blk = st.read(0, st.n_vectors, normalise=False)
    flat = emb.transpose(0, 2, 1).reshape(-1, Dd)
    assert st.group["x"].dtype == np.float16
    np.testing.assert_allclose(blk["x"], flat.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(blk["window"], np.repeat(wins, Lp))
    np.testing.assert_array_equal(blk["pos"], np.tile(np.arange(Lp), N))
    np.testing.assert_array_equal(blk["cell"], np.repeat(cells, Lp))
    ref = flat.astype(np.float16).astype(np.float64)
    np.testing.assert_allclose(st.mean, ref.mean(0), rtol=1e-5)
    np.testing.assert_allclose(st.attrs["var"], ref.var(0, ddof=1), rtol=1e-4)
    z = st.read(0, st.n_vectors)["x"]
    assert abs(z.mean()) < 1e-3 and z.var(0).mean() == pytest.approx(1.0, rel=1e-2)
    # a store from another model or layer is refused with one line
    with pytest.raises(UserError, match="another model"):
        open_store(tmp_path / "acts", "h2")
    with pytest.raises(UserError, match="layer"):
        open_store(tmp_path / "acts", "h1", "block1")
    with pytest.raises(UserError, match="not a seq2reads activation store"):
        open_store(tmp_path)


def test_store_memory_is_bounded(tmp_path):
    """Writing 800k vectors x 64 (200 MB in float32) in blocks grows a fresh process's peak RSS by
    far less than the data (the writer holds at most one chunk plus one block)."""
    import subprocess
    import sys

    code = f"""
import resource, numpy as np
from seq2reads.atomic import atomic_path
from seq2reads.sae.activations import StoreWriter, open_store
rng = np.random.default_rng(0)
x = rng.standard_normal((32768, 64), dtype=np.float32)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with atomic_path({str(tmp_path / "big")!r}) as tmp:
    w = StoreWriter(tmp, 64, {{"model_hash": "h", "layer": "l"}}, chunk=32768)
    for b in range(24):
        w.add_vectors(x + b, np.full(32768, b), np.arange(32768), np.zeros(32768))
    w.close(np.arange(24), np.zeros(24, bool))
assert open_store({str(tmp_path / "big")!r}).n_vectors == 24 * 32768
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    grown_mb = float(out.stdout.strip().splitlines()[-1])
    assert grown_mb < 90, grown_mb  # the float16 data alone is 100 MB


def test_running_moments_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(3, 2, size=(1000, 5)).astype(np.float32)
    m = RunningMoments(5)
    for s, e in ((0, 7), (7, 300), (300, 301), (301, 1000)):
        m.update(x[s:e])
    np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(m.var, x.astype(np.float64).var(0, ddof=1), rtol=1e-4)


def test_enrichment_and_bh_on_a_constructed_example():
    from scipy.stats import fisher_exact

    # 3 cell types x 100 windows = 300 pairs; latent 0 active in 40 pairs of cell B and 5 of the others,
    # latent 1 active evenly (10 per cell type), latent 2 never
    cells = ["A", "B", "C"]
    pair_cell = np.tile(np.arange(3), 100)
    active = np.zeros((300, 3), bool)
    b_rows = np.where(pair_cell == 1)[0]
    active[b_rows[:40], 0] = True
    active[np.where(pair_cell == 0)[0][:3], 0] = True
    active[np.where(pair_cell == 2)[0][:2], 0] = True
    for c in range(3):
        active[np.where(pair_cell == c)[0][:10], 1] = True
    enr = enrichment(active, pair_cell, np.ones(300, bool), cells)
    row = enr[(enr.latent == 0) & (enr.cell_type == "B")].iloc[0]
    assert (row.a, row.b, row.c, row.d) == (40, 60, 5, 195)
    assert row.log_odds == pytest.approx(np.log(40.5 * 195.5 / (60.5 * 5.5)))
    assert row.p == pytest.approx(fisher_exact([[40, 60], [5, 195]], alternative="greater").pvalue)
    assert row.q < 1e-10
    even = enr[enr.latent == 1]
    assert (even.q > 0.5).all() and (even.log_odds.abs() < 0.1).all()
    assert (enr[enr.latent == 2].p == 1.0).all()
    # BH: q = min over ranks >= i of p * m / rank, monotone in p
    p = enr.p.to_numpy()
    order = np.argsort(p)
    ranked = p[order] * len(p) / np.arange(1, len(p) + 1)
    q_ref = np.minimum.accumulate(ranked[::-1])[::-1]
    np.testing.assert_allclose(enr.q.to_numpy()[order], np.minimum(q_ref, 1))


class _Toy(torch.nn.Module):
    def layer_names(self):
        return ["conv0", "conv1", "trunk", "profile_head", "count_head"]


def test_layer_resolution_lists_valid_layers():
    assert resolve_layer(_Toy(), "auto", "bpnet") == "trunk"
    assert resolve_layer(_Toy(), "conv1", "bpnet") == "conv1"
    with pytest.raises(UserError, match="valid layers: conv0, conv1, trunk"):
        resolve_layer(_Toy(), "conv9", "bpnet")


class _Enc(torch.nn.Module):
    def layer_names(self):
        return ["embed", "block0", "block1", "block2", "block3", "final"]


def test_auto_layer_for_the_encoder_is_a_late_block():
    assert resolve_layer(_Enc(), "auto", "encoder") == "block2"

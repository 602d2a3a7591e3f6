"""Attributions: DeepLIFT/SHAP (tangermeme), integrated gradients, ISM; the attribute command."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from seq2reads.cli import main
from seq2reads.interpret import attributions as A
from seq2reads.interpret.targets import make_target, profile_target


class TinyCNN(nn.Module):
    """Randomly initialised model with the seq2reads forward contract (2 cell types)."""

    def __init__(self, C=2, L_out=32):
        super().__init__()
        self.C, self.L_out = C, L_out
        self.conv = nn.Conv1d(4, 8, 7, padding=3)
        self.act = nn.ReLU()
        self.prof = nn.Conv1d(8, 2 * C, 5, padding=2)
        self.lin = nn.Linear(8, C)

    def forward(self, X):
        h = self.act(self.conv(X))
        s = (h.shape[-1] - self.L_out) // 2
        h = h[..., s:s + self.L_out]
        return self.prof(h).reshape(len(X), self.C, 2, self.L_out), self.lin(h.mean(-1))


def _seqs(n=6, L=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.eye(4)[torch.randint(0, 4, (n, L), generator=g)].permute(0, 2, 1).contiguous()


def test_profile_target_is_softmax_weighted_logit_sum():
    z = torch.randn(3, 2, 10)
    w = torch.softmax(z.reshape(3, -1), -1).reshape(3, 2, 10)
    assert torch.allclose(profile_target(z, 1), (w[:, 1] * z[:, 1]).sum(-1))


def _bpnet_with_count_stem():
    from seq2reads.models.bpnet import BPNet

    m = BPNet(n_cell_types=2, output_len=32, filters=8, layers=2, conv_kernel=9, profile_kernel=5,
              count_scales=3, count_stem=4).eval()
    with torch.no_grad():  # eval-mode count_norm: give it non-trivial running statistics
        m.count_norm.running_mean.uniform_(-0.1, 0.1)
        m.count_norm.running_var.uniform_(0.5, 2.0)
    return m


@pytest.mark.parametrize("make_model", [TinyCNN, _bpnet_with_count_stem], ids=["tiny", "bpnet_count_stem"])
def test_deeplift_matches_tangermeme_and_is_complete(make_model):
    from tangermeme.deep_lift_shap import deep_lift_shap

    torch.manual_seed(0)
    model = make_model().eval()
    X = _seqs(L=64 if isinstance(model, TinyCNN) else model.min_input_len)
    out = A.deeplift_shap(model, X, [(1, "count"), (0, "profile_minus")], n_shuffles=5, seed=3)
    refs = A.shuffled_references(X, 5, 3)
    for (c, t), (attr, delta) in out.items():
        ref = deep_lift_shap(make_target(model, c, t), X, references=refs, hypothetical=True, device="cpu")
        assert attr.shape == X.shape
        assert np.corrcoef(attr.ravel(), ref.numpy().ravel())[0, 1] > 0.999
    # ReLU network, count target: DeepLIFT is exact up to float error
    assert np.abs(out[(1, "count")][1]).max() < 1e-4


def test_count_specific_target_contrasts_cell_types():
    """count_specific = a cell type's log count minus the mean of the others'; DeepLIFT on it equals
    tangermeme's and is complete; cell types that predict alike give it no attribution."""
    from tangermeme.deep_lift_shap import deep_lift_shap

    from seq2reads.interpret.targets import select_target

    lc = torch.tensor([[1.0, 2.0, 6.0], [0.0, -1.0, 1.0]])
    assert torch.allclose(select_target(None, lc, 2, "count_specific"), torch.tensor([4.5, 1.5]))
    with pytest.raises(ValueError, match="two or more"):
        select_target(None, lc[:, :1], 0, "count_specific")
    torch.manual_seed(0)
    model, X = TinyCNN(C=3).eval(), _seqs()
    out = A.deeplift_shap(model, X, [(1, "count_specific"), (1, "count")], n_shuffles=5, seed=3)
    ref = deep_lift_shap(make_target(model, 1, "count_specific"), X, references=A.shuffled_references(X, 5, 3),
                         hypothetical=True, device="cpu")
    attr, delta = out[(1, "count_specific")]
    assert np.corrcoef(attr.ravel(), ref.numpy().ravel())[0, 1] > 0.999 and np.abs(delta).max() < 1e-4
    assert not np.allclose(attr, out[(1, "count")][0])
    with torch.no_grad():  # every cell type's count head the same: nothing is specific
        model.lin.weight[:] = model.lin.weight[0]
        model.lin.bias[:] = model.lin.bias[0]
    same = A.deeplift_shap(model, X, [(1, "count_specific")], n_shuffles=5, seed=3)[(1, "count_specific")][0]
    assert np.abs(same).max() < 1e-6 < np.abs(attr).max()


def test_integrated_gradients_completeness_improves_with_steps():
    torch.manual_seed(0)
    model, X = TinyCNN().eval(), _seqs()
    coarse = A.ig_attributions(model, X, 0, "count", 2, steps=2, baseline="zero")
    fine = A.ig_attributions(model, X, 0, "count", 2, steps=64, baseline="zero")
    assert fine["attr"].shape == X.shape and np.isfinite(fine["delta"]).all()
    assert np.abs(fine["delta"]).mean() <= np.abs(coarse["delta"]).mean() + 1e-6
    assert np.abs(fine["delta"]).max() < 0.05


def test_integrated_gradients_average_over_shuffled_baselines():
    """Each sequence's k shuffled paths are averaged: the contributions sum to f(x) minus the mean
    output at that sequence's own k baselines (up to the stored delta), and the average is the mean
    of the k single-baseline runs."""
    torch.manual_seed(0)
    model, X = TinyCNN().eval(), _seqs()
    k, seed = 3, 5
    out = A.ig_attributions(model, X, 1, "count", 2, steps=8, baseline="shuffle", seed=seed, shuffles=k)
    refs = A.shuffled_references(X, k, seed)  # what ig_attributions draws for its one chunk
    with torch.no_grad():
        fx = model(X)[1][:, 1]
        fb = model(refs.reshape(-1, *X.shape[1:]))[1][:, 1].reshape(len(X), k).mean(1)
    total = (out["attr"] * X.numpy()).sum((1, 2))
    assert np.allclose(total - out["delta"], (fx - fb).numpy(), atol=1e-4)
    singles = []
    for j in range(k):
        def f(q):
            return model(q)[1][:, 1]

        hyp, _, _ = A.shuffled_ig(f, X, refs[:, j:j + 1], 8)
        singles.append(hyp[0].numpy())
    assert np.allclose(out["attr"], np.mean(singles, 0), atol=1e-5)
    one = A.ig_attributions(model, X, 1, "count", 2, steps=8, baseline="shuffle", seed=seed, shuffles=1)
    assert not np.allclose(one["attr"], out["attr"])


def test_ism_shapes_and_centring():
    torch.manual_seed(0)
    model, X = TinyCNN().eval(), _seqs(n=2, L=40)
    out = A.ism_attributions(model, X, [(0, "count")])
    a = out[(0, "count")]
    assert a.shape == X.shape and np.allclose(a.sum(axis=1), 0, atol=1e-5)


def _check_npz(path, n_cells, encoder):
    z = np.load(path)
    n, four, L = z["ohe"].shape
    assert four == 4 and z["attr"].shape == (n, 4, L) and z["delta"].shape == (n,) and z["index"].shape == (n,)
    assert z["attr"].dtype == np.float32 and np.isfinite(z["attr"]).all() and np.isfinite(z["delta"]).all()
    assert np.allclose(z["ohe"].sum(1)[z["ohe"].sum(1) > 0], 1)
    if encoder:
        assert z["reads_attr"].shape == (n, 2, L) and z["cell_attr"].shape == (n, n_cells)
        assert np.isfinite(z["reads_attr"]).all() and np.isfinite(z["cell_attr"]).all()
    return z


def _one_cell(cfg):
    """The run's config restricted to its first cell type (keeps the test within its time budget)."""
    return cfg.model_copy(update={"interpret": cfg.interpret.model_copy(update={"cell_types": cfg.cell_types[:1]})})


@pytest.mark.parametrize("run, method", [("bpnet_run", "ig"), ("bpnet_plain_run", "deeplift")])
def test_attribute_bpnet_run(run, method, request):
    """``auto``: integrated gradients for a CNN with patch attention, DeepLIFT without it."""
    import pyBigWig

    bpnet_run = request.getfixturevalue(run)
    out = A.attribute_run(_one_cell(bpnet_run))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    cells = bpnet_run.cell_types
    assert [(f["cell"], f["target"]) for f in summary["files"]] == [
        (cells[0], t) for t in ("count", "profile_plus", "profile_minus")]
    for f in summary["files"]:
        z = _check_npz(out / f["file"], len(cells), encoder=False)
        if f["target"] == "count" and method == "deeplift":  # DeepLIFT completeness on the CNN
            assert f["max_abs_delta"] < 1e-3, f
        bw = pyBigWig.open(str(out / f["bigwig"]))
        i = 0
        vals = np.array(bw.values(str(z["chrom"][i]), int(z["start"][i]), int(z["start"][i]) + z["ohe"].shape[-1]))
        contrib = (z["attr"][i] * z["ohe"][i]).sum(0)
        assert np.isfinite(vals).all() and np.corrcoef(vals, contrib)[0, 1] > 0.9


def test_attribute_encoder_run(encoder_run):
    """IG on the encoder: count w.r.t. sequence, reads and cell type; count_specific (which needs every
    cell type's prediction) w.r.t. the sequence through the S2R pass."""
    cfg = _one_cell(encoder_run)
    cfg = cfg.model_copy(update={"interpret": cfg.interpret.model_copy(update={"targets": ["count", "count_specific"]})})
    out = A.attribute_run(cfg)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "ig" and [f["target"] for f in summary["files"]] == ["count", "count_specific"]
    for f in summary["files"]:
        z = _check_npz(out / f["file"], len(encoder_run.cell_types), encoder=f["target"] == "count")
        if f["target"] == "count_specific":
            assert "reads_attr" not in z and np.abs(z["attr"]).max() > 0


def test_count_specific_needs_two_cell_types(bpnet_run, monkeypatch, capsys):
    from seq2reads.data import store as S

    real = S.open_dataset

    def one_cell(path):
        ds = real(path)
        ds.samples = list(ds.samples)[:1]
        return ds

    monkeypatch.setattr(S, "open_dataset", one_cell)
    run = bpnet_run.run_path
    before = sorted(p.name for p in run.iterdir())
    rc = main(["attribute", str(run), "--set", "interpret.targets=[count_specific]"])
    err = capsys.readouterr().err
    assert rc == 2 and "count_specific" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before


def test_attribute_unknown_cell_type_exits_2(bpnet_run, capsys):
    run = bpnet_run.run_path
    before = sorted(p.name for p in run.iterdir())
    rc = main(["attribute", str(run), "--set", "interpret.cell_types=[neuron]"])
    err = capsys.readouterr().err
    assert rc == 2 and "neuron" in err and bpnet_run.cell_types[0] in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before


@pytest.mark.parametrize("run, what", [("bpnet_run", "attention_layers"), ("encoder_run", "encoder")])
def test_deeplift_on_a_model_that_attends_exits_2(run, what, request, capsys):
    """DeepLIFT has no rule for attention: asked for on a CNN that attends or the encoder, a clear error."""
    cfg = request.getfixturevalue(run)
    before = sorted(p.name for p in cfg.run_path.iterdir())
    rc = main(["attribute", str(cfg.run_path), "--set", "interpret.method=deeplift"])
    err = capsys.readouterr().err
    assert rc == 2 and "deeplift" in err and what in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in cfg.run_path.iterdir()) == before

"""End to end: ``seq2reads sae RUN`` on the small trained encoder and BPNet runs, bad inputs, and
the model-loss replacement hooks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from seq2reads.cli import main
from seq2reads.sae.features import FEATURE_COLUMNS


def _sae_config(cfg, tmp_path, **sae):
    """A copy of a fixture's config whose SAE outputs go to a run dir of its own (a symlinked
    copy of the fixture's dataset and model), so tests never touch the shared fixture run."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("dataset", "model"):
        (run / name).symlink_to(cfg.run_path / name, target_is_directory=True)
    new = cfg.model_copy(deep=True)
    new.run_dir = str(run)
    for k, v in sae.items():
        setattr(new.sae, k, v)
    from seq2reads.config import save_run_config

    save_run_config(new)
    return new


def _check_outputs(out, cfg, model_type):
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("fvu", "mean_l0", "dead_fraction", "delta_loss", "delta_loss_rel", "vectors_per_s"):
        assert np.isfinite(metrics[key]), key
    assert 0 <= metrics["fvu"] < 1.0  # better than predicting the mean
    assert metrics["mean_l0"] == pytest.approx(cfg.sae.k, abs=1e-6)  # TopK: exactly k per vector
    assert 0 <= metrics["dead_fraction"] <= 1
    feats = pd.read_csv(out / "features.tsv", sep="\t")
    assert list(feats.columns) == FEATURE_COLUMNS
    assert sorted(feats.latent) == list(range(cfg.sae.latents))
    assert set(feats.top_cell_type.dropna()) <= set(cfg.cell_types)
    assert ((feats.q >= 0) & (feats.q <= 1)).all() and (feats.q >= feats.p - 1e-12).all()
    enr = pd.read_csv(out / "enrichment.tsv", sep="\t")
    assert len(enr) == cfg.sae.latents * len(cfg.cell_types)
    png = (out / "heatmap.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    analysed = feats[feats.attr_seq.notna()]
    assert 1 <= len(analysed) <= cfg.sae.max_features
    lat = int(analysed.latent.iloc[0])
    with np.load(out / "attributions" / f"latent{lat}.npz") as z:
        n = len(z["index"])
        assert z["attr"].shape == (n, 4, cfg.window.input) == z["ohe"].shape
        assert np.isfinite(z["attr"]).all() and np.abs(z["attr"]).sum() > 0
        if model_type == "encoder":
            assert z["reads_attr"].shape == (n, 2, cfg.window.input)
            assert z["cell_attr"].shape == (n, len(cfg.cell_types))
        else:
            assert "reads_attr" not in z
    tops = pd.read_csv(out / "top_windows.tsv", sep="\t")
    assert set(tops.latent) == set(analysed.latent)
    assert not list(out.glob(".*tmp*"))  # nothing half-written left behind
    return metrics, feats


def test_sae_run_on_encoder(encoder_run, tmp_path):
    from seq2reads.sae.activations import open_store
    from seq2reads.sae.pipeline import sae_run

    cfg = _sae_config(encoder_run, tmp_path, max_features=1)
    out = sae_run(cfg, progress=False)
    metrics, feats = _check_outputs(out, cfg, "encoder")
    store = open_store(out / "activations")
    a = store.attrs
    assert a["per_cell"] and a["layer"] == metrics["layer"]
    # every window was embedded once per cell type
    blk = store.read(0, store.n_vectors)
    pairs = set(zip(blk["window"].tolist(), blk["cell"].tolist()))
    assert len(pairs) == len(store.windows) * len(cfg.cell_types)
    assert cfg.truth and feats.planted_window_frac.notna().any()
    # a rerun reuses the activation store (same model, layer and windows), not after a change
    from seq2reads.sae.activations import model_hash
    from seq2reads.sae.pipeline import _reusable

    h = model_hash(cfg.run_dir)
    assert _reusable(out / "activations", h, metrics["layer"], cfg)
    assert not _reusable(out / "activations", "0" * 64, metrics["layer"], cfg)
    assert not _reusable(out / "activations", h, "embed", cfg)


def test_sae_cli_on_bpnet(bpnet_run, tmp_path, capsys):
    # TF-MoDISco is exercised on the encoder run; here only attributions (saves its numba compile)
    cfg = _sae_config(bpnet_run, tmp_path, max_features=1, motifs=False)
    assert main(["sae", cfg.run_dir]) == 0
    out = cfg.run_path / "sae"
    assert str(out) in capsys.readouterr().out
    metrics, _ = _check_outputs(out, cfg, "bpnet")
    assert cfg.model.attention_layers  # auto: the last shared trunk layer, the patch attention's output
    assert metrics["layer"] == "attention"


def test_unknown_layer_lists_valid_ones(encoder_run, tmp_path, capsys):
    cfg = _sae_config(encoder_run, tmp_path)
    assert main(["sae", cfg.run_dir, "--set", "sae.layer=block99"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "block99" in err and "embed, block0, block1, final" in err
    assert not (cfg.run_path / "sae").exists()


def test_k_larger_than_latents_is_a_config_error(encoder_run, capsys):
    assert main(["sae", encoder_run.run_dir, "--set", "sae.k=64", "--set", "sae.latents=32"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sae.k (64) must not exceed sae.latents (32)" in err


def test_store_from_another_model_is_refused(encoder_run, tmp_path, capsys):
    from seq2reads.atomic import atomic_path
    from seq2reads.sae.activations import StoreWriter

    cfg = _sae_config(encoder_run, tmp_path)
    other = tmp_path / "other_acts"
    with atomic_path(other) as tmp:
        w = StoreWriter(tmp, 32, {"model_hash": "0" * 64, "layer": "block1"})
        w.add(np.random.default_rng(0).normal(size=(4, 32, 8)).astype(np.float32), np.arange(4), np.zeros(4))
        w.close(np.arange(4), np.zeros(4, bool))
    assert main(["sae", cfg.run_dir, "--set", f"sae.store={other}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another model" in err
    assert not (cfg.run_path / "sae" / "metrics.json").exists()


@pytest.mark.parametrize("fixture", ["bpnet_run", "encoder_run"])
def test_layer_replacement_hooks(fixture, request):
    """Replacing a layer by itself leaves the model's loss unchanged; zeroing half its channels
    changes it (a rescaling would not: LayerNorm undoes it)."""
    from seq2reads.data.loader import iter_batches
    from seq2reads.data.store import open_dataset
    from seq2reads.models.io import load_model
    from seq2reads.sae.train import model_loss_delta

    cfg = request.getfixturevalue(fixture)
    model = load_model(cfg.run_dir)
    ds = open_dataset(cfg.run_path / "dataset")
    rows = ds.indices("valid")[:8]
    names = model.layer_names()
    layer = names[len(names) // 2]  # a middle layer, so that later layers see the change
    d = model.embed(next(iter_batches(ds, rows[:1], 1))["seq"], layer).shape[1]
    same = model_loss_delta(model, cfg.model.type, layer, lambda e: e, iter_batches(ds, rows, 8), d,
                            ds.output_len, [1.0] * len(ds.samples))
    def zero_half(e):
        e = e.clone()
        e[:, ::2] = 0
        return e

    half = model_loss_delta(model, cfg.model.type, layer, zero_half, iter_batches(ds, rows, 8), d,
                            ds.output_len, [1.0] * len(ds.samples))
    assert same["delta_loss"] == pytest.approx(0.0, abs=1e-4 * abs(same["loss"]))
    assert abs(half["delta_loss"]) > 1e-3 * abs(half["loss"])
    torch.set_grad_enabled(True)

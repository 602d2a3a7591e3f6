"""Model files: round trip without pickle, and clear errors for missing/corrupt/foreign files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from seq2reads.config import validate_config
from seq2reads.errors import UserError
from seq2reads.models.io import load_model, save_model
from seq2reads.models.registry import build_model


def _cfg(tmp_path: Path):
    return validate_config({
        "run_dir": str(tmp_path / "run"), "genome": "g.fa", "regions": "r.bed",
        "samples": [{"name": "A", "plus": "a+.bw", "minus": "a-.bw"},
                    {"name": "B", "plus": "b+.bw", "minus": "b-.bw"}],
        "window": {"input": 200, "output": 100, "jitter": 0},
        "model": {"type": "bpnet", "filters": 8, "layers": 3, "profile_kernel": 25},
    })


@pytest.fixture()
def saved(tmp_path):
    cfg = _cfg(tmp_path)
    torch.manual_seed(0)
    m = build_model(cfg.model, 2, 200, 100)
    out = save_model(m, cfg, cfg.run_path / "model", extra={"count_weight": [2.0, 3.0]})
    return cfg, m, out


def test_round_trip(saved):
    cfg, m, out = saved
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "seq2reads-model" and meta["version"] == 1
    assert meta["cell_types"] == ["A", "B"] and meta["extra"]["count_weight"] == [2.0, 3.0]
    import seq2reads

    for where in (cfg.run_path, out):
        loaded = seq2reads.load_model(where)
        assert not loaded.training and loaded.cell_types == ["A", "B"]
        x = torch.rand(2, 4, 200)
        with torch.no_grad():
            a, b = m.eval()(x), loaded(x)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])
    # No leftovers from the atomic write.
    assert [p.name for p in out.parent.iterdir()] == ["model"]


def test_missing_model_says_train_first(tmp_path):
    with pytest.raises(UserError, match="train"):
        load_model(tmp_path)


def test_corrupted_weights(saved):
    _, _, out = saved
    (out / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(UserError, match="corrupted"):
        load_model(out)


def test_truncated_weights(saved):
    _, _, out = saved
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupted"):
        load_model(out)


def test_foreign_json(saved):
    _, _, out = saved
    (out / "model.json").write_text(json.dumps({"format": "keras", "version": 1}))
    with pytest.raises(UserError, match="not a seq2reads model"):
        load_model(out)
    (out / "model.json").write_text("{not json")
    with pytest.raises(UserError, match="corrupted"):
        load_model(out)


def test_other_version(saved):
    _, _, out = saved
    meta = json.loads((out / "model.json").read_text())
    meta["version"] = 99
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="version 99"):
        load_model(out)


def test_weights_of_another_architecture(saved, tmp_path):
    cfg, _, out = saved
    meta = json.loads((out / "model.json").read_text())
    meta["model"]["filters"] = 16
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="does not match"):
        load_model(out)


def test_pickle_is_never_used(saved, monkeypatch):
    import pickle

    _, _, out = saved

    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(torch, "load", boom)
    assert load_model(out) is not None


@pytest.mark.parametrize("absent, check", [
    # written before model.count_norm existed: a model without it
    ({"count_norm": False}, lambda m: m.count_norm is None),
    # written before count_stem / count_scales existed: BPNet's head (the trunk's window mean)
    ({"count_stem": 0, "count_scales": 1}, lambda m: m.count_stem == 0 and m.count_scales == 1),
    # written before count_box existed: the nested windows of count_scales
    ({"count_box": 0}, lambda m: m.count_box == 0 and m.count_head.in_features == 5 * (8 + 128)),
])
def test_cnn_files_from_before_an_option_load(tmp_path, absent, check):
    """A CNN model.json without a newer option's key describes the model of that time, whose
    weights it holds: it loads and predicts as saved."""
    cfg = _cfg(tmp_path)
    for k, v in absent.items():
        setattr(cfg.model, k, v)
    torch.manual_seed(0)
    m = build_model(cfg.model, 2, 200, 100)
    out = save_model(m, cfg, cfg.run_path / "model")
    meta = json.loads((out / "model.json").read_text())
    for k in absent:
        del meta["model"][k]
    (out / "model.json").write_text(json.dumps(meta))
    loaded = load_model(out)
    assert check(loaded)
    x = torch.rand(2, 4, 200)
    with torch.no_grad():
        torch.testing.assert_close(m.eval()(x)[1], loaded(x)[1])


def test_encoder_files_from_before_the_sequence_stem_load(tmp_path):
    """An encoder model.json written before ``seq_dilated``/``count_pool`` existed describes the
    encoder of that time (no dilated stem, count pooled over the whole window), which loads and
    predicts as saved; the current defaults build the stem and pool the output window."""
    cfg = validate_config({
        "run_dir": str(tmp_path / "run"), "genome": "g.fa", "regions": "r.bed",
        "samples": [{"name": "A", "plus": "a+.bw", "minus": "a-.bw"}],
        "window": {"input": 128, "output": 64, "jitter": 0},
        "model": {"type": "encoder", "d_model": 16, "depth": 1, "heads": 2, "patch": 4,
                  "seq_dilated": 0, "count_pool": "window"},
    })
    assert validate_config({**cfg.model_dump(mode="json"), "model": {"type": "encoder"}}).model.seq_dilated == 6
    torch.manual_seed(0)
    m = build_model(cfg.model, 1, 128, 64)
    out = save_model(m, cfg, cfg.run_path / "model")
    meta = json.loads((out / "model.json").read_text())
    del meta["model"]["seq_dilated"], meta["model"]["count_pool"]
    (out / "model.json").write_text(json.dumps(meta))
    loaded = load_model(out)
    assert len(loaded.seq_dilated) == 0 and loaded.count_head.tokens is None
    x = torch.rand(2, 4, 128)
    with torch.no_grad():
        for a, b in zip(m.eval()(x), loaded(x)):
            torch.testing.assert_close(a, b)
    fresh = build_model(validate_config({**cfg.model_dump(mode="json"), "model": {"type": "encoder", "d_model": 16,
                                                                                  "depth": 1, "heads": 2, "patch": 4}}).model, 1, 128, 64)
    assert len(fresh.seq_dilated) == 6 and fresh.count_head.tokens == (8, 24)

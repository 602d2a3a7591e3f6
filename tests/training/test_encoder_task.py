"""The encoder's Lightning task: logged components and weights, S2R validation loss, schedules,
and bad input (cell type missing from the dataset, patch size, masking bounds)."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from seq2reads.config import validate_config
from seq2reads.errors import UserError
from seq2reads.models.encoder import MaskedEncoder
from seq2reads.training.encoder_task import MaskedEncoderTask, signal_columns
from seq2reads.training.tasks import lr_factor

CELLS = ["A", "B", "C"]


def synthetic_config(tmp_path, **model):
    raw = {
        "run_dir": str(tmp_path / "run"), "genome": "g.fa", "regions": "r.bed",
        "samples": [{"name": c, "plus": f"{c}.p.bw", "minus": f"{c}.m.bw"} for c in CELLS],
        "window": {"input": 64, "output": 32, "jitter": 0},
        "model": {"type": "encoder", "d_model": 16, "depth": 2, "heads": 2, "patch": 4, "seq_kernels": [1, 5],
                  "span": 4, **model},
        "train": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 2, "max_steps": 6, "precision": "32"},
    }
    return validate_config(raw)


def synthetic_batches(n_batches=3, b=8, length=64, seed=0):
    """Cell type k has a read peak at position 20 + 8k on the plus strand, so reads depend on it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n_batches):
        codes = torch.randint(0, 4, (b, length), generator=g)
        seq = torch.nn.functional.one_hot(codes, 4).permute(0, 2, 1).float()
        signal = torch.poisson(torch.full((b, 3, 2, length), 0.2), generator=g)
        for k in range(3):
            signal[:, k, 0, 20 + 8 * k] += 10
        mask = torch.ones(b, length, dtype=torch.bool)
        out.append({"seq": seq, "signal": signal, "mask": mask, "index": torch.arange(i * b, (i + 1) * b)})
    return out


def test_trains_and_logs_every_component_and_weight(tmp_path):
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    torch.manual_seed(0)
    cfg = synthetic_config(tmp_path, cell_mask_prob=0.5, s2r_prob=0.3, count_stem_all_cells=True)
    model = MaskedEncoder.from_config(cfg.model, 3, 64, 32)
    task = MaskedEncoderTask(cfg, model, {"samples": CELLS, "input_len": 64, "output_len": 32})
    logger = CSVLogger(tmp_path, name="logs", version="")
    trainer = L.Trainer(max_steps=6, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        val_check_interval=3, num_sanity_val_steps=0)
    from torch.utils.data import DataLoader

    batches = synthetic_batches()
    trainer.fit(task, train_dataloaders=DataLoader(batches, batch_size=None),
                val_dataloaders=DataLoader(batches[:1], batch_size=None))
    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    train_rows = [r for r in rows if r.get("train/loss")]
    assert len(train_rows) == 6
    for name in ("reads", "count", "seq", "count_stem_all"):
        assert all(r[f"train/loss_{name}"] for r in train_rows), name
    for name in ("reads", "count", "seq", "cell"):
        w = [float(r[f"train/w_{name}"]) for r in train_rows]
        lo, hi = cfg.model.balance_clamp
        assert all(lo * (1 - 1e-6) <= x <= hi * (1 + 1e-6) for x in w), (name, w)
    assert all(float(r["train/w_reads"]) == 1.0 for r in train_rows)
    # the adaptive weights move: gradient norms of the seq and count losses differ from the reads'
    assert len({r["train/w_seq"] for r in train_rows}) > 1
    val = [r for r in rows if r.get("val/loss")]
    assert len(val) == 2 and all(math.isfinite(float(r["val/loss"])) for r in val)
    assert all(r["val/loss_s2r_count"] and r["val/loss_seq"] and r["val/seq_acc"] for r in val)
    # the balancer's state is part of the task (checkpoints resume it)
    assert "balancer.weights" in task.state_dict()


def test_fixed_count_weight_and_disabled_balancing(tmp_path):
    cfg = synthetic_config(tmp_path, count_weight=3.0, balance=False)
    task = MaskedEncoderTask(cfg, MaskedEncoder.from_config(cfg.model, 3, 64, 32), {"samples": CELLS})
    batch = synthetic_batches(1)[0]
    parts, *_ = task._masked_step(batch)
    losses = {k: v for k, (v, n) in parts.items() if n > 0}
    w = task.balancer.update(losses, task.model.last_shared_layer())
    assert w["count"] == 3.0 and w["seq"] == 1.0 and w["cell"] == 1.0
    total = task.balancer.combine(losses)
    expected = sum(v for k, v in losses.items() if k != "count") + 3.0 * losses["count"]
    assert torch.allclose(total, expected)


def test_count_head_starts_at_the_typical_log_total(tmp_path):
    cfg = synthetic_config(tmp_path)
    stats = {"A": {"median": 59.0}, "B": {"median": 9.0}, "C": {"median": 19.0}, "D": {"median": 999.0}}
    task = MaskedEncoderTask(cfg, MaskedEncoder.from_config(cfg.model, 3, 64, 32),
                             {"samples": ["D", "C", "A", "B"], "count_stats": stats})
    # the config's cell types only (A, B, C; not the dataset's D), mean of log1p medians
    level = (math.log1p(59.0) + math.log1p(9.0) + math.log1p(19.0)) / 3
    assert task.model.count_head.linear.bias.item() == pytest.approx(level, rel=1e-6)
    # no statistics: left as initialised (no crash)
    MaskedEncoderTask(cfg, MaskedEncoder.from_config(cfg.model, 3, 64, 32), {"samples": CELLS})


def test_examples_take_the_reads_of_the_drawn_cell_type(tmp_path):
    cfg = synthetic_config(tmp_path)
    # the dataset holds the cell types in another order: columns follow the names
    task = MaskedEncoderTask(cfg, MaskedEncoder.from_config(cfg.model, 3, 64, 32), {"samples": ["C", "A", "B"]})
    assert task.columns.tolist() == [1, 2, 0]
    batch = synthetic_batches(1)[0]
    seq, reads, lmask, cell1h, masks = task.examples(batch, torch.Generator().manual_seed(0))
    cells = cell1h.argmax(1)
    for i in range(len(cells)):
        assert torch.equal(reads[i], batch["signal"][i, task.columns[cells[i]]])
    assert masks.seq.shape == (8, 64) and masks.cell.shape == (8,)


def test_background_windows_weigh_background_count_weight_in_the_count_losses(tmp_path):
    batch = synthetic_batches(1)[0]
    batch["background"] = torch.arange(8) % 2 == 1
    model = MaskedEncoder.from_config(synthetic_config(tmp_path).model, 3, 64, 32).eval()
    counts = {}
    for w in (1.0, 0.3, 0.0):
        task = MaskedEncoderTask(synthetic_config(tmp_path, background_count_weight=w), model, {"samples": CELLS})
        with torch.no_grad():  # same examples and masks each time
            parts = task._masked_step(batch, torch.Generator().manual_seed(0))[0]
        counts[w] = parts["count"][0].item()
        if w == 1.0:
            assert task.window_weight(batch) is None
        else:  # S2R validation rows n * C + c carry their window's weight
            ww = task.window_weight(batch, 3)
            torch.testing.assert_close(ww, torch.tensor([w if i // 3 % 2 else 1.0 for i in range(24)]))
    # the count loss is linear in the weight of the background windows
    assert counts[0.0] < counts[0.3] < counts[1.0]
    assert counts[0.3] - counts[0.0] == pytest.approx(0.3 * (counts[1.0] - counts[0.0]), rel=1e-4)


def test_cell_type_missing_from_dataset(tmp_path):
    cfg = synthetic_config(tmp_path)
    with pytest.raises(UserError, match="C are in the config but not in the prepared dataset"):
        MaskedEncoderTask(cfg, MaskedEncoder.from_config(cfg.model, 3, 64, 32), {"samples": ["A", "B"]})
    assert signal_columns(["A"], ["B", "A"], 1) == [1]


def test_lr_schedule_warmup_then_cosine():
    f = [lr_factor(s, 10, 110, "cosine") for s in range(110)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[60] == pytest.approx(0.5, abs=1e-6) and f[-1] < 0.01
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(500, 10, 110, "constant") == 1.0


def synthetic_store(n=12, length=64, jitter=4, seed=0):
    """An in-memory DatasetStore: 3 cell types, test peaks, reads peaked per cell type."""
    import numpy as np
    import pandas as pd

    from seq2reads.data.store import DatasetStore

    rng = np.random.default_rng(seed)
    span = length + 2 * jitter
    seq = rng.integers(0, 4, (n, span)).astype(np.uint8)
    seq[:, :3] = 4  # a few N
    signal = rng.poisson(0.3, (n, 3, 2, span)).astype(np.float32)
    for k in range(3):
        signal[:, k, 0, 20 + 8 * k] += 10
    regions = pd.DataFrame({"chrom": "chr1", "start": np.arange(n) * 100, "end": np.arange(n) * 100 + span,
                            "centre": np.arange(n) * 100 + span // 2, "name": [f"r{i}" for i in range(n)],
                            "split": ["test"] * (n - 2) + ["train"] * 2, "kind": ["peak"] * n, "gc": 0.5})
    attrs = {"samples": CELLS, "input_len": length, "output_len": 32, "jitter": jitter, "span": span}
    return DatasetStore({"seq": seq, "signal": signal, "mask": np.ones((n, span), bool)}, regions, attrs)


def test_masked_metrics_on_a_synthetic_store(tmp_path):
    import numpy as np

    from seq2reads.evaluation.masked import masked_metrics

    cfg = synthetic_config(tmp_path)
    torch.manual_seed(0)
    model = MaskedEncoder.from_config(cfg.model, 3, 64, 32)
    store = synthetic_store()
    res = masked_metrics(cfg, model, store, batch_size=4)
    assert res["n_windows"] == 10 and res["n_examples"] == 30
    assert 0.15 <= res["mask_fraction"] <= 0.40
    for k in ("read_profile_pearson", "read_profile_pearson_s2r"):
        assert -1 <= res[k] <= 1
    assert 0 <= res["read_profile_jsd"] <= 1
    assert 0 <= res["seq_accuracy"] <= 1 and 0 <= res["cell_accuracy"] <= 1
    assert res["cell_baseline_accuracy"] == pytest.approx(1 / 3)
    # the base-composition baseline: the most frequent base of the evaluated windows, scored at
    # masked positions (about its frequency, 1/4 here since the bases are uniform)
    assert 0.15 < res["seq_baseline_accuracy"] < 0.4
    assert set(res["per_cell_type"]) == set(CELLS)
    # reproducible (fixed-seed masks) and the model is left in its mode
    model.train()
    again = masked_metrics(cfg, model, store, batch_size=4)
    assert model.training and again["seq_accuracy"] == res["seq_accuracy"]
    assert np.isclose(again["read_profile_pearson"], res["read_profile_pearson"])


@pytest.mark.parametrize("key,value", [("mask_min", "0"), ("mask_max", "1.0"), ("mask_min", "0.5")])
def test_masking_bounds_outside_0_1_exit_2(tmp_path, capsys, key, value):
    import yaml

    from seq2reads.cli import main

    raw = {"run_dir": str(tmp_path / "run"), "genome": "g.fa", "regions": "r.bed",
           "samples": [{"name": "A", "plus": "a.p.bw", "minus": "a.m.bw"}], "model": {"type": "encoder"}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    # mask_min=0.5 > mask_max=0.4 is out of order
    # rejected when the config is read, by any command (prepare here: nothing is written)
    assert main(["prepare", str(path), "--set", f"model.{key}={value}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and (f"model.{key}" in err or "masking bounds" in err), err
    assert not (tmp_path / "run").exists()


# -- on a real prepared + trained run (shared session fixture) ----------------------------------
@pytest.fixture(scope="module")
def enc_run(request, sim_dir, tmp_path_factory):
    """The shared ``encoder_run``; if its config cannot be built (``--set model.type=encoder`` on
    the simulator's bpnet model section leaves bpnet-only keys), the same small run built from the
    simulator's config with its model section replaced."""
    try:
        return request.getfixturevalue("encoder_run")
    except UserError as e:
        if "unknown key 'model." not in str(e):
            raise
    import yaml

    from seq2reads.config import load_config
    from seq2reads.data.store import prepare
    from seq2reads.training.trainer import train
    from tests.conftest import SMALL, SMALL_ENCODER

    raw = yaml.safe_load((sim_dir / "config.yaml").read_text())
    raw["model"] = {"type": "encoder"}
    path = sim_dir / "config.encoder-tests.yaml"
    path.write_text(yaml.safe_dump(raw))
    run = tmp_path_factory.mktemp("runs") / "encoder"
    cfg = load_config(path, [*SMALL, f"run_dir={run}", *SMALL_ENCODER])
    prepare(cfg, progress=False)
    train(cfg)
    return cfg


def test_encoder_run_trains_logs_and_reloads(enc_run):
    import numpy as np
    import pandas as pd

    from seq2reads.data.loader import iter_batches
    from seq2reads.data.store import open_dataset
    from seq2reads.models.io import load_model

    run = enc_run.run_path
    df = pd.read_csv(run / "logs" / "metrics.csv")
    for col in ("train/loss_reads", "train/loss_count", "train/loss_seq", "train/w_seq", "train/w_count",
                "train/w_cell", "val/loss"):
        assert col in df.columns and df[col].notna().any(), col
    steps = df.dropna(subset=["train/loss_reads"])
    assert (steps["train/w_reads"] == 1.0).all()
    lo, hi = enc_run.model.balance_clamp
    assert steps["train/w_seq"].between(lo * 0.999, hi * 1.001).all()
    model = load_model(run)
    assert type(model).__name__ == "MaskedEncoder" and model.patch == 4
    store = open_dataset(run / "dataset")
    batch = next(iter_batches(store, store.indices("test")[:4], 4))
    with torch.no_grad():
        prof, lc = model(batch["seq"])
    assert prof.shape == (4, len(store.samples), 2, store.output_len) and lc.shape == (4, len(store.samples))
    assert np.isfinite(prof.numpy()).all()
    emb = model.embed(batch["seq"], "block1", reads=batch["signal"][:, 0], cell=0)
    assert emb.shape == (4, 32, store.input_len // 4)


def test_masked_metrics_on_the_trained_run(enc_run):
    from seq2reads.data.store import open_dataset
    from seq2reads.evaluation.masked import masked_metrics
    from seq2reads.models.io import load_model

    run = enc_run.run_path
    res = masked_metrics(enc_run, load_model(run), open_dataset(run / "dataset"), max_windows=24)
    assert res["n_examples"] == 3 * res["n_windows"] > 0
    assert 0 <= res["seq_accuracy"] <= 1 and 0 <= res["read_profile_jsd"] <= 1
    # simulated genomes are not uniform: the composition baseline beats chance
    assert res["seq_baseline_accuracy"] > 0.25


def _copy_run(enc_run, tmp_path, extra_samples=()):
    """A new run dir holding a copy of the fixture's dataset, and its config file."""
    import shutil

    import yaml

    run = tmp_path / "run"
    shutil.copytree(enc_run.run_path / "dataset", run / "dataset")
    raw = enc_run.model_dump(mode="json")
    raw["run_dir"] = str(run)
    raw["samples"] = raw["samples"] + list(extra_samples)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return run, path


def test_train_with_a_cell_type_the_dataset_lacks_exits_2(enc_run, tmp_path, capsys):
    from seq2reads.cli import main

    ghost = dict(enc_run.model_dump(mode="json")["samples"][0], name="ghost")
    run, path = _copy_run(enc_run, tmp_path, [ghost])
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ghost" in err and "prepare" in err, err
    assert not (run / "model").exists()


def test_train_with_patch_not_dividing_the_window_exits_2(enc_run, tmp_path, capsys):
    from seq2reads.cli import main

    run, path = _copy_run(enc_run, tmp_path)
    assert main(["train", str(path), "--set", "model.patch=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not divisible by model.patch (3)" in err, err
    assert not (run / "model").exists() and not (run / "checkpoints" / "last.ckpt").exists()


def test_count_stem_learns_every_cell_types_total(tmp_path):
    """model.count_stem_all_cells: an extra count loss of the stem alone against the total of every
    cell type of each window (not only the example's), on the unmasked sequence; its gradient
    reaches the stem and not the transformer."""
    torch.manual_seed(0)
    cfg = synthetic_config(tmp_path, count_stem=8, count_stem_all_cells=True)
    model = MaskedEncoder.from_config(cfg.model, 3, 64, 32)
    task = MaskedEncoderTask(cfg, model, {"samples": CELLS, "count_stats": {c: {"median": 9.0} for c in CELLS}})
    assert task.stem_all_cells and float(task.count_level) == pytest.approx(math.log(10.0))
    batch = synthetic_batches(1)[0]
    loss = task.stem_all_cells_loss(batch)
    # by hand: totals over the central 32 positions of each cell type, both strands
    totals = batch["signal"][..., 16:48].sum((-1, -2))  # (B, C)
    pred = model.stem_log_counts(batch["seq"]) + math.log(10.0)
    assert pred.shape == (8, 3)
    assert float(loss) == pytest.approx(float(((pred - torch.log1p(totals)) ** 2).mean()), rel=1e-5)
    loss.backward()
    assert model.count_conv.weight.grad.abs().sum() > 0 and model.count_stem_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.blocks.parameters())
    # off (the default), or without a stem: no such loss
    off = MaskedEncoderTask(synthetic_config(tmp_path, count_stem=8),
                            MaskedEncoder.from_config(cfg.model, 3, 64, 32), {"samples": CELLS})
    assert not off.stem_all_cells
    no_stem = synthetic_config(tmp_path, count_stem=0, count_stem_all_cells=True)
    assert not MaskedEncoderTask(no_stem, MaskedEncoder.from_config(no_stem.model, 3, 64, 32),
                                 {"samples": CELLS}).stem_all_cells

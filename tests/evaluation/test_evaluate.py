"""``evaluate`` on the shared small trained runs, and its bad-input cases through the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from seq2reads import cli
from seq2reads.config import save_run_config
from seq2reads.evaluation import metrics as M


def _copy_run(cfg, dest, with_model=True):
    """A copy of a run directory (config, dataset, optionally model) whose config names ``dest``."""
    src = cfg.run_path
    dest.mkdir(parents=True)
    shutil.copytree(src / "dataset", dest / "dataset")
    if with_model:
        shutil.copytree(src / "model", dest / "model")
    new = cfg.model_copy(update={"run_dir": str(dest)})
    save_run_config(new)
    return new


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture(scope="module")
def bpnet_metrics(bpnet_run):
    from seq2reads.evaluation.evaluate import evaluate_run

    return evaluate_run(bpnet_run, progress=False)


def test_metrics_json_has_spec_layout(bpnet_run, bpnet_metrics):
    path = bpnet_run.run_path / "metrics.json"
    on_disk = json.loads(path.read_text())  # strict JSON: NaN would have failed allow_nan=False
    assert on_disk == bpnet_metrics
    cells = bpnet_run.cell_types
    test = on_disk["test"]
    for sel in (test, test["peaks"], test["all"]):
        assert set(M.METRICS) <= set(sel["overall"])
        assert sorted(sel["per_cell_type"]) == sorted(cells)
        for name in M.METRICS:
            assert np.isfinite(sel["overall"][name]), name
            for cell in cells:
                assert np.isfinite(sel["per_cell_type"][cell][name]), (cell, name)
    assert test["overall"] == test["peaks"]["overall"]
    assert test["all"]["overall"]["n_regions"] > test["peaks"]["overall"]["n_regions"] > 0
    for ref in ("baseline", "ceiling"):
        assert set(M.METRICS) <= set(on_disk[ref])  # SPEC's flat keys
        assert sorted(on_disk[ref]["per_cell_type"]) == sorted(cells)
    # the true rates are a better profile model than the average profile
    assert on_disk["ceiling"]["profile_pearson"] > on_disk["baseline"]["profile_pearson"]
    assert on_disk["ceiling"]["profile_jsd"] < on_disk["baseline"]["profile_jsd"]
    assert on_disk["ceiling"]["count_pearson"] > 0.5
    assert on_disk["baseline"]["count_pearson"] is None  # constant count: undefined, not faked
    assert not _leftovers(bpnet_run.run_path)


def test_metrics_match_direct_computation(bpnet_run, bpnet_metrics):
    """Recompute one cell type's peak metrics straight from the store and the model."""
    from seq2reads.data.loader import center_crop, iter_batches
    from seq2reads.data.store import open_dataset
    from seq2reads.evaluation.predict import load_trained_model, predict_windows

    store = open_dataset(bpnet_run.run_path / "dataset")
    model = load_trained_model(bpnet_run.run_path, "cpu")
    idx = store.indices("test", kinds=("peak",))
    batch = next(iter_batches(store, idx, len(idx)))
    L = store.output_len
    counts = center_crop(batch["signal"], L).numpy()
    mask = center_crop(batch["mask"], L).numpy()
    logits, logc = predict_windows(model, batch["seq"], 16)
    # predict.revcomp_average (default on): averaged with the strand-flipped reverse complement's prediction
    assert bpnet_metrics["info"]["revcomp_average"] is True
    rc_logits, rc_logc = predict_windows(model, batch["seq"].flip(1).flip(2), 16)
    logits = 0.5 * (logits + rc_logits[:, :, ::-1, ::-1])
    logc = 0.5 * (logc + rc_logc)
    c = len(store.samples) - 1
    want = M.all_metrics(M.softmax_profile(logits[:, c]), logc[:, c], counts[:, c], mask)
    got = bpnet_metrics["test"]["per_cell_type"][store.samples[c]]
    for name in M.METRICS:
        assert got[name] == pytest.approx(want[name], rel=1e-5, abs=1e-7), name


def test_evaluate_before_training_exits_2(bpnet_run, tmp_path, capsys):
    run = tmp_path / "untrained"
    _copy_run(bpnet_run, run, with_model=False)
    assert cli.main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "train" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (run / "metrics.json").exists() and not _leftovers(run)


def test_run_from_another_version_exits_2(bpnet_run, tmp_path, capsys):
    run = tmp_path / "foreign"
    _copy_run(bpnet_run, run)
    meta_path = run / "model" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 999
    meta_path.write_text(json.dumps(meta))
    assert cli.main(["evaluate", str(run)]) == 2
    err = capsys.readouterr().err
    assert "version" in err.lower() and len(err.strip().splitlines()) == 1
    assert not (run / "metrics.json").exists() and not _leftovers(run)


def test_evaluate_encoder_run(encoder_run):
    """The encoder in S2R mode gets the same metrics, plus masked-reconstruction metrics."""
    assert cli.main(["evaluate", str(encoder_run.run_path)]) == 0
    out = json.loads((encoder_run.run_path / "metrics.json").read_text())
    assert out["info"]["model_type"] == "encoder"
    for name in M.METRICS:
        assert np.isfinite(out["test"]["overall"][name]), name
    assert sorted(out["test"]["per_cell_type"]) == sorted(encoder_run.cell_types)
    masked = out.get("masked")
    assert isinstance(masked, dict) and masked and "unavailable" not in str(masked.get("note", ""))


def test_ceiling_from_replicates_and_none(bpnet_run, sim_dir, tmp_path):
    """Without truth.json: a replicate ceiling when two samples have replicates (null for the third),
    and a null ceiling with a note when there are none."""
    from seq2reads.data.store import prepare
    from seq2reads.evaluation.evaluate import evaluate_run
    from tests.conftest import SMALL_BPNET, small_config

    cells = bpnet_run.cell_types
    reps = [f"samples.{i}.replicates=[{{plus: tracks/rep2/{c}.plus.bw, minus: tracks/rep2/{c}.minus.bw}}]"
            for i, c in enumerate(cells[:2])]
    cfg = small_config(sim_dir, tmp_path / "rep", [*SMALL_BPNET, "truth=null", *reps])
    prepare(cfg, progress=False)
    shutil.copytree(bpnet_run.run_path / "model", cfg.run_path / "model")
    out = evaluate_run(cfg, progress=False)
    ceil, base = out["ceiling"], out["baseline"]
    assert "replicate" in ceil["note"] and cells[2] in ceil["note"]
    for c in cells[:2]:
        assert ceil["per_cell_type"][c]["profile_pearson"] > base["per_cell_type"][c]["profile_pearson"]
        assert ceil["per_cell_type"][c]["count_pearson"] > 0.5
    assert ceil["per_cell_type"][cells[2]]["profile_pearson"] is None  # no replicate: no ceiling, not a fake one

    none = _copy_run(cfg.model_copy(update={"samples": [s.model_copy(update={"replicates": []}) for s in cfg.samples]}),
                     tmp_path / "norep")
    # the copied dataset still holds replicate_signal; a dataset prepared without replicates has none
    shutil.rmtree(none.run_path / "dataset")
    prepare(none, progress=False)
    out = evaluate_run(none, progress=False)
    assert out["ceiling"] is None and "no noise ceiling" in out["ceiling_note"]
    assert np.isfinite(out["test"]["overall"]["profile_pearson"])

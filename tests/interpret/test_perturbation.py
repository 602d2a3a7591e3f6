"""Marginalisation of JASPAR motifs and random-variation probes, for both model types."""

import json

import numpy as np
import pandas as pd
import pytest

from seq2reads.cli import main
from seq2reads.interpret.perturbation import marginalize_run


def _check(out, cells):
    eff = pd.read_csv(out / "effects.tsv", sep="\t")
    assert set(eff["cell_type"]) == set(cells) and set(eff["strand"]) == {"plus", "minus", "both"}
    assert eff["motif_id"].iloc[0].startswith("MA0035.")
    assert np.isfinite(eff["delta_log_counts_mean"]).all()
    rec = json.loads((out / "effects.json").read_text())["motifs"][0]
    assert len(rec["profile_delta"][cells[0]]["plus"]) > 0
    probes = json.loads((out / "probes.json").read_text())
    assert set(probes["cells"][cells[0]]) == {"real", "dinuc_shuffled", "random_iid"}
    for png in ("log_counts.png", "probes.png"):
        assert (out / png).stat().st_size > 0
    assert list(out.glob("*.profile.png"))


@pytest.mark.parametrize("run", ["bpnet_run", "encoder_run"])
def test_marginalize_both_model_types(run, request):
    cfg = request.getfixturevalue(run)
    cfg = cfg.model_copy(update={"interpret": cfg.interpret.model_copy(update={"marginalize_n": 16})})
    _check(marginalize_run(cfg, ["MA0035"]), cfg.cell_types)


def test_unknown_motif_exits_2_with_suggestion(bpnet_run, capsys):
    run = bpnet_run.run_path
    before = sorted(p.name for p in run.iterdir())
    rc = main(["marginalize", str(run), "--motif", "MA0035", "GATA9"])
    err = capsys.readouterr().err
    assert rc == 2 and "GATA9" in err and "Did you mean" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in run.iterdir()) == before

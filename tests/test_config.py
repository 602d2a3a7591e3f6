"""Config schema: defaults, closest-key suggestions, --set overrides, relative paths."""

from __future__ import annotations

import pytest
import yaml

from seq2reads.config import apply_overrides, load_config, load_run_config, save_run_config, validate_config
from seq2reads.errors import UserError

BASE = {"run_dir": "runs/x", "genome": "g.fa", "regions": "r.bed",
        "samples": [{"name": "K562", "plus": "k.plus.bw", "minus": "k.minus.bw"}, {"name": "HepG2", "bam": "h.bam"}]}


def write(tmp_path, data, name="config.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.window.input == 2114 and cfg.window.output == 1000 and cfg.window.jitter == 128
    assert cfg.splits.test == ["chr1", "chr3", "chr6"] and cfg.model.type == "bpnet"
    assert cfg.sae.latents == 256 and cfg.interpret.motif_db == "JASPAR2024"
    assert cfg.genome == str(tmp_path / "g.fa") and cfg.samples[1].bam == str(tmp_path / "h.bam")
    assert cfg.cell_types == ["K562", "HepG2"]


@pytest.mark.parametrize("patch, expect", [
    ({"trian": {}}, "Did you mean 'train'"),
    ({"train": {"batch_sise": 3}}, "train.batch_sise"),
    ({"model": {"type": "encoder", "dept": 2}}, "Did you mean 'depth'"),
    ({"window": {"inptu": 100}}, "Did you mean 'input'"),
])
def test_unknown_keys_suggest_the_closest(tmp_path, patch, expect):
    with pytest.raises(UserError, match=expect):
        load_config(write(tmp_path, {**BASE, **patch}))


@pytest.mark.parametrize("patch, expect", [
    ({"window": {"input": 100, "output": 200}}, "must not exceed"),
    ({"model": {"type": "encoder", "mask_min": 0.0}}, "model"),
    ({"model": {"type": "encoder", "mask_max": 1.5}}, "model"),
    ({"sae": {"latents": 8, "k": 16}}, "sae.k"),
    ({"samples": [{"name": "A", "plus": "p.bw"}]}, "both plus and minus"),
    ({"samples": [{"name": "A", "bam": "a.bam"}, {"name": "A", "bam": "b.bam"}]}, "unique"),
    ({"assay": "chip-seq"}, "assay"),
    ({"model": {"type": "bpnet", "filters": 5, "attention_layers": 1}}, "even number of filters"),
    ({"model": {"type": "bpnet", "filters": 32, "attention_layers": 1, "attention_heads": 3}}, "attention_heads"),
])
def test_bad_values_are_one_line_errors(patch, expect):
    with pytest.raises(UserError, match=expect) as e:
        validate_config({**BASE, **patch})
    assert "\n" not in str(e.value)


def test_missing_required_key():
    with pytest.raises(UserError, match="required key 'genome'"):
        validate_config({k: v for k, v in BASE.items() if k != "genome"})


def test_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.max_epochs=3", "model.type=encoder", "model.depth=2",
                                              "samples.0.name=K", "splits.test=[chr2]", "train.precision=32"])
    assert cfg.train.max_epochs == 3 and cfg.model.type == "encoder" and cfg.model.depth == 2
    assert cfg.samples[0].name == "K" and cfg.splits.test == ["chr2"] and cfg.train.precision == "32"
    # Switching the model type drops the other model's keys (filters, layers) instead of failing.
    cfg = load_config(write(tmp_path, {**BASE, "model": {"type": "bpnet", "filters": 8}}), ["model.type=encoder"])
    assert cfg.model.type == "encoder"
    with pytest.raises(UserError, match="key.sub=value"):
        apply_overrides(BASE, ["train.max_epochs"])
    with pytest.raises(UserError, match="list index"):
        apply_overrides(BASE, ["samples.first.name=x"])


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("run_dir: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(p)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_run_config_round_trip(tmp_path):
    cfg = load_config(write(tmp_path, {**BASE, "run_dir": str(tmp_path / "run")}), ["train.lr=0.01"])
    save_run_config(cfg)
    again = load_run_config(tmp_path / "run", ["train.seed=7"])
    assert again.train.lr == 0.01 and again.train.seed == 7 and again.genome == cfg.genome
    with pytest.raises(UserError, match="not a run directory"):
        load_run_config(tmp_path / "elsewhere")


def test_cli_config_typo_exits_2(tmp_path, capsys):
    from seq2reads.cli import main

    assert main(["prepare", str(write(tmp_path, {**BASE, "windwo": {}}))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Did you mean 'window'" in err

"""ProfileCountTask: count weights and the count head's starting point from the dataset's stats."""

from __future__ import annotations

import math

import pytest
import torch

from seq2reads.config import validate_config
from seq2reads.models.bpnet import BPNet
from seq2reads.training.tasks import ProfileCountTask


def _cfg(**model):
    return validate_config({
        "run_dir": "run", "genome": "g.fa", "regions": "r.bed",
        "samples": [{"name": "A", "plus": "a+.bw", "minus": "a-.bw"},
                    {"name": "B", "plus": "b+.bw", "minus": "b-.bw"}],
        "window": {"input": 200, "output": 100, "jitter": 0},
        "model": {"type": "bpnet", "filters": 8, "layers": 2, "profile_kernel": 25, **model},
    })


STATS = {"A": {"mean": 150.0, "median": 59.0}, "B": {"mean": 20.0, "median": 9.0}}


def test_count_head_starts_at_log1p_of_the_median_and_weights_follow_the_rule():
    task = ProfileCountTask(_cfg(), BPNet(2, 100, 8, 2, profile_kernel=25),
                            {"samples": ["A", "B"], "output_len": 100, "count_stats": STATS})
    bias = task.model.count_head.bias.detach()
    torch.testing.assert_close(bias, torch.tensor([math.log1p(59.0), math.log1p(9.0)]))
    assert task.count_weights == [5.9, 1.0]  # median / 10, floored at 1


def test_configured_count_weight_wins():
    task = ProfileCountTask(_cfg(count_weight=25.0), BPNet(2, 100, 8, 2, profile_kernel=25),
                            {"samples": ["A", "B"], "output_len": 100, "count_stats": STATS})
    assert task.count_weights == [25.0, 25.0]


def test_param_groups_scale_the_count_heads_learning_rate():
    """Every parameter in exactly one group; count_* ones at count_lr_scale x lr; no decay on biases."""
    from seq2reads.training.tasks import param_groups

    cfg = validate_config({**_cfg(count_lr_scale=5.0).model_dump(), "train": {"lr": 0.002}})
    model = BPNet(2, 100, 8, 2, profile_kernel=25, count_stem=4)
    groups = param_groups(model, cfg.train, cfg.model.count_lr_scale)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert lr_of[id(p)] == (0.01 if name.startswith("count_") else 0.002), name
        assert decay_of[id(p)] == (cfg.train.weight_decay if p.ndim >= 2 else 0.0), name
    assert {"count_conv.weight", "count_head.weight", "conv0.weight"} <= {n for n, _ in model.named_parameters()}


def test_background_windows_weigh_background_count_weight_in_the_count_loss():
    torch.manual_seed(0)
    attrs = {"samples": ["A", "B"], "output_len": 100, "count_stats": STATS}
    model = BPNet(2, 100, 8, 2, profile_kernel=25).eval()
    L = model.min_input_len
    batch = {"seq": torch.nn.functional.one_hot(torch.randint(0, 4, (4, L)), 4).float().transpose(1, 2),
             "signal": torch.poisson(torch.full((4, 2, 2, L), 0.5)), "mask": torch.ones(4, L, dtype=torch.bool),
             "index": torch.arange(4), "background": torch.tensor([False, True, False, True])}
    parts = {}
    for w in (1.0, 0.0, 0.3):
        task = ProfileCountTask(_cfg(background_count_weight=w), model, attrs).eval()
        with torch.no_grad():
            parts[w] = task._step(batch)
    assert task.background_weight == 0.3
    nll, mse = parts[1.0][1]["profile_nll"], parts[1.0][1]["count_mse"]
    for w in (0.0, 0.3):  # the parts are reported unweighted; only the loss changes
        torch.testing.assert_close(parts[w][1]["count_mse"], mse)
    loss = {w: parts[w][0].item() for w in parts}
    assert loss[0.0] < loss[0.3] < loss[1.0]
    # the count term is linear in the background weight
    assert loss[0.3] - loss[0.0] == pytest.approx(0.3 * (loss[1.0] - loss[0.0]), rel=1e-4)
    assert loss[0.0] > nll.item()  # peaks still count


def test_background_count_weight_must_be_in_0_1():
    with pytest.raises(Exception, match="background_count_weight"):
        _cfg(background_count_weight=1.5)

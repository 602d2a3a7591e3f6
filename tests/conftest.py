"""Shared fixtures: one small simulated data set, prepared once, and small trained runs.

Everything is real (simulator → FASTA/bigWig/BAM → Zarr store → Lightning training), only small:
a few hundred regions, 512 bp windows, tiny models, a few dozen steps. Session-scoped so that the
whole suite builds each of them once.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")

# Small-but-real settings shared by the fixtures below (and usable by tests that build their own).
SMALL = [
    "window.input=512",
    "window.output=256",
    "window.jitter=16",
    "background.ratio=0.2",
    "train.batch_size=32",
    "train.max_epochs=2",
    "train.warmup_steps=5",
    "train.checkpoint_every=10",
    "train.precision=32",
    "train.devices=1",
    "train.accelerator=cpu",
    "interpret.n_regions=24",
    "interpret.shuffles=4",
    "interpret.ig_steps=8",
    "interpret.ig_shuffles=2",
    "sae.n_windows=64",
    "sae.latents=32",
    "sae.k=4",
    "sae.epochs=2",
    "sae.max_features=2",
    "sae.top_windows=8",
]
# Whole model sections: the simulator's config names BPNet keys that the encoder does not have.
# the small CNN attends (model.attention_layers, off by default); bpnet_plain_run covers the plain one
SMALL_BPNET = ["model={type: bpnet, filters: 16, layers: 3, profile_kernel: 25, attention_layers: 1}"]
SMALL_ENCODER = ["model={type: encoder, d_model: 32, depth: 2, heads: 2, patch: 4, seq_kernels: [1, 9]}"]


@pytest.fixture(scope="session")
def sim_dir(tmp_path_factory):
    """A simulated data set: genome.fa, regions.bed, tracks/*.bw, a BAM, truth.json, config.yaml."""
    from seq2reads.data.simulate import simulate

    return simulate(tmp_path_factory.mktemp("sim") / "sim", seed=1, n_cell_types=3, n_regions=300)


def small_config(sim_dir, run_dir, extra=()):
    """The simulator's config with the small settings above and ``run_dir`` set."""
    from seq2reads.config import load_config

    return load_config(sim_dir / "config.yaml", [*SMALL, f"run_dir={run_dir}", *extra])


@pytest.fixture(scope="session")
def prepared_run(sim_dir, tmp_path_factory):
    """Config of a run whose dataset is prepared (small BPNet model section)."""
    from seq2reads.data.store import prepare

    cfg = small_config(sim_dir, tmp_path_factory.mktemp("runs") / "bpnet", SMALL_BPNET)
    prepare(cfg)
    return cfg


@pytest.fixture(scope="session")
def bpnet_run(prepared_run):
    """Config of a run with a small trained BPNet (prepare + train)."""
    from seq2reads.training.trainer import train

    train(prepared_run)
    return prepared_run


@pytest.fixture(scope="session")
def bpnet_plain_run(sim_dir, tmp_path_factory):
    """Config of a run with a small trained BPNet without patch attention (DeepLIFT applies)."""
    from seq2reads.data.store import prepare
    from seq2reads.training.trainer import train

    cfg = small_config(sim_dir, tmp_path_factory.mktemp("runs") / "bpnet_plain",
                       ["model={type: bpnet, filters: 16, layers: 3, profile_kernel: 25}"])
    prepare(cfg)
    train(cfg)
    return cfg


@pytest.fixture(scope="session")
def encoder_run(sim_dir, tmp_path_factory):
    """Config of a run with a small trained masked encoder (prepare + train)."""
    from seq2reads.data.store import prepare
    from seq2reads.training.trainer import train

    cfg = small_config(sim_dir, tmp_path_factory.mktemp("runs") / "encoder", SMALL_ENCODER)
    prepare(cfg)
    train(cfg)
    return cfg

"""Model files: ``model.safetensors`` (weights) + ``model.json`` (architecture and metadata).

Nothing is unpickled when loading: the JSON names the architecture (the ``model`` config
section), the module is rebuilt by :func:`seq2reads.models.registry.build_model` and the tensors
come from safetensors. ``model.json``::

    {"format": "seq2reads-model", "version": 1, "package_version": "0.1.0",
     "model": {...model config...}, "cell_types": [...], "input_len": 2114, "output_len": 1000,
     "extra": {"count_weight": [...], ...}}
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seq2reads.atomic import atomic_path
from seq2reads.errors import UserError

FORMAT = "seq2reads-model"
VERSION = 1
WEIGHTS = "model.safetensors"
META = "model.json"


def save_model(model: nn.Module, cfg, path_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write ``path_dir/model.safetensors`` and ``path_dir/model.json`` atomically (as one folder).

    Parameters
    ----------
    model : nn.Module
        The trained module (its ``state_dict`` is saved; shared tensors are cloned).
    cfg : seq2reads.config.Config
        The run's config; its ``model`` section, ``samples`` and ``window`` are recorded.
    path_dir : path
        Output folder (usually ``RUN/model``); replaced as a whole.
    extra : dict, optional
        JSON-serialisable metadata (e.g. ``count_weight``, training step).

    Returns
    -------
    Path of the folder.
    """
    from safetensors.torch import save_file

    import seq2reads

    meta = {
        "format": FORMAT,
        "version": VERSION,
        "package_version": seq2reads.__version__,
        "model": cfg.model.model_dump(mode="json"),
        "cell_types": list(cfg.cell_types),
        "input_len": int(cfg.window.input),
        "output_len": int(cfg.window.output),
        "extra": dict(extra or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path_dir = Path(path_dir)
    with atomic_path(path_dir) as tmp:
        tmp.mkdir(parents=True)
        save_file(tensors, str(tmp / WEIGHTS), metadata={"format": FORMAT, "version": str(VERSION)})
        (tmp / META).write_text(json.dumps(meta, indent=2))
        (tmp / WEIGHTS).chmod(0o644)  # safetensors creates it owner-only
    return path_dir


def model_dir(path: str | Path) -> Path:
    """The folder holding ``model.json``: ``path`` itself, or ``path/model`` for a run directory."""
    path = Path(path)
    if path.is_file():
        path = path.parent
    if (path / META).exists() or (path / WEIGHTS).exists():
        return path
    return path / "model"


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """The validated contents of ``model.json`` (see module docstring); UserError if unusable."""
    d = model_dir(path)
    meta_path = d / META
    if not meta_path.exists():
        raise UserError(f"no trained model in {path} (missing {meta_path}): run `seq2reads train CONFIG` first.")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{meta_path} is corrupted (not valid JSON): retrain with `seq2reads train CONFIG`.") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not a seq2reads model file: point to a run directory made by seq2reads train.")
    if meta.get("version") != VERSION:
        raise UserError(
            f"{meta_path} has model format version {meta.get('version')} (package "
            f"{meta.get('package_version')}), this seq2reads reads version {VERSION}: retrain with "
            "`seq2reads train CONFIG` or use the matching seq2reads version."
        )
    for key in ("model", "cell_types", "input_len", "output_len"):
        if key not in meta:
            raise UserError(f"{meta_path} lacks '{key}' (corrupted): retrain with `seq2reads train CONFIG`.")
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the module of a run directory (or model folder) and load its weights, no pickle.

    Parameters
    ----------
    path : path
        ``RUN`` or ``RUN/model``.
    device : str
        Where to put the module.

    Returns
    -------
    nn.Module in eval mode, with attributes ``cell_types`` (list), ``input_len``, ``output_len``
    (bp) and ``model_meta`` (the JSON dict).

    Raises
    ------
    UserError
        Missing ("train first"), corrupted or foreign files, a format version mismatch, or weights
        that do not fit the recorded architecture.
    """
    from pydantic import TypeAdapter, ValidationError
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from seq2reads.config import ModelConfig
    from seq2reads.models.registry import build_model

    meta = read_model_meta(path)
    d = model_dir(path)
    weights = d / WEIGHTS
    if not weights.exists():
        raise UserError(f"no trained weights in {d} (missing {WEIGHTS}): run `seq2reads train CONFIG` first.")
    saved = dict(meta["model"]) if isinstance(meta.get("model"), dict) else meta.get("model")
    if isinstance(saved, dict):
        saved.setdefault("count_norm", False)  # model files written before count_norm existed
        if saved.get("type") == "encoder":
            # encoder files written before the dilated sequence stem and output-window count pooling
            saved.setdefault("seq_dilated", 0)
            saved.setdefault("count_pool", "window")
        # files written before the count stem and multi-scale count pooling (both model types)
        saved.setdefault("count_scales", 1)
        saved.setdefault("count_stem", 0)
        if saved.get("type", "bpnet") == "bpnet":
            saved.setdefault("count_box", 0)  # CNN files written before the count head's box windows
    try:
        model_cfg = TypeAdapter(ModelConfig).validate_python(saved)
    except ValidationError:
        raise UserError(f"{d / META} describes an unknown model: retrain with `seq2reads train CONFIG`.") from None
    model = build_model(model_cfg, len(meta["cell_types"]), int(meta["input_len"]), int(meta["output_len"]))
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{weights} is corrupted or not a safetensors file ({e}): retrain with `seq2reads train CONFIG`.") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise UserError(f"{weights} does not match the architecture in {META} (corrupted or foreign): retrain.") from None
    model.cell_types = list(meta["cell_types"])
    model.input_len = int(meta["input_len"])
    model.output_len = int(meta["output_len"])
    model.model_meta = meta
    return model.to(device).eval()

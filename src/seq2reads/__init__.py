"""seq2reads: sequence-to-read models for nascent transcription (PRO-seq, PRO-cap, GRO-seq).

Public API (imported lazily so that ``import seq2reads`` stays fast):

- :func:`load_model` — the trained module of a run directory, without unpickling anything.
- :func:`load_config` — a validated config from YAML.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["load_model", "load_config", "__version__"]


def load_model(run_dir, device: str = "cpu"):
    """Load ``RUN/model/model.safetensors`` + ``model.json``; returns a ``torch.nn.Module`` in eval mode.

    The module maps one-hot DNA ``(N, 4, L)`` to ``(profile_logits (N, C, 2, L_out), log_counts (N, C))``.
    """
    from seq2reads.models.io import load_model as _load

    return _load(run_dir, device=device)


def load_config(path, overrides=None):
    """Validated :class:`seq2reads.config.Config` from a YAML file (see SPEC.md)."""
    from seq2reads.config import load_config as _load

    return _load(path, overrides)

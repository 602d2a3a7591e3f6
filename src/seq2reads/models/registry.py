"""Build a model from its config section, and check that the window fits it.

``model.type`` picks the class: ``bpnet`` -> :class:`~seq2reads.models.bpnet.BPNet`,
``encoder`` -> ``seq2reads.models.encoder.MaskedEncoder`` (imported lazily).
"""

from __future__ import annotations

from torch import nn

from seq2reads.errors import UserError


def build_model(model_cfg, n_cell_types: int, input_len: int, output_len: int) -> nn.Module:
    """A freshly initialised model for ``C = n_cell_types`` and the given window (bp).

    Raises
    ------
    UserError
        The input window is shorter than the model's receptive field needs.
    """
    check_window(model_cfg, input_len, output_len)
    if model_cfg.type == "bpnet":
        from seq2reads.models.bpnet import BPNet

        return BPNet(
            n_cell_types=n_cell_types,
            output_len=output_len,
            filters=model_cfg.filters,
            layers=model_cfg.layers,
            conv_kernel=model_cfg.conv_kernel,
            dilated_kernel=model_cfg.dilated_kernel,
            profile_kernel=model_cfg.profile_kernel,
            count_norm=model_cfg.count_norm,
            count_scales=model_cfg.count_scales,
            count_stem=model_cfg.count_stem,
            count_box=model_cfg.count_box,
            attention_layers=model_cfg.attention_layers,
            attention_heads=model_cfg.attention_heads or 1,  # None only without attention
            attention_patch=model_cfg.attention_patch,
        )
    if model_cfg.type == "encoder":
        from seq2reads.models.encoder import MaskedEncoder

        return MaskedEncoder.from_config(model_cfg, n_cell_types, input_len, output_len)
    raise UserError(f"unknown model.type '{model_cfg.type}': use bpnet or encoder.")


def min_input_len(model_cfg, output_len: int) -> int:
    """Shortest ``window.input`` (bp) the model needs to predict ``output_len`` bp.

    For ``bpnet``: ``output_len`` + receptive field - 1. The encoder sees the whole window, so its
    minimum is ``output_len`` (its patch divisibility is checked by the encoder itself).
    """
    if model_cfg.type == "bpnet":
        from seq2reads.models.bpnet import bpnet_min_input_len

        return bpnet_min_input_len(output_len, model_cfg.layers, model_cfg.conv_kernel,
                                   model_cfg.dilated_kernel, model_cfg.profile_kernel)
    return int(output_len)


def check_window(model_cfg, input_len: int, output_len: int) -> None:
    """Raise :class:`UserError` naming the minimum when ``input_len`` is too short for the model."""
    if model_cfg.type == "bpnet" and not model_cfg.count_box and model_cfg.count_scales > int(output_len).bit_length():
        raise UserError(
            f"model.count_scales={model_cfg.count_scales} halves window.output={output_len} bp below 1 bp: "
            f"set model.count_scales <= {int(output_len).bit_length()}."
        )
    need = min_input_len(model_cfg, output_len)
    if input_len < need:
        hint = " or use fewer model.layers / smaller kernels" if model_cfg.type == "bpnet" else ""
        raise UserError(
            f"window.input ({input_len} bp) is too short for this {model_cfg.type} model: it needs at "
            f"least {need} bp to predict window.output={output_len} bp; set window.input >= {need}{hint} "
            "(and re-run seq2reads prepare)."
        )

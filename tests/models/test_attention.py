"""The CNN's patch attention (models/attention.py) and its place in BPNet."""

from __future__ import annotations

import pytest
import torch

from seq2reads.config import BPNetModel
from seq2reads.models.attention import PatchAttention, uses_attention
from seq2reads.models.bpnet import BPNet


def test_patch_attention_starts_as_the_identity_and_keeps_shape():
    torch.manual_seed(0)
    m = PatchAttention(16, layers=2, heads=2, patch=8)
    h = torch.randn(3, 16, 61)  # 61 is not a multiple of the patch: padded, then cropped
    torch.testing.assert_close(m(h), h)
    torch.nn.init.normal_(m.patch_out.weight, std=0.1)
    y = m(h)
    assert y.shape == h.shape and not torch.allclose(y, h)
    with pytest.raises(ValueError, match="even width"):
        PatchAttention(6, heads=2)


def _bpnet(attention_layers: int) -> BPNet:
    torch.manual_seed(0)
    m = BPNet(n_cell_types=2, output_len=64, filters=8, layers=2, profile_kernel=9,
              attention_layers=attention_layers, attention_heads=2)
    if m.attention is not None:
        torch.nn.init.normal_(m.attention.patch_out.weight, std=0.1)
    return m.eval()


def _far_change(m: BPNet) -> torch.Tensor:
    """How much the first output position's logits move when a base at the far end of the input changes."""
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (1, m.min_input_len)), 4).float().transpose(1, 2)
    y = x.clone()
    y[0, :, -1] = torch.roll(y[0, :, -1], 1)
    with torch.no_grad():
        return (m(x)[0][..., 0] - m(y)[0][..., 0]).abs().max()


def test_bpnet_with_attention_sees_the_whole_window():
    """Without attention an output sees only its receptive field; with it, every input of the kept span."""
    plain, attends = _bpnet(0), _bpnet(1)
    assert plain.min_input_len == attends.min_input_len
    assert _far_change(plain) == 0 and _far_change(attends) > 0
    assert not uses_attention(plain) and uses_attention(attends)
    assert attends.layer_names()[-1] == "attention" and "attention" not in plain.layer_names()
    x = torch.rand(2, 4, attends.min_input_len + 10)  # longer inputs are centre-cropped first
    prof, lc = attends(x)
    assert prof.shape == (2, 2, 2, 64) and lc.shape == (2, 2)
    assert attends.embed(x, "attention").shape == (2, 8, 64 + 9 - 1)


def test_config_picks_heads_of_even_width():
    assert BPNetModel().attention_layers == 0 and BPNetModel().attention_heads is None  # off by default
    on = {"attention_layers": 1}
    assert BPNetModel(**on).attention_heads == 4
    assert BPNetModel(filters=4, **on).attention_heads == 2 and BPNetModel(filters=6, **on).attention_heads == 1
    assert BPNetModel(filters=5).attention_heads is None

"""Reverse-complement averaging (test-time augmentation) of a model's predictions."""

from __future__ import annotations

import torch

from seq2reads.models.bpnet import BPNet
from seq2reads.models.revcomp import RevCompAverage, revcomp_onehot


def _model_and_input(seed: int = 0):
    torch.manual_seed(seed)
    model = BPNet(n_cell_types=2, output_len=24, filters=8, layers=2, conv_kernel=5, profile_kernel=7).eval()
    x = torch.nn.functional.one_hot(torch.randint(0, 4, (3, model.min_input_len)), 4).permute(0, 2, 1).float()
    return model, x


def test_revcomp_onehot_complements_and_reverses():
    x = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 3, 3]]), 4).permute(0, 2, 1).float()  # ACGTT
    got = revcomp_onehot(x).argmax(1)
    assert got.tolist() == [[0, 0, 1, 2, 3]]  # AACGT


def test_average_of_forward_and_flipped_reverse_complement():
    model, x = _model_and_input()
    with torch.no_grad():
        lf, cf = model(x)
        lr, cr = model(revcomp_onehot(x))
        la, ca = RevCompAverage(model)(x)
    # the reverse complement's plus strand is the forward minus strand, read backwards
    torch.testing.assert_close(la, 0.5 * (lf + lr[:, :, [1, 0], :].flip(-1)))
    torch.testing.assert_close(ca, 0.5 * (cf + cr))
    assert not torch.allclose(lf, la)  # an untrained model is not strand-symmetric: averaging changes it


def test_averaged_model_is_strand_symmetric():
    model, x = _model_and_input(1)
    wrapped = RevCompAverage(model)
    with torch.no_grad():
        la, ca = wrapped(x)
        lb, cb = wrapped(revcomp_onehot(x))
    torch.testing.assert_close(lb, la.flip(-1).flip(-2))
    torch.testing.assert_close(cb, ca)
    assert wrapped.output_len == model.output_len and wrapped.min_input_len == model.min_input_len

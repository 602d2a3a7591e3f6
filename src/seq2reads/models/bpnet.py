"""The BPNet-style dilated residual CNN (SPEC.md, "Models": ``bpnet``).

Architecture (Avsec et al. 2021, as in bpnet-lite / ChromBPNet), multi-cell-type from one trunk:

- ``conv0``: a wide convolution (``conv_kernel``) of the one-hot DNA, then ReLU;
- ``dil1`` .. ``dilK``: ``layers`` residual blocks ``h + ReLU(conv_d(h))`` with dilation
  ``d = 2**i`` (doubling), kernel ``dilated_kernel``;
- patch attention (``attention_layers`` blocks; 0 in the config's and this class's defaults,
  which is BPNet's trunk): the last trunk layer is cut into ``attention_patch``-bp tokens
  (8), pre-norm transformer blocks with RoPE run over them and their output is added back to every
  base (:class:`~seq2reads.models.attention.PatchAttention`, identity at initialisation);
- profile head: a wide convolution (``profile_kernel``) to ``2 C`` channels, i.e. per cell type one
  logit track per strand; the profile of cell type ``c`` is a single softmax over both strands;
- count head: the trunk features averaged over the output window, batch-normalised
  (``count_norm``, on by default), then a linear map to ``C`` log counts (``log(1 + total
  count)`` of the output window, both strands). Three optional additions, all on in the config's
  defaults and off in this class's (which is then BPNet's head): ``count_scales = k`` also
  averages over the centred half, quarter, ... of the output window (``k`` nested windows),
  ``count_box = B`` replaces those by centred windows growing by ``B`` bp on each side
  (``±B, ±2B, ...``, then the whole window), and ``count_stem = S`` adds ``S`` features of the
  count head's own convolution of the sequence (width ``conv_kernel``, ReLU), pooled the same way.

Why the count stem and scales (not in BPNet): the trunk is translation-equivariant, so its
window average cannot tell a motif at the promoter from one 200 bp away, and its filters are
shaped by the much larger profile gradients. On simulated data (version 2, 3,000 regions, 32
filters, 6 layers, 30 epochs; ``seq2reads train`` + ``evaluate`` on the accuracy benchmark's
peaks without background windows) the plain head reached test count Pearson 0.37 (64 filters:
0.39), and regressing its predictions on the true site counts showed it had learned NRF1, SP1,
ELK1 and CEBPB only, with the same effect in every cell type: none of the cell-type-specific TFs
(effect +1.2 per site) and not the repressor. Centred windows alone (4 scales; with background
windows): 0.37; the stem alone: 0.34; both (stem 64, 4 scales): 0.55 (stem 128: 0.56; 6 scales:
0.56; 60 epochs: 0.59), with each specific TF learned in its own cell type only (e.g. CEBPB +0.87
per site in myeloid, -0.01 elsewhere) and REST negative. A motif's effect on the total depends on
where it sits (promoters act near the TSS), which the nested windows let a linear head weight,
and the stem's filters learn from the count loss alone. ``benchmarks/accuracy.py`` (with its
background windows, stem 64, 5 scales): 0.353 -> 0.485; with 10,000 regions 0.417 -> 0.715
(bpnet-lite: 0.340, 0.499).

The stem's filters see only the count loss, one number per window and cell type, and at the
trunk's learning rate they were still far from fitting the training counts when the profile had
converged (train count Pearson ~0.6): the count head's parameters therefore learn at
``model.count_lr_scale`` x the base rate (default 10; :func:`seq2reads.training.tasks.param_groups`).
Same benchmark data, 30 epochs, evaluated with reverse-complement averaging: test count Pearson
0.496 (scale 1, stem 64) -> 0.597 (scale 10) -> 0.641 (scale 10, stem 128, the default; stem 256:
0.594; scale 10 with 60 epochs: 0.639), profile Pearson 0.757 -> 0.761 / 0.767.

Why windows growing by a fixed step (``count_box``, default 32 bp) rather than halving: the
simulator's motifs act only within ±90 bp of the region centre, and matches further out are
inert; a linear oracle counting exact PWM matches within ±90 bp reaches test count Pearson 0.93,
within ±150 bp 0.82, within ±256 bp 0.72 (``benchmarks/count_oracle.py``). The nested windows put
their steps at ±128 and ±64 bp, so a linear head cannot weight a site at 80 bp like one at 40 bp
and unlike one at 120 bp. Same benchmark data and settings, 30 epochs, two seeds (0, 1), test
count Pearson with reverse-complement averaging: nested windows 0.633 / 0.603, boxes every 32 bp
0.671 / 0.642 (every 16 bp: 0.642, seed 0 only: more features than 1,800 training regions
support); profile Pearson unchanged (0.764 / 0.760 -> 0.762 / 0.757). Windows fitted to the
simulator's zone (±96 and ±112 bp added to the nested ones) gave no more (0.667), so the step is
a generic prior on distance from the centre, not a tuned zone. Regressing the test predictions on
the true site counts shows what is still missing: about half of the predictions' variance is
shared by the cell types and explained by no site count (the stem's filters fire on sequences
that are not sites); averaging the predictions of five such runs (0.54 to 0.64 each, without
reverse-complement averaging) reached only 0.66, so most of that error is shared by the runs.
The training task weighs background windows' count loss by ``model.background_count_weight``
(default 0.3; :mod:`seq2reads.training.tasks`): with full weight their low totals drew the stem
towards telling peaks from background; ``benchmarks/accuracy.py`` test count Pearson 0.650 ->
0.720 (2026-12-03).

Why the patch attention (not in BPNet): a TSS sits where a TATA box and an initiator say, but
chance TATA/initiator-like matches in the window compete with the real ones, and a convolution
sees only its receptive field around each base. What tells the real TSS apart is the window's
layout (the divergent partner, the TF sites around the region's centre): attention over 8-bp tokens
compares every candidate with the rest of the window at little cost (128 tokens for a 1 kb span).
``benchmarks/accuracy.py`` data (3,000 regions, 1,024 -> 512 bp, 32 filters, 6 layers, 30 epochs,
seed 0, 1 thread, RC-averaged test peaks): profile Pearson 0.769 -> 0.820 (0.824 in a first,
patched-in run), JSD 0.646 -> 0.574, count Pearson 0.728 -> 0.754, validation profile NLL 423
-> 318; the test strands whose predicted profile maximum lies > 20 bp from the true TSS fell from
20.8 % to 10.0 % (within 2 bp: 76 % -> 86 %). Two blocks: 0.818 / 0.575 / 0.722, no better;
4-bp tokens 0.819; with the one block, 64 filters 0.828, batch 32 0.824, 60 epochs 0.824, lr
0.001 with batch 32 0.822, 64 filters with batch 32 0.831 (count 0.707). ``benchmarks/accuracy.py``
itself (2 threads, 2026-12-03): profile / JSD / count 0.762 / 0.652 / 0.720 -> 0.819 / 0.576 / 0.750.
Attention at base resolution (no patches; stopped after 12 epochs) learned no faster per epoch
(validation profile NLL 361 against 347 at epoch 11) at 3.5x the time per epoch. Every
output then depends on the whole kept input span (``min_input_len``), not only its receptive
field; DeepLIFT has no rule for attention, so ``interpret.method: auto`` uses integrated
gradients for such a model (:func:`seq2reads.models.attention.uses_attention`). With one shuffled
baseline those recovered 6 of 9 planted motifs in ``benchmarks/motif_recovery.py``; averaged
over 4 baselines (``interpret.ig_shuffles``) 9 of 9, as DeepLIFT on the plain trunk, at ~9x
DeepLIFT's time. The block is off by default (SPEC.md asks DeepLIFT for the CNN).

Why the normalisation (not in bpnet-lite): the window-averaged features vary little from window
to window next to their common level, and the trunk's shared parameters are driven by the much
larger profile gradients, so without it the count head learns slowly. Simulated data with
10,000 regions (1,000 steps, our loss): test count Pearson 0.44 with it against 0.30 without
(max+mean pooling: 0.37; a 10x count-head learning rate: 0.34); ``benchmarks/accuracy.py`` on the
default 3,000 regions (simulator version 1), 30 epochs: 0.438 against 0.313. In eval mode it is a
fixed affine map (running statistics), so attributions and ``tangermeme`` see a plain linear layer.

Speed: every convolution is *valid* (no padding), so each layer computes only the span that the
output still needs (its output length plus the receptive field of the layers after it), and an
input longer than :meth:`BPNet.min_input_len` is centre-cropped to that span before anything is
computed ("crop early"). bpnet-lite pads every layer to the full input length and crops at the end;
the centre ``output_len`` positions are the same function of the input either way (padding only
ever reaches positions outside the receptive field of the kept outputs), we just skip the work.
The profile head is computed as a matrix product plus a strided shifted sum rather than a
convolution, because oneDNN's backward pass for a 64 -> 2C channel, width-75 convolution is about
7x slower than its forward (see :meth:`BPNet._profile`); ``benchmarks/train_step.py`` measures it.

Non-linearities are separate ``nn.ReLU`` modules (one per use) so that DeepLIFT/DeepSHAP
implementations that hook modules (tangermeme, captum) see every one of them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seq2reads.models.attention import PatchAttention
from seq2reads.models.heads import box_halves, box_means, check_scales, nested_means, pooled_batch_norm


class BPNet(nn.Module):
    """Dilated residual CNN mapping one-hot DNA to stranded profiles and total counts per cell type.

    Parameters
    ----------
    n_cell_types : int
        C, the number of cell types (config ``samples``) predicted from the shared trunk.
    output_len : int
        L_out, positions of the predicted profile (centred in the input window).
    filters : int
        Channels of every trunk layer.
    layers : int
        Number of dilated residual layers; layer ``i`` (1-based) has dilation ``2**i``.
    conv_kernel, dilated_kernel, profile_kernel : int
        Kernel widths of the first conv, the dilated convs and the profile head.
    count_norm : bool
        Batch-normalise the pooled features before the count head (see the module docstring).
    count_scales : int
        Nested windows the count head averages over (the output window, its centred half, ...);
        unused when ``count_box`` is set.
    count_stem : int
        Filters of the count head's own convolution of the sequence (0: none).
    count_box : int
        When > 0, the count head averages over centred windows growing by ``count_box`` bp on
        each side (:func:`~seq2reads.models.heads.box_means`) instead of the nested windows.
    attention_layers, attention_heads, attention_patch : int
        Transformer blocks over ``attention_patch``-bp tokens of the trunk's last layer, added back
        residually (:class:`~seq2reads.models.attention.PatchAttention`; 0 layers: none, BPNet).
    channels_last : bool
        Run the convolutions as (N, C, 1, L) 2-D convolutions in channels-last memory layout
        (same parameters and results as the Conv1d layers). Off by default: on the AVX2 CPU we
        measured, its slower ReLU backward outweighs its faster convolutions.

    Examples
    --------
    >>> m = BPNet(n_cell_types=3, output_len=100, filters=8, layers=2)
    >>> x = torch.zeros(2, 4, m.min_input_len)
    >>> [t.shape for t in m(x)]
    [torch.Size([2, 3, 2, 100]), torch.Size([2, 3])]
    """

    def __init__(
        self,
        n_cell_types: int,
        output_len: int,
        filters: int = 64,
        layers: int = 8,
        conv_kernel: int = 21,
        dilated_kernel: int = 3,
        profile_kernel: int = 75,
        count_norm: bool = True,
        count_scales: int = 1,
        count_stem: int = 0,
        count_box: int = 0,
        attention_layers: int = 0,
        attention_heads: int = 4,
        attention_patch: int = 8,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.n_cell_types = int(n_cell_types)
        self.output_len = int(output_len)
        self.filters = int(filters)
        self.n_layers = int(layers)
        self.conv_kernel = int(conv_kernel)
        self.dilated_kernel = int(dilated_kernel)
        self.profile_kernel = int(profile_kernel)
        self.channels_last = bool(channels_last)

        self.conv0 = nn.Conv1d(4, filters, conv_kernel)
        self.relu0 = nn.ReLU()
        self.dil = nn.ModuleList(
            nn.Conv1d(filters, filters, dilated_kernel, dilation=2**i) for i in range(1, layers + 1)
        )
        self.relus = nn.ModuleList(nn.ReLU() for _ in range(layers))
        self.attention_layers, self.attention_heads = int(attention_layers), int(attention_heads)
        self.attention_patch = int(attention_patch)
        self.attention = (
            PatchAttention(filters, self.attention_layers, self.attention_heads, self.attention_patch)
            if self.attention_layers else None
        )
        self.profile_head = nn.Conv1d(filters, 2 * n_cell_types, profile_kernel)
        self.count_scales = int(count_scales)
        self.count_box = int(count_box)
        if self.count_box:
            n_windows = len(box_halves(output_len, self.count_box))
        else:
            check_scales(self.count_scales, output_len)
            n_windows = self.count_scales
        self.count_stem = int(count_stem)
        if self.count_stem:
            # the count head's own motif scanner (see the module docstring)
            self.count_conv = nn.Conv1d(4, self.count_stem, conv_kernel)
            self.count_relu = nn.ReLU()
        n_pooled = (filters + self.count_stem) * n_windows
        self.count_norm = nn.BatchNorm1d(n_pooled) if count_norm else None
        self.count_head = nn.Linear(n_pooled, n_cell_types)

    # -- geometry ------------------------------------------------------------------------------
    def _shrinks(self) -> list[int]:
        """Positions lost by each valid convolution: conv0, dil1..dilK, profile head."""
        k = self.dilated_kernel - 1
        return [self.conv_kernel - 1, *(k * 2**i for i in range(1, self.n_layers + 1)), self.profile_kernel - 1]

    @property
    def receptive_field(self) -> int:
        """Input positions that one output position depends on."""
        return sum(self._shrinks()) + 1

    @property
    def min_input_len(self) -> int:
        """Shortest input (bp) that yields ``output_len`` outputs: ``output_len + receptive_field - 1``."""
        return self.output_len + self.receptive_field - 1

    def layer_names(self) -> list[str]:
        """Names accepted by :meth:`embed`: ``conv0``, ``dil1`` .. ``dilK`` (and ``attention``
        with ``attention_layers``)."""
        return ["conv0", *(f"dil{i}" for i in range(1, self.n_layers + 1)), *(["attention"] * bool(self.attention))]

    # -- forward -------------------------------------------------------------------------------
    def _crop_input(self, X: torch.Tensor) -> torch.Tensor:
        """Centre-crop (N, 4, L_in) to the ``min_input_len`` span whose outputs are the centre L_out."""
        L_in = X.shape[-1]
        need = self.min_input_len
        if L_in < need:
            raise ValueError(
                f"input length {L_in} is shorter than this model needs ({need} bp for {self.output_len} outputs)"
            )
        # Output window starts at (L_in - L_out) // 2 (same rule as loader.center_crop); the kept
        # input span starts that far minus the left half of the receptive field.
        left = sum(s // 2 for s in self._shrinks())
        start = (L_in - self.output_len) // 2 - left
        return X[..., start : start + need]

    @staticmethod
    def _conv(conv: nn.Conv1d, h: torch.Tensor) -> torch.Tensor:
        """Apply a Conv1d to (N, C, L) or, in the channels-last layout, to (N, C, 1, L)."""
        if h.ndim == 3:
            return conv(h)
        return F.conv2d(h, conv.weight.unsqueeze(2), conv.bias, dilation=(1, conv.dilation[0]))

    def _profile(self, h: torch.Tensor) -> torch.Tensor:
        """The profile head's valid convolution, as one GEMM and a shifted sum: (N, 2C, L_out).

        oneDNN's convolution backward is very slow for this shape (64 -> 2C channels, kernel 75):
        about 7x its forward on CPU. Written as ``Z = W (2C*K, F) @ h (N, F, L)`` followed by
        ``y[n, o, t] = sum_k Z[n, o, k, t + k]`` (a strided view, no copies), forward and backward
        are plain matrix products. Same numbers as ``profile_head(h)`` up to float rounding.
        """
        if h.ndim == 4:
            h = h.squeeze(2)
        w, b = self.profile_head.weight, self.profile_head.bias
        O, Fi, K = w.shape
        L_out = h.shape[-1] - K + 1
        Z = torch.matmul(w.permute(0, 2, 1).reshape(O * K, Fi), h).contiguous()  # (N, O*K, L)
        sN, sR, sL = Z.stride()
        y = Z.as_strided((Z.shape[0], O, K, L_out), (sN, K * sR, sR + sL, sL)).sum(dim=2)
        return y + b[:, None] if b is not None else y

    def _trunk(self, X: torch.Tensor, stop: str | None = None) -> torch.Tensor:
        x = self._crop_input(X)
        if self.channels_last:
            # (N, C, 1, L) 2-D convolutions in NHWC ("channels last") memory layout: oneDNN's
            # preferred layout on some CPUs (faster convolutions, slower element-wise backward).
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        h = self.relu0(self._conv(self.conv0, x))
        if stop == "conv0":
            return h
        for i, (conv, relu) in enumerate(zip(self.dil, self.relus), start=1):
            y = relu(self._conv(conv, h))
            s = (h.shape[-1] - y.shape[-1]) // 2
            h = h[..., s : s + y.shape[-1]] + y
            if stop == f"dil{i}":
                return h
        if self.attention is not None:
            # attention over the whole kept span: every output sees every input of min_input_len
            h = self.attention(h.squeeze(2) if h.ndim == 4 else h)
        return h

    def forward(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict profile logits and log total counts.

        Parameters
        ----------
        X : Tensor, float (N, 4, L_in)
            One-hot DNA (A, C, G, T; N all-zero), ``L_in >= min_input_len``; longer inputs are
            centre-cropped first.

        Returns
        -------
        profile_logits : Tensor (N, C, 2, L_out)
            Unnormalised log-probabilities; per cell type a softmax over both strands jointly.
        log_counts : Tensor (N, C)
            Predicted ``log(1 + total count)`` of the output window (both strands).
        """
        h = self._trunk(X)  # (N, F, L_out + profile_kernel - 1), or (N, F, 1, ...) channels-last
        N = h.shape[0]
        profile = self._profile(h).reshape(N, self.n_cell_types, 2, self.output_len)
        s = (self.profile_kernel - 1) // 2
        pooled = self._pool(h[..., s : s + self.output_len])
        if self.count_stem:
            pooled = torch.cat([pooled, self._pool(self._stem(X))], dim=1)
        if self.count_norm is not None:
            pooled = pooled_batch_norm(pooled, self.count_norm)
        return profile, self.count_head(pooled)

    def _stem(self, X: torch.Tensor) -> torch.Tensor:
        """The count stem's ReLU features over the output window: (N, count_stem, L_out)."""
        need = self.output_len + self.conv_kernel - 1
        a = (X.shape[-1] - need) // 2  # centred like the output window (loader.center_crop's rule)
        return self.count_relu(self.count_conv(X[..., a : a + need]))

    def _pool(self, h: torch.Tensor) -> torch.Tensor:
        """Count-head features (N, F * windows) of ``h`` (N, F, L_out): :func:`box_means` when
        ``count_box`` is set, else :func:`nested_means` over ``count_scales`` windows."""
        h = h.squeeze(2) if h.ndim == 4 else h
        return box_means(h, self.count_box) if self.count_box else nested_means(h, self.count_scales)

    def embed(self, X: torch.Tensor, layer: str) -> torch.Tensor:
        """Per-position embeddings of a named layer (after its ReLU / residual add).

        Parameters
        ----------
        X : Tensor (N, 4, L_in)
            One-hot DNA, as for :meth:`forward`.
        layer : str
            One of :meth:`layer_names`.

        Returns
        -------
        Tensor (N, filters, L')
            ``L'`` is the valid span of that layer, centred on the window (it shrinks with depth
            down to ``output_len + profile_kernel - 1`` after the last layer).
        """
        if layer not in self.layer_names():
            raise ValueError(f"unknown layer '{layer}'; choose one of {', '.join(self.layer_names())}")
        h = self._trunk(X, stop=layer)
        return h.squeeze(2).contiguous() if h.ndim == 4 else h

    def config_dict(self) -> dict:
        """Constructor arguments (what :func:`seq2reads.models.io.save_model` records)."""
        return {
            "n_cell_types": self.n_cell_types,
            "output_len": self.output_len,
            "filters": self.filters,
            "layers": self.n_layers,
            "conv_kernel": self.conv_kernel,
            "dilated_kernel": self.dilated_kernel,
            "profile_kernel": self.profile_kernel,
            "attention_layers": self.attention_layers,
            "attention_heads": self.attention_heads,
            "attention_patch": self.attention_patch,
        }


def bpnet_min_input_len(output_len: int, layers: int, conv_kernel: int, dilated_kernel: int,
                        profile_kernel: int) -> int:
    """Shortest input window (bp) for a BPNet with these settings to predict ``output_len`` bp."""
    k = dilated_kernel - 1
    return output_len + (conv_kernel - 1) + sum(k * 2**i for i in range(1, layers + 1)) + (profile_kernel - 1)

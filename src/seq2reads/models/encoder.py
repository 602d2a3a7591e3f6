"""The multi-modal masked transformer encoder: sequence + stranded reads + cell type.

Architecture
------------
Inputs are summed into one residual stream of width ``D = d_model``:

- **sequence** ``(N, 4, L)`` one-hot: one ``Conv1d(4, D, k, padding="same")`` per kernel width in
  ``seq_kernels``, each followed by GELU, summed (the nonlinearity keeps the widths from collapsing
  into one linear filter). Masked positions are zeroed *before* the convolutions, so no output
  ever sees a masked base, and a learned mask vector is added there. Then ``K = seq_dilated``
  (default 6; 0 = none) residual blocks ``x + GELU(Conv1d(D, D, 3, dilation=2**i, padding="same")(x))``,
  ``i = 1..K``, widen what each position sees of the sequence (as BPNet's trunk does; receptive
  field +2 * (2 + 4 + ... + 2**K) bp) before the reads are added and the stream is patched. Without
  them the transformer has to assemble base-resolution sequence context from patch tokens, and
  the S2R profile barely beat the average profile (``benchmarks/encoder.py``, simulator-v1 data:
  r 0.31 vs 0.80).
- **reads** ``(N, 2, L)`` per-base counts (plus, minus), normalised (``read_norm``):
  ``log1p`` — ``log(1 + count)`` per position (default; no information crosses positions), or
  ``sum`` — counts divided by the window's total over *unmasked* positions of both strands, times
  ``L`` (a flat profile reads 0.5 per strand and position), so only the shape is given. Masked
  positions are zeroed first; then ``Conv1d(2, D, 9, padding="same")`` and a learned mask vector
  at masked positions.
- **patching**: with ``patch = p > 1`` the base-resolution stream ``(N, D, L)`` is cut into
  ``T = L / p`` tokens, each a linear map of its ``p * D`` values (``L % p != 0`` is a
  :class:`UserError`). ``p = 1`` keeps base resolution.
- **cell type** ``(N, C)`` one-hot (float, so integrated gradients can differentiate w.r.t. it):
  ``Linear(C, D)`` broadcast (added) to every token — chosen over a CLS token so every
  per-position embedding carries the cell type (what the SAE reads) and RoPE sees only positions.
  A masked cell type is replaced by a learned mask vector.

Then ``depth`` pre-norm transformer blocks (multi-head self-attention with rotary position
embeddings through ``F.scaled_dot_product_attention``; GELU MLP of width ``mlp_ratio * D``), a final
LayerNorm and the heads (:mod:`seq2reads.models.heads`): read profile logits ``(N, 2, L)`` and
sequence logits ``(N, 4, L)`` un-patched to base resolution, ``log(1 + total count)`` of the central
output window from the mean over the tokens that cover it (``count_pool: output``; ``window``: all
tokens) and cell-type logits from the mean over all tokens. The count head also averages the
centred half, quarter, ... of its tokens (``count_scales``) and adds a term from a convolution of
the sequence of its own (``count_stem``: ReLU features over the output window pooled the same way,
batch-normalised, a linear map to one value per cell type, taken at the given cell type; 0 where it
is masked), the CNN's count-head additions (see :mod:`seq2reads.models.bpnet`), and like the CNN's
its parameters learn at ``count_lr_scale`` x the base rate. All three are off in this class's
defaults; the config turns the stem (128 filters) and the rate (10) on and leaves the nested
windows off. Measured with ``benchmarks/encoder.py accuracy`` (simulator-v2 data, d_model 64 x
2 blocks, patch 8, 40 epochs): S2R count Pearson 0.29-0.33 without them (four runs), 0.287 with
4 scales and a 64-filter stem at the base rate and without the normalisation, 0.417 with the
128-filter stem at rate 10 (profile 0.862), 0.473 with 5 scales as well (profile 0.865), 0.318
with 5 scales alone. But with the 5 nested windows, with or without the stem, no SAE latent of
the residual stream tracks GATA1::TAL1 any more (``benchmarks/sae.py --part targets``: best
erythroid latent's top windows 0.46 GATA1-bearing, below the 0.5 the target asks, two runs); with
the stem alone 0.56 (without the stem 0.56-0.58): the encoder exists for those latents, so the
nested windows stay off. A training example carries one cell type's reads, so the count loss alone
gives the stem, a function of the sequence only, one total per window per epoch where the CNN's
count head gets all of them; ``count_stem_all_cells``
(:meth:`seq2reads.training.encoder_task.MaskedEncoderTask.stem_all_cells_loss`, using
:meth:`MaskedEncoder.stem_log_counts`) adds the stem's own count loss against every cell type's
total of each window. Same benchmark (2026-12-03, 1 thread): S2R count Pearson 0.417 -> 0.525 at
seed 0 (profile 0.862 -> 0.870) and 0.388 -> 0.451 at seed 1 (profile 0.849 both), but the SAE on
the seed-0 run's residual stream found no CEBPB latent (best latent's top windows 0.44
CEBPB-bearing, 0.52 before; GATA1::TAL1 0.50, 0.56 before): with the stem fitting every cell
type's total, less of the cell-type signal may go through the residual stream (on the seed-1 run
the SAE targets passed: GATA1::TAL1 0.60, HNF4A 0.84, CEBPB 0.56). The config therefore leaves
it off; turn it on when S2R counts matter more than the residual stream's cell-type latents.
Pooling the stem over the CNN's windows growing by 32 bp (``count_box``; tried, not kept) added
little (seed 0, 2026-12-03): S2R count Pearson 0.450 alone (profile 0.855), 0.540 with
``count_stem_all_cells`` (profile 0.868; 0.525 without the windows), and on that run the SAE
found neither a GATA1::TAL1 nor a CEBPB latent (best latents' top windows 0.22 and 0.44 bearing
the motif).

Modes
-----
- :meth:`MaskedEncoder.forward` ``(X) -> (profile_logits (N, C, 2, L_out), log_counts (N, C))`` is
  **S2R mode**: reads fully masked, sequence and cell type given, run once per cell type (the
  batch is repeated C times). This is the contract every model follows, so evaluation,
  prediction and tangermeme work unchanged.
- :meth:`MaskedEncoder.encode` is the full entry point with reads, cell type and masks.
- :meth:`MaskedEncoder.embed` / :meth:`MaskedEncoder.layer_names` give per-token embeddings.

Examples
--------
>>> model = MaskedEncoder(n_cell_types=3, input_len=256, output_len=128, d_model=32, depth=2, heads=2)
>>> prof, lc = model(torch.zeros(2, 4, 256))
>>> prof.shape, lc.shape
(torch.Size([2, 3, 2, 128]), torch.Size([2, 3]))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from seq2reads.errors import UserError
from seq2reads.models.attention import Block, apply_rope, rope_angles  # noqa: F401 (apply_rope: public here too)
from seq2reads.models.heads import PooledHead, TokenHead, nested_means, pooled_batch_norm

READ_KERNEL = 9
COUNT_STEM_KERNEL = 21  # width of the count stem's convolution (as the CNN's conv0)
Intervention = Callable[[torch.Tensor], torch.Tensor]


# -- the model ---------------------------------------------------------------------------------
class MaskedEncoder(nn.Module):
    """Masked multi-modal encoder (see the module docstring).

    Parameters
    ----------
    n_cell_types : int
        C, the number of cell types (config ``samples``, in order).
    input_len, output_len : int
        Window lengths in bp; ``input_len`` must be a multiple of ``patch``.
    d_model, depth, heads, mlp_ratio, dropout, patch, seq_kernels, read_norm, count_norm
        As in the ``EncoderModel`` config section.
    """

    def __init__(
        self,
        n_cell_types: int,
        input_len: int,
        output_len: int,
        d_model: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        patch: int = 1,
        seq_kernels: Sequence[int] = (1, 9, 25),
        read_norm: str = "log1p",
        count_norm: bool = False,
        seq_dilated: int = 6,
        count_pool: str = "output",
        count_scales: int = 1,
        count_stem: int = 0,
    ) -> None:
        super().__init__()
        if input_len % patch:
            raise UserError(
                f"window.input ({input_len}) is not divisible by model.patch ({patch}): "
                f"choose a patch size that divides it or change window.input."
            )
        if output_len > input_len:
            raise UserError(f"window.output ({output_len}) must not exceed window.input ({input_len}).")
        if d_model % heads or (d_model // heads) % 2:
            raise UserError(f"model.d_model ({d_model}) must split into {heads} heads of even width (RoPE).")
        if not seq_kernels:
            raise UserError("model.seq_kernels is empty: give at least one kernel width, e.g. [1, 9, 25].")
        if count_pool not in ("window", "output"):
            raise UserError(f"model.count_pool must be 'window' or 'output', got {count_pool!r}.")
        if read_norm not in ("log1p", "sum"):
            raise UserError(f"model.read_norm must be 'log1p' or 'sum', got {read_norm!r}.")
        self.n_cell_types, self.input_len, self.output_len = n_cell_types, input_len, output_len
        self.d_model, self.depth, self.heads, self.patch = d_model, depth, heads, patch
        self.read_norm = read_norm
        self.seq_convs = nn.ModuleList(nn.Conv1d(4, d_model, k, padding="same") for k in seq_kernels)
        self.seq_dilated = nn.ModuleList(
            nn.Conv1d(d_model, d_model, 3, dilation=2**i, padding="same") for i in range(1, seq_dilated + 1)
        )
        self.read_conv = nn.Conv1d(2, d_model, READ_KERNEL, padding="same")
        self.seq_mask_emb = nn.Parameter(torch.randn(d_model) * 0.02)
        self.read_mask_emb = nn.Parameter(torch.randn(d_model) * 0.02)
        self.patch_proj = nn.Linear(patch * d_model, d_model) if patch > 1 else nn.Identity()
        self.cell_emb = nn.Linear(n_cell_types, d_model)
        self.cell_mask_emb = nn.Parameter(torch.randn(d_model) * 0.02)
        self.blocks = nn.ModuleList(Block(d_model, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(d_model)
        self.read_head = TokenHead(d_model, 2, patch)
        self.seq_head = TokenHead(d_model, 4, patch)
        t0, t1 = self.output_tokens() if count_pool == "output" else (0, self.n_tokens)
        # As many of the nested windows as there are tokens (positions, for the stem) to halve:
        # the config's default of 5 must also work for a window of a few tokens.
        token_scales = min(int(count_scales), (t1 - t0).bit_length())
        self.count_head = PooledHead(d_model, 1, norm=count_norm,
                                     tokens=(t0, t1) if count_pool == "output" else None, scales=token_scales)
        self.count_stem = int(count_stem)
        self.count_scales = min(int(count_scales), int(output_len).bit_length())  # the stem's windows
        if self.count_stem:
            # the count's own motif scanner, one term per cell type (see the module docstring)
            self.count_conv = nn.Conv1d(4, self.count_stem, COUNT_STEM_KERNEL)
            self.count_relu = nn.ReLU()
            self.count_stem_norm = nn.BatchNorm1d(self.count_stem * self.count_scales)
            self.count_stem_head = nn.Linear(self.count_stem * self.count_scales, n_cell_types)
        self.cell_head = PooledHead(d_model, n_cell_types)

    @classmethod
    def from_config(cls, model_cfg, n_cell_types: int, input_len: int, output_len: int) -> "MaskedEncoder":
        """Build from an ``EncoderModel`` config section (what the registry calls)."""
        return cls(
            n_cell_types, input_len, output_len, d_model=model_cfg.d_model, depth=model_cfg.depth,
            heads=model_cfg.heads, mlp_ratio=model_cfg.mlp_ratio, dropout=model_cfg.dropout,
            patch=model_cfg.patch, seq_kernels=tuple(model_cfg.seq_kernels), read_norm=model_cfg.read_norm,
            count_norm=model_cfg.count_norm, seq_dilated=model_cfg.seq_dilated, count_pool=model_cfg.count_pool,
            count_scales=model_cfg.count_scales, count_stem=model_cfg.count_stem,
        )

    # -- naming ---------------------------------------------------------------------------------
    def layer_names(self) -> list[str]:
        """Layers :meth:`embed` can return: ``embed`` (summed input embeddings), ``block0`` ..
        ``block{depth-1}`` (output of each transformer block), ``final`` (after the final norm)."""
        return ["embed", *[f"block{i}" for i in range(self.depth)], "final"]

    def last_shared_layer(self) -> torch.Tensor:
        """Weight of the last layer shared by every head (the last block's MLP output), for balancing."""
        return self.blocks[-1].fc2.weight if self.depth else self.cell_emb.weight

    @property
    def n_tokens(self) -> int:
        return self.input_len // self.patch

    def output_tokens(self) -> tuple[int, int]:
        """Tokens ``[t0, t1)`` that overlap the central ``output_len`` window."""
        start = (self.input_len - self.output_len) // 2
        return start // self.patch, -(-(start + self.output_len) // self.patch)

    # -- inputs ---------------------------------------------------------------------------------
    def normalise_reads(self, reads: torch.Tensor, read_mask: torch.Tensor) -> torch.Tensor:
        """Reads ``(N, 2, L)`` counts → model input, masked positions zeroed (see module doc)."""
        r = reads * (~read_mask).unsqueeze(1).to(reads.dtype)
        if self.read_norm == "log1p":
            return torch.log1p(r.clamp_min(0))
        total = r.flatten(1).sum(1).clamp_min(1.0)
        return r * (r.shape[-1] / total).view(-1, 1, 1)

    def _cell_tensor(self, cell, n: int, device, dtype) -> torch.Tensor:
        """Cell type as float one-hot ``(N, C)`` from an int, an int tensor ``(N,)`` or a float ``(N, C)``."""
        if isinstance(cell, int):
            cell = torch.full((n,), cell, dtype=torch.long, device=device)
        if not torch.is_floating_point(cell):
            if cell.dim() != 1 or len(cell) != n:
                raise ValueError(f"cell indices must have shape ({n},), got {tuple(cell.shape)}")
            if int(cell.min()) < 0 or int(cell.max()) >= self.n_cell_types:
                raise UserError(f"cell type index out of range: the model has {self.n_cell_types} cell types.")
            return F.one_hot(cell.long(), self.n_cell_types).to(dtype)
        if cell.shape != (n, self.n_cell_types):
            raise ValueError(f"one-hot cell must have shape ({n}, {self.n_cell_types}), got {tuple(cell.shape)}")
        return cell

    def embed_inputs(
        self,
        seq: torch.Tensor,
        reads: torch.Tensor | None = None,
        cell=None,
        seq_mask: torch.Tensor | None = None,
        read_mask: torch.Tensor | None = None,
        cell_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The summed input embeddings, ``(N, T, D)`` tokens (layer ``embed``); arguments as :meth:`encode`."""
        n, _, length = seq.shape
        if length != self.input_len:
            raise UserError(f"the model takes {self.input_len} bp windows, got {length}.")
        dev = seq.device
        if seq_mask is None:
            seq_mask = torch.zeros(n, length, dtype=torch.bool, device=dev)
        if reads is None:
            reads = seq.new_zeros(n, 2, length)
            read_mask = torch.ones(n, length, dtype=torch.bool, device=dev)
        elif read_mask is None:
            read_mask = torch.zeros(n, length, dtype=torch.bool, device=dev)
        sm = seq_mask.unsqueeze(1).to(seq.dtype)
        rm = read_mask.unsqueeze(1).to(seq.dtype)
        s = seq * (1 - sm)
        x = sum(F.gelu(conv(s)) for conv in self.seq_convs)
        for conv in self.seq_dilated:
            x = x + F.gelu(conv(x))
        x = x + sm * self.seq_mask_emb[:, None]
        x = x + self.read_conv(self.normalise_reads(reads, read_mask)) + rm * self.read_mask_emb[:, None]
        t = length // self.patch
        x = x.view(n, self.d_model, t, self.patch).permute(0, 2, 3, 1).reshape(n, t, self.patch * self.d_model)
        x = self.patch_proj(x)  # (N, T, D)
        if cell is None:
            c = self.cell_mask_emb.expand(n, -1)
        else:
            c = self.cell_emb(self._cell_tensor(cell, n, dev, x.dtype))
            if cell_mask is not None:
                c = torch.where(cell_mask[:, None], self.cell_mask_emb.to(c.dtype), c)
        return x + c[:, None, :]

    # -- full entry point -----------------------------------------------------------------------
    def encode(
        self,
        seq: torch.Tensor,
        reads: torch.Tensor | None = None,
        cell=None,
        seq_mask: torch.Tensor | None = None,
        read_mask: torch.Tensor | None = None,
        cell_mask: torch.Tensor | None = None,
        intervene: dict[str, Intervention] | None = None,
        stop_at: str | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the encoder on any combination of inputs and masks.

        Parameters
        ----------
        seq : float (N, 4, L)
            One-hot sequence (``L = input_len``).
        reads : float (N, 2, L), optional
            Per-base counts (plus, minus strand), not normalised. ``None``: fully masked (S2R).
        cell : int, int64 (N,) or float (N, C), optional
            Cell type: index or one-hot (float one-hot is differentiable). ``None``: masked.
        seq_mask, read_mask : bool (N, L), optional
            ``True`` = hidden from the model (default: nothing hidden).
        cell_mask : bool (N,), optional
            ``True`` = cell type hidden.
        intervene : dict layer name -> function, optional
            Replace a layer's activations: ``f((N, D, T)) -> (N, D, T)`` (the layout of
            :meth:`embed`) is applied to the output of that layer (e.g. an SAE reconstruction);
            layers as :meth:`layer_names`.
        stop_at : str, optional
            Return right after this layer with only ``hidden`` (used by :meth:`embed`).

        Returns
        -------
        dict
            ``hidden`` (N, T, D) final token states (or the ``stop_at`` layer's);
            ``profile_logits`` (N, 2, L) read-profile logits over the whole input (softmax over both
            strands jointly); ``log_count`` (N,) predicted ``log(1 + total count)`` of the central
            ``output_len`` window; ``seq_logits`` (N, 4, L); ``cell_logits`` (N, C).
        """
        intervene = intervene or {}
        unknown = set(intervene) - set(self.layer_names())
        if stop_at is not None and stop_at not in self.layer_names():
            unknown.add(stop_at)
        if unknown:
            raise UserError(
                f"unknown layer {sorted(unknown)[0]!r}: valid layers are {', '.join(self.layer_names())}."
            )
        def edit(name: str, h: torch.Tensor) -> torch.Tensor:
            return intervene[name](h.transpose(1, 2)).transpose(1, 2) if name in intervene else h

        x = edit("embed", self.embed_inputs(seq, reads, cell, seq_mask, read_mask, cell_mask))
        if stop_at == "embed":
            return {"hidden": x}
        cos, sin = rope_angles(x.shape[1], self.d_model // self.heads, device=x.device)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin)
            name = f"block{i}"
            x = edit(name, x)
            if stop_at == name:
                return {"hidden": x}
        h = edit("final", self.norm(x))
        if stop_at == "final":
            return {"hidden": h}
        log_count = self.count_head(h).squeeze(-1)
        if self.count_stem:
            log_count = log_count + self._stem_log_count(seq, cell, seq_mask, cell_mask)
        return {
            "hidden": h,
            "profile_logits": self.read_head(h),
            "log_count": log_count,
            "seq_logits": self.seq_head(h),
            "cell_logits": self.cell_head(h),
        }

    def _stem_log_count(self, seq: torch.Tensor, cell, seq_mask, cell_mask) -> torch.Tensor:
        """The count stem's term ``(N,)``: per-cell-type linear map of its pooled ReLU features over
        the output window, taken at the given cell type (a float one-hot selects differentiably); 0
        where the cell type is masked or absent."""
        n = seq.shape[0]
        if seq_mask is not None:
            seq = seq * (1 - seq_mask.unsqueeze(1).to(seq.dtype))
        per_cell = self.stem_log_counts(seq)  # (N, C)
        if cell is None:
            return per_cell.new_zeros(n)
        onehot = self._cell_tensor(cell, n, seq.device, per_cell.dtype)
        if cell_mask is not None:
            onehot = onehot * (~cell_mask).unsqueeze(1).to(onehot.dtype)
        return (per_cell * onehot).sum(-1)

    def stem_log_counts(self, seq: torch.Tensor) -> torch.Tensor:
        """The count stem's term for every cell type: (N, 4, input_len) one-hot -> (N, C), in log
        count units (the per-cell-type linear map of its pooled, batch-normalised ReLU features over
        the output window). Requires ``count_stem > 0``."""
        need = self.output_len + COUNT_STEM_KERNEL - 1
        a = (self.input_len - need) // 2
        if a < 0:  # an output window at the input's edge: pad with N (all-zero one-hot)
            seq, a = F.pad(seq, (-a, -a)), 0
        f = self.count_relu(self.count_conv(seq[..., a : a + need]))  # (N, S, L_out)
        pooled = pooled_batch_norm(nested_means(f, self.count_scales), self.count_stem_norm)
        return self.count_stem_head(pooled)

    # -- S2R mode (the common model contract) ---------------------------------------------------
    def _all_cells(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Repeat a batch once per cell type: rows ``n * C + c``; returns (seq, cell indices)."""
        n, c = x.shape[0], self.n_cell_types
        cells = torch.arange(c, device=x.device).repeat(n)
        return x.repeat_interleave(c, dim=0), cells

    def forward(self, X: torch.Tensor, intervene: dict[str, Intervention] | None = None):
        """S2R mode for every cell type.

        Parameters
        ----------
        X : float (N, 4, input_len)
            One-hot sequence.
        intervene : dict, optional
            As in :meth:`encode`.

        Returns
        -------
        profile_logits : float (N, C, 2, output_len)
            Softmax over both strands jointly gives cell type c's profile.
        log_counts : float (N, C)
            Predicted ``log(1 + total count)`` of the output window.
        """
        n = X.shape[0]
        seq, cells = self._all_cells(X)
        out = self.encode(seq, None, cells, intervene=intervene)
        start = (self.input_len - self.output_len) // 2
        prof = out["profile_logits"][..., start : start + self.output_len]
        return prof.reshape(n, self.n_cell_types, 2, self.output_len), out["log_count"].view(n, self.n_cell_types)

    # -- embeddings for the SAE -----------------------------------------------------------------
    def embed(
        self,
        X: torch.Tensor,
        layer: str,
        reads: torch.Tensor | None = None,
        cell=None,
        read_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-token embeddings of a named layer, ``(N', D, T)`` with ``T = input_len / patch``.

        Token ``t`` covers bases ``[t * patch, (t + 1) * patch)`` of the window.

        Parameters
        ----------
        X : float (N, 4, L)
            One-hot sequence.
        layer : str
            One of :meth:`layer_names` (anything else is a :class:`UserError` listing them).
        reads : float (N, 2, L), optional
            Counts given to the model; ``None`` = S2R mode (reads fully masked).
        cell : int, int64 (N,) or float (N, C), optional
            The cell type of every row. ``None`` = **all cell types**: each window is repeated once
            per cell type and the result has ``N' = N * C`` rows, row ``n * C + c`` being window
            ``n`` with cell type ``c`` (the order of :meth:`forward`); with ``reads`` given, row
            ``n * C + c`` gets ``reads[n]``. Otherwise ``N' = N``.
        read_mask : bool (N, L), optional
            Read positions hidden from the model (default none when ``reads`` is given).
        """
        if layer not in self.layer_names():
            raise UserError(f"unknown layer {layer!r}: valid layers are {', '.join(self.layer_names())}.")
        if cell is None:
            c = self.n_cell_types
            X, cell = self._all_cells(X)
            reads = reads.repeat_interleave(c, dim=0) if reads is not None else None
            read_mask = read_mask.repeat_interleave(c, dim=0) if read_mask is not None else None
        h = self.encode(X, reads, cell, read_mask=read_mask, stop_at=layer)["hidden"]
        return h.transpose(1, 2)

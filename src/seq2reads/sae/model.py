"""The sparse autoencoder (SAE): TopK, BatchTopK and ReLU + L1 (SPEC.md, "Sparse autoencoders").

Hand-written on purpose: there is no maintained, dependency-light library for SAEs on arbitrary
activations (the existing ones target language-model residual streams and pull in heavy stacks),
and the recipe is a few dozen lines. It follows Gao et al. 2024 ("Scaling and evaluating sparse
autoencoders") for TopK and Bussmann et al. 2024 for BatchTopK:

- pre-encoder bias: ``b_dec`` is subtracted from the input before encoding and added back after
  decoding;
- the encoder is initialised as the transpose of the decoder;
- decoder rows (one per latent, "columns" in the paper's notation) have unit norm: before each
  optimiser step the gradient component parallel to each row is projected out
  (:meth:`SparseAutoencoder.remove_parallel_grad`), after the step rows are renormalised
  (:meth:`SparseAutoencoder.normalize_decoder`);
- AuxK: latents that have not fired for ``dead_after`` vectors are "dead"; an auxiliary loss
  reconstructs the main reconstruction's residual from the top ``aux_k`` dead latents, which
  gives them gradient and revives them.

Inputs are mean-centred and scaled (see :mod:`seq2reads.sae.activations`) before they get here.

Examples
--------
>>> sae = SparseAutoencoder(d_in=8, n_latents=32, k=4)
>>> out = sae(torch.randn(16, 8))
>>> out.z.shape, int((out.z > 0).sum(1).max()) <= 4
(torch.Size([16, 32]), True)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

KINDS = ("topk", "batchtopk", "relu")
AUX_COEF = 1 / 32  # Gao et al. 2024, section 2.4: alpha = 1/32


@dataclass
class SAEOutput:
    """One forward pass: latents ``z (B, n)``, reconstruction ``x_hat (B, d)`` and losses."""

    z: torch.Tensor
    x_hat: torch.Tensor
    loss: torch.Tensor
    mse: torch.Tensor
    aux: torch.Tensor
    l1: torch.Tensor


class SparseAutoencoder(nn.Module):
    """A one-layer sparse autoencoder ``x -> z = sparse(W_enc (x - b_dec) + b_enc) -> W_dec z + b_dec``.

    Parameters
    ----------
    d_in : int
        Width of the input vectors (the layer's embedding dimension D).
    n_latents : int
        Dictionary size.
    k : int
        Active latents per vector (TopK), or on average per vector (BatchTopK). Ignored by ReLU
        except for sizing ``aux_k``.
    kind : {"topk", "batchtopk", "relu"}
        Sparsity mechanism; "relu" uses an L1 penalty of weight ``l1``.
    l1 : float
        L1 coefficient for ``kind="relu"``.
    aux_k : int or None
        Dead latents used by the AuxK loss (default ``min(n_latents, max(2 k, d_in // 2))``; Gao et
        al. use a power of two near ``d_in / 2``).
    dead_after : int
        A latent that has not fired for this many vectors counts as dead (Gao et al. use 10M tokens;
        the training loop scales it to the data size).
    seed : int
        Seed of the initialisation.
    """

    def __init__(self, d_in: int, n_latents: int, k: int, kind: str = "topk", l1: float = 1e-3,
                 aux_k: int | None = None, dead_after: int = 10_000_000, seed: int = 0) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if not 0 < k <= n_latents:
            raise ValueError(f"k ({k}) must be in 1..n_latents ({n_latents})")
        self.d_in, self.n_latents, self.k, self.kind, self.l1_coef = d_in, n_latents, k, kind, l1
        self.aux_k = int(aux_k if aux_k is not None else min(n_latents, max(2 * k, d_in // 2)))
        self.dead_after = int(dead_after)
        g = torch.Generator().manual_seed(seed)
        w_dec = torch.randn(n_latents, d_in, generator=g)
        w_dec = w_dec / w_dec.norm(dim=1, keepdim=True)
        self.W_dec = nn.Parameter(w_dec)                      # (n, d), unit-norm rows
        self.W_enc = nn.Parameter(w_dec.t().clone())          # (d, n): decoder transpose
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(d_in))          # pre-encoder bias
        # vectors seen since each latent last fired (AuxK dead-latent tracking)
        self.register_buffer("since_fired", torch.zeros(n_latents, dtype=torch.long))
        # BatchTopK inference threshold: running mean of the smallest kept activation per batch
        self.register_buffer("threshold", torch.tensor(-1.0))

    # -- encoding ---------------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder pre-activations ``(B, n)`` of inputs ``x (B, d)`` (after the pre-encoder bias).

        Computed as ``x W_enc - b_dec W_enc + b_enc`` (the same value as ``(x - b_dec) W_enc + b_enc``)
        so that the backward pass needs no ``(B, d)`` gradient for the input: one large matmul less.
        """
        return x @ self.W_enc + (self.b_enc - self.b_dec @ self.W_enc)

    def sparsify(self, pre: torch.Tensor) -> torch.Tensor:
        """Latents ``z (B, n) >= 0`` from pre-activations, by the configured sparsity kind."""
        if self.kind == "relu":
            return torch.relu(pre)
        if self.kind == "topk" or (not self.training and self.threshold < 0):
            vals, idx = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, torch.relu(vals))
        # BatchTopK: during training keep the k * B largest activations across the whole batch;
        # at inference a fixed threshold (estimated during training) makes it per-vector.
        if self.training:
            flat = pre.flatten()
            n_keep = min(self.k * pre.shape[0], flat.numel())
            vals, idx = flat.topk(n_keep)
            z = torch.zeros_like(flat).scatter(0, idx, torch.relu(vals)).view_as(pre)
            with torch.no_grad():
                pos = vals[vals > 0]
                if pos.numel():
                    m = pos.min()
                    self.threshold.copy_(m if self.threshold < 0 else 0.99 * self.threshold + 0.01 * m)
            return z
        return torch.where(pre > self.threshold, pre, torch.zeros_like(pre)).clamp_min(0)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Sparse latents ``(B, n)`` of normalised inputs ``x (B, d)``."""
        return self.sparsify(self.pre_activations(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``(B, d)`` of latents ``z (B, n)``."""
        return z @ self.W_dec + self.b_dec

    # -- training ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> SAEOutput:
        """Encode, decode and compute the losses of a batch ``x (B, d)``.

        ``mse`` is the mean over vectors of the squared error summed over dimensions; ``aux`` is the
        AuxK loss (zero when no latent is dead) normalised by the residual's variance as in Gao et
        al.; ``l1`` the L1 penalty (ReLU kind only). ``loss = mse + aux / 32 + l1``.
        """
        pre = self.pre_activations(x)
        if self.kind == "topk":
            # Sparse decode (Gao et al. use sparse kernels for the same reason): only k latents per
            # vector are non-zero, so gather k decoder rows instead of a dense (B, n) x (n, d) matmul.
            vals, idx = pre.topk(self.k, dim=-1)
            acts = torch.relu(vals)
            z = torch.zeros_like(pre).scatter(-1, idx, acts)
            x_hat = self._sparse_decode(idx, acts) + self.b_dec
        else:
            z = self.sparsify(pre)
            x_hat = self.decode(z)
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        zero = x.new_zeros(())
        aux = zero
        if self.training:
            fired = (z > 0).any(0)
            with torch.no_grad():
                self.since_fired += x.shape[0]
                self.since_fired[fired] = 0
            dead = self.since_fired >= self.dead_after
            n_dead = int(dead.sum())
            if n_dead:
                aux_pre = pre.masked_fill(~dead, float("-inf"))
                vals, idx = aux_pre.topk(min(self.aux_k, n_dead), dim=-1)
                e_hat = self._sparse_decode(idx, torch.relu(vals))
                resid = err.detach()
                denom = (resid - resid.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-8)
                aux = (resid - e_hat).pow(2).sum(-1).mean() / denom
                aux = torch.nan_to_num(aux)
        l1 = self.l1_coef * z.abs().sum(-1).mean() if self.kind == "relu" else zero
        return SAEOutput(z=z, x_hat=x_hat, loss=mse + AUX_COEF * aux + l1, mse=mse, aux=aux, l1=l1)

    def _sparse_decode(self, idx: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """``sum_j acts[:, j] * W_dec[idx[:, j]]`` -> ``(B, d)`` without materialising ``(B, n)``."""
        return nn.functional.embedding_bag(idx, self.W_dec, per_sample_weights=acts, mode="sum")

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the gradient component parallel to each (unit-norm) decoder row."""
        if self.W_dec.grad is not None:
            w = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * w).sum(-1, keepdim=True) * w

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder row to unit norm."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)

    def dead_mask(self) -> torch.Tensor:
        """Boolean ``(n,)``: latents that have not fired for ``dead_after`` vectors."""
        return self.since_fired >= self.dead_after

    # -- files ------------------------------------------------------------------------------
    def hparams(self) -> dict:
        return {"d_in": self.d_in, "n_latents": self.n_latents, "k": self.k, "kind": self.kind,
                "l1": self.l1_coef, "aux_k": self.aux_k, "dead_after": self.dead_after}


def save_sae(sae: SparseAutoencoder, path_dir: str | Path, extra: dict | None = None) -> Path:
    """Write ``sae.safetensors`` + ``sae.json`` (hyper-parameters and ``extra``) atomically; no pickle."""
    from safetensors.torch import save_file

    from seq2reads.atomic import atomic_path, write_text_atomic

    path_dir = Path(path_dir)
    path_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in sae.state_dict().items()}
    with atomic_path(path_dir / "sae.safetensors") as tmp:
        save_file(tensors, str(tmp))
    meta = {"format": "seq2reads-sae", "version": 1, "hparams": sae.hparams(), "extra": extra or {}}
    write_text_atomic(path_dir / "sae.json", json.dumps(meta, indent=2))
    return path_dir


def load_sae(path_dir: str | Path) -> tuple[SparseAutoencoder, dict]:
    """Rebuild an SAE saved by :func:`save_sae`; returns ``(sae in eval mode, extra)``."""
    from safetensors.torch import load_file

    from seq2reads.errors import UserError

    path_dir = Path(path_dir)
    try:
        meta = json.loads((path_dir / "sae.json").read_text())
        if meta.get("format") != "seq2reads-sae":
            raise ValueError("not a seq2reads SAE")
        sae = SparseAutoencoder(**meta["hparams"])
        sae.load_state_dict(load_file(str(path_dir / "sae.safetensors")))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise UserError(f"cannot read the SAE in {path_dir} ({e}); rerun `seq2reads sae RUN`.") from None
    return sae.eval(), meta.get("extra", {})

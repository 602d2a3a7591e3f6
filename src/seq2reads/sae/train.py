"""Streaming SAE training from an activation store, evaluation metrics, and the change in the
model's own loss when a layer's activations are replaced by their SAE reconstruction.

Training reads the store in chunk-sized blocks in a random order, pools a few blocks in a shuffle
buffer and draws batches from it (memory = ``buffer_chunks`` blocks, whatever the store's size).
Vectors of held-out windows (``store.heldout_windows``) are never trained on; FVU and L0 are
reported on them.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from seq2reads.sae.activations import CHUNK, ActivationStore
from seq2reads.sae.model import SparseAutoencoder

DEAD_TOKENS = 10_000_000  # Gao et al. 2024: a latent is dead after 10M tokens without firing


def _window_lookup(store: ActivationStore, rows: np.ndarray) -> np.ndarray:
    """Boolean lookup over dataset rows: True for ``rows``."""
    size = int(store.windows.max()) + 1 if store.windows.size else 1
    lut = np.zeros(max(size, int(rows.max()) + 1 if rows.size else 1), bool)
    lut[rows] = True
    return lut


def iter_training_batches(store: ActivationStore, batch_size: int, rng: np.random.Generator,
                          buffer_chunks: int = 4, chunk: int = CHUNK, train_only: bool = True,
                          ) -> Iterator[np.ndarray]:
    """Shuffled batches ``(batch_size, D)`` float32 (normalised) over one pass of the store.

    Blocks of ``chunk`` vectors are visited in a random order, ``buffer_chunks`` at a time, pooled
    and permuted; the last partial batch is dropped unless it is the only one.
    """
    bounds = store.chunk_bounds(chunk)
    order = rng.permutation(len(bounds))
    lut = _window_lookup(store, store.heldout_windows) if train_only else None
    carry = np.zeros((0, store.d), np.float32)
    emitted = False
    for g in range(0, len(order), buffer_chunks):
        parts = [carry]
        for c in order[g:g + buffer_chunks]:
            s, e = bounds[c]
            blk = store.read(s, e)
            x = blk["x"]
            if lut is not None:
                x = x[~lut[blk["window"]]]
            parts.append(x)
        pool = np.concatenate(parts)
        pool = pool[rng.permutation(len(pool))]
        n_full = (len(pool) // batch_size) * batch_size
        for b in range(0, n_full, batch_size):
            emitted = True
            yield pool[b:b + batch_size]
        carry = pool[n_full:]
    if len(carry) and not emitted:
        yield carry


@dataclass
class TrainResult:
    """A trained SAE and its training history (one row per logged step)."""

    sae: SparseAutoencoder
    history: list[dict] = field(default_factory=list)
    vectors_seen: int = 0
    seconds: float = 0.0

    @property
    def vectors_per_s(self) -> float:
        return self.vectors_seen / max(self.seconds, 1e-9)


def train_sae(store: ActivationStore, latents: int, k: int, kind: str = "topk", l1: float = 1e-3,
              epochs: int = 5, batch_size: int = 4096, lr: float = 1e-3, seed: int = 0,
              device: str = "cpu", progress: bool = True, log_every: int = 50,
              dead_after: int | None = None, chunk: int = CHUNK) -> TrainResult:
    """Train an SAE on the store's (non-held-out) vectors with Adam.

    Parameters
    ----------
    store : ActivationStore
        The activations (normalised on read).
    latents, k, kind, l1 : see :class:`SparseAutoencoder`.
    epochs, batch_size, lr : passes over the store, vectors per step, Adam learning rate.
    dead_after : int or None
        Vectors without firing after which a latent is dead (AuxK). Default: 10M (Gao et al.),
        capped at a quarter of one epoch so that it means something on small stores.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    n_train = store.n_vectors  # upper bound (held-out vectors are a small share)
    if dead_after is None:
        dead_after = int(min(DEAD_TOKENS, max(batch_size, n_train // 4)))
    sae = SparseAutoencoder(store.d, latents, k, kind=kind, l1=l1, dead_after=dead_after, seed=seed).to(device)
    opt = torch.optim.Adam(sae.parameters(), lr=lr)
    n_batches = max(1, -(-n_train // batch_size)) * epochs
    result = TrainResult(sae)
    bar = _progress(n_batches, "SAE training", progress)
    t0 = time.perf_counter()
    step = 0
    sae.train()
    for epoch in range(epochs):
        for xb in iter_training_batches(store, batch_size, rng, chunk=chunk):
            x = torch.from_numpy(xb).to(device)
            out = sae(x)
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            sae.remove_parallel_grad()
            torch.nn.utils.clip_grad_norm_(sae.parameters(), 1.0)
            opt.step()
            sae.normalize_decoder()
            result.vectors_seen += x.shape[0]
            if step % log_every == 0:
                with torch.no_grad():
                    var = (x - x.mean(0)).pow(2).sum(-1).mean().clamp_min(1e-12)
                    result.history.append({
                        "step": step, "epoch": epoch, "loss": float(out.loss), "fvu": float(out.mse / var),
                        "aux": float(out.aux), "l0": float((out.z > 0).sum(-1).float().mean()),
                        "dead_fraction": float(sae.dead_mask().float().mean())})
            step += 1
            bar.update(1)
    bar.close()
    result.seconds = time.perf_counter() - t0
    sae.eval()
    return result


@torch.no_grad()
def evaluate_sae(sae: SparseAutoencoder, store: ActivationStore, batch_size: int = 8192,
                 device: str = "cpu", chunk: int = CHUNK, progress: bool = False) -> dict:
    """One streaming pass over the store: FVU and mean L0 on held-out vectors, dead fraction overall.

    FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 (against the mean of the evaluated vectors).
    ``dead_fraction`` = latents that fire on no vector of the whole store.
    """
    sae.eval()
    lut = _window_lookup(store, store.heldout_windows)
    acc = {s: {"n": 0, "sse": 0.0, "sum": np.zeros(store.d), "sq": 0.0, "l0": 0.0} for s in ("heldout", "train")}
    fired = torch.zeros(sae.n_latents, dtype=torch.long)
    bounds = store.chunk_bounds(chunk)
    for s, e in _iter_progress(bounds, "SAE evaluation", progress):
        blk = store.read(s, e)
        held = lut[blk["window"]]
        for name, sel in (("heldout", held), ("train", ~held)):
            x_np = blk["x"][sel]
            for b in range(0, len(x_np), batch_size):
                x = torch.from_numpy(x_np[b:b + batch_size]).to(device)
                z = sae.encode(x)
                x_hat = sae.decode(z)
                a = acc[name]
                a["n"] += x.shape[0]
                a["sse"] += float((x - x_hat).double().pow(2).sum())
                a["sum"] += x.double().sum(0).cpu().numpy()
                a["sq"] += float(x.double().pow(2).sum())
                a["l0"] += float((z > 0).sum())
                fired += (z > 0).sum(0).cpu()

    def fvu(a):
        if not a["n"]:
            return float("nan")
        tot = a["sq"] - float((a["sum"] ** 2).sum()) / a["n"]
        return a["sse"] / max(tot, 1e-12)

    h, t = acc["heldout"], acc["train"]
    n_all = h["n"] + t["n"]
    return {"fvu": fvu(h), "fvu_train": fvu(t), "mean_l0": h["l0"] / max(h["n"], 1),
            "mean_l0_train": t["l0"] / max(t["n"], 1), "dead_fraction": float((fired == 0).float().mean()),
            "n_heldout": h["n"], "n_train": t["n"], "fire_frequency": (fired.double() / max(n_all, 1)).numpy()}


# -- the model's own loss with the layer replaced ----------------------------------------------
def sae_replacement(sae: SparseAutoencoder, mean: np.ndarray, scale: float):
    """A function ``(N, D, L') -> (N, D, L')`` that replaces embeddings by their SAE reconstruction
    (normalise, encode, decode, de-normalise)."""
    mu = torch.as_tensor(mean, dtype=torch.float32)

    def fn(emb: torch.Tensor) -> torch.Tensor:
        n, d, length = emb.shape
        x = emb.transpose(1, 2).reshape(-1, d).float()
        m = mu.to(x.device)
        x_hat = sae.decode(sae.encode((x - m) / scale)) * scale + m
        return x_hat.reshape(n, length, d).transpose(1, 2).to(emb.dtype)

    return fn


def _call_with_replacement(model, layer: str, fn, d: int, call):
    """Run ``call(intervene)`` with ``layer``'s output replaced by ``fn`` (``fn`` takes and returns
    ``(N, D, L')``, the layout of ``embed``); ``fn=None`` runs the model unchanged.

    Models whose forward / encode take ``intervene={layer: f}`` (the encoder, which hands ``f`` its
    ``(N, L', D)`` tokens) get it through that; others get a forward hook on the sub-module named
    ``layer``, whose output layout is taken from where the width ``D`` sits.
    """
    if fn is None:
        return call(None)

    def adapt(h):
        if h.shape[-1] == d and h.shape[1] != d:  # channels-last tokens (N, L', D)
            return fn(h.transpose(1, 2)).transpose(1, 2)
        return fn(h)

    if "intervene" in inspect.signature(model.forward).parameters:
        return call({layer: fn})
    handles = _replacement_hooks(model, layer, adapt)
    try:
        return call(None)
    finally:
        for h in handles:
            h.remove()


def _replacement_hooks(model, layer: str, adapt) -> list:
    """Forward hooks that replace ``layer``'s output for models without ``intervene``.

    A layer that is a sub-module gets one hook on its output. BPNet's layers are ``conv0`` (the
    output of ``relu0``) and the residual sums ``dil{i} = h_{i-1}[crop] + relus[i-1](conv(h_{i-1}))``
    (an addition, which is no module): hooks on ``relu0`` and on every ``relus[j]`` up to the target
    track the running ``h`` from the ReLU outputs alone, and the target's hook returns
    ``fn(h_i) - h_{i-1}[crop]`` so that the model's own addition yields ``fn(h_i)``. Works for the
    ``(N, D, L)`` and the channels-last ``(N, D, 1, L)`` layouts.
    """
    names = dict(model.named_modules())
    if layer in names and layer != "":
        def hook(_m, _i, out):
            return (adapt(out[0]), *out[1:]) if isinstance(out, tuple) else adapt(out)
        return [names[layer].register_forward_hook(hook)]

    def fn4(h):
        return adapt(h.squeeze(2)).unsqueeze(2) if h.ndim == 4 else adapt(h)

    if layer == "conv0" and "relu0" in names:
        return [names["relu0"].register_forward_hook(lambda _m, _i, out: fn4(out))]
    if layer.startswith("dil") and layer[3:].isdigit() and hasattr(model, "relus") and "relu0" in names:
        target = int(layer[3:]) - 1
        state = {}

        def first(_m, _i, out):
            state["h"] = out

        def make(j):
            def post(_m, _i, y):
                h = state["h"]
                s = (h.shape[-1] - y.shape[-1]) // 2
                hc = h[..., s:s + y.shape[-1]]
                new = hc + y
                if j == target:
                    new = fn4(new)
                    state["h"] = new
                    return new - hc
                state["h"] = new
                return y
            return post

        return [names["relu0"].register_forward_hook(first),
                *(model.relus[j].register_forward_hook(make(j)) for j in range(target + 1))]
    raise ValueError(f"cannot replace layer {layer!r} of {type(model).__name__}: no intervene and no such module")


@torch.no_grad()
def model_loss_delta(model, model_type: str, layer: str, fn, batches, d: int, output_len: int,
                     count_weight: float | list[float] = 1.0, read_loss: str = "rms") -> dict:
    """The model's own loss on ``batches`` with and without ``layer`` replaced by ``fn``.

    CNN: ``forward(X)`` scored with its training loss,
    :func:`seq2reads.models.losses.combined_loss` (multinomial NLL of the stranded profile +
    ``count_weight`` (per cell type) x MSE of log(1 + total), masked positions excluded). Encoder: the same inputs the activation store was built from
    (sequence, each cell type's reads and its index, nothing hidden) through ``encode``, scored
    with the encoder's own read losses (:func:`seq2reads.models.heads.profile_loss` with
    ``read_loss`` over the loss mask + ``count_weight`` x :func:`~seq2reads.models.heads.count_loss`).

    Returns ``{"loss", "loss_sae", "delta_loss", "delta_loss_rel"}`` (means over windows).
    """
    from seq2reads.data.loader import center_crop

    tot = {"loss": 0.0, "loss_sae": 0.0}
    n = 0
    for batch in batches:
        X, sig, mask = batch["seq"], batch["signal"], batch["mask"]
        for key, f in (("loss", None), ("loss_sae", fn)):
            if model_type == "encoder":
                from seq2reads.models.heads import count_loss, profile_loss

                total = 0.0
                for c in range(sig.shape[1]):
                    cells = torch.full((X.shape[0],), c, dtype=torch.long)
                    out = _call_with_replacement(model, layer, f, d, lambda iv: model.encode(
                        X, sig[:, c], cells, intervene=iv))
                    pl, _ = profile_loss(out["profile_logits"], sig[:, c], mask, kind=read_loss)
                    cl, _ = count_loss(out["log_count"], sig[:, c], mask, output_len)
                    w = count_weight[c] if isinstance(count_weight, (list, tuple)) else count_weight
                    total += float(pl) + w * float(cl)
                tot[key] += total / sig.shape[1] * X.shape[0]
            else:
                from seq2reads.models.losses import combined_loss

                prof, lc = _call_with_replacement(model, layer, f, d, lambda iv: model(X) if iv is None
                                                  else model(X, intervene=iv))
                y = center_crop(sig, output_len)
                m = center_crop(mask, output_len)
                loss, _, _ = combined_loss(prof, lc, y, m, torch.as_tensor(count_weight, dtype=torch.float32))
                tot[key] += float(loss) * X.shape[0]
        n += X.shape[0]
    base, rep = tot["loss"] / max(n, 1), tot["loss_sae"] / max(n, 1)
    return {"loss": base, "loss_sae": rep, "delta_loss": rep - base,
            "delta_loss_rel": (rep - base) / abs(base) if base else float("nan"), "n_windows": n}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=False)


def _iter_progress(items, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=not enabled, leave=False)

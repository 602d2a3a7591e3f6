"""Activation store: a layer's per-position embeddings over many windows, on disk in float16.

Layout of the Zarr group (``RUN/sae/activations/``):

| array | dtype | shape | meaning |
|---|---|---|---|
| ``x`` | float16 | (M, D) | one embedding vector per (window, cell type, position) |
| ``window`` | int32 | (M,) | row of the window in the dataset store |
| ``pos`` | int32 | (M,) | token index along the layer's length axis L' (bp = offset + pos * stride) |
| ``cell`` | int16 | (M,) | cell type fed to the model (encoder); for the CNN the window's most active cell type |
| ``windows`` | int64 | (W,) | the dataset rows embedded, sorted |
| ``heldout`` | bool | (W,) | windows kept out of SAE training (evaluation, change in model loss) |

Group attributes: ``format``, ``model_hash`` (sha256 of ``model.safetensors``), ``layer``, ``d``,
``n_vectors``, ``length`` (L'), ``stride``, ``offset``, ``mean`` (D,) and ``scale`` (running
moments; inputs to the SAE are ``(x - mean) / scale``), ``cell_types``, ``per_cell`` (whether each
window was embedded once per cell type).

Writing is streamed: windows are embedded batch by batch and vectors are appended to the Zarr
arrays in chunk-sized blocks, so memory is bounded by the batch and the chunk size whatever the
number of windows. Mean and variance are accumulated with Chan et al.'s parallel update in float64.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seq2reads.errors import UserError

STORE_FORMAT = "seq2reads-activations"
CHUNK = 65536  # vectors per Zarr chunk (32 MiB at D = 256 in float16)


# -- model identity and layers -----------------------------------------------------------------
def model_hash(run_dir: str | Path) -> str:
    """sha256 (hex) of ``RUN/model/model.safetensors``: the identity of the model an SAE belongs to."""
    p = Path(run_dir) / "model" / "model.safetensors"
    if not p.exists():
        raise UserError(f"no trained model in {p.parent}: run `seq2reads train CONFIG` first.")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def resolve_layer(model, layer: str, model_type: str) -> str:
    """The layer to embed: ``layer`` itself if the model has it, or a sensible default for 'auto'.

    'auto' is the last shared layer before the output heads for the CNN (the trunk output, where
    motif-level features have been combined over the receptive field) and the middle-to-late
    transformer block for the encoder (two thirds of the depth: past the input embeddings, before
    the heads specialise).

    Raises
    ------
    UserError
        ``layer`` is not one of ``model.layer_names()`` (the valid names are listed).
    """
    names = list(model.layer_names())
    if layer != "auto":
        if layer not in names:
            raise UserError(f"sae.layer '{layer}' is not a layer of this {model_type} model; "
                            f"valid layers: {', '.join(names)} (or 'auto').")
        return layer
    shared = [n for n in names if not any(h in n.lower() for h in ("head", "profile", "count", "output"))]
    shared = shared or names
    if model_type == "encoder":
        blocks = [n for n in shared if "block" in n.lower() or "layer" in n.lower()] or shared
        return blocks[min(len(blocks) - 1, (2 * len(blocks)) // 3)] if len(blocks) > 2 else blocks[-1]
    return shared[-1]


# -- running moments ---------------------------------------------------------------------------
class RunningMoments:
    """Per-dimension mean and variance over a stream of blocks ``(n, D)`` (Chan et al. 1979)."""

    def __init__(self, d: int) -> None:
        self.n = 0
        self.mean = np.zeros(d, np.float64)
        self.m2 = np.zeros(d, np.float64)

    def update(self, x: np.ndarray) -> None:
        nb = x.shape[0]
        if nb == 0:
            return
        mb = x.mean(0, dtype=np.float64)
        m2b = ((x - mb.astype(x.dtype)).astype(np.float64) ** 2).sum(0) if x.dtype == np.float64 else \
            np.square(x - mb.astype(np.float32), dtype=np.float32).sum(0, dtype=np.float64)
        delta = mb - self.mean
        n = self.n + nb
        self.mean += delta * nb / n
        self.m2 += m2b + delta**2 * self.n * nb / n
        self.n = n

    @property
    def var(self) -> np.ndarray:
        return self.m2 / max(self.n - 1, 1)


# -- the store ---------------------------------------------------------------------------------
@dataclass
class ActivationStore:
    """An opened activation store (see the module docstring for the layout)."""

    path: Path
    group: object

    @property
    def attrs(self) -> dict:
        return dict(self.group.attrs)

    @property
    def n_vectors(self) -> int:
        return int(self.group["x"].shape[0])

    @property
    def d(self) -> int:
        return int(self.group["x"].shape[1])

    @property
    def mean(self) -> np.ndarray:
        return np.asarray(self.group.attrs["mean"], np.float32)

    @property
    def scale(self) -> float:
        return float(self.group.attrs["scale"])

    @property
    def windows(self) -> np.ndarray:
        return np.asarray(self.group["windows"][:], np.int64)

    @property
    def heldout_windows(self) -> np.ndarray:
        w = self.windows
        return w[np.asarray(self.group["heldout"][:], bool)]

    def read(self, start: int, stop: int, normalise: bool = True) -> dict[str, np.ndarray]:
        """Vectors ``[start, stop)``: ``x`` float32 (n, D) (normalised unless told not to),
        ``window``, ``pos``, ``cell`` int arrays (n,)."""
        x = np.asarray(self.group["x"][start:stop], np.float32)
        if normalise:
            x = self.normalise(x)
        return {"x": x, "window": np.asarray(self.group["window"][start:stop], np.int64),
                "pos": np.asarray(self.group["pos"][start:stop], np.int64),
                "cell": np.asarray(self.group["cell"][start:stop], np.int64)}

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Mean-centred, scaled vectors ``(x - mean) / scale`` (float32)."""
        x = np.asarray(x, np.float32)
        x -= self.mean
        x *= np.float32(1.0 / self.scale)
        return x

    def chunk_bounds(self, size: int = CHUNK) -> list[tuple[int, int]]:
        """``[start, stop)`` of consecutive blocks covering the store (aligned to ``size``)."""
        n = self.n_vectors
        return [(s, min(s + size, n)) for s in range(0, n, size)]


def open_store(path: str | Path, expected_hash: str | None = None, layer: str | None = None) -> ActivationStore:
    """Open an activation store; check it belongs to the expected model (and layer).

    Raises
    ------
    UserError
        Not an activation store, or made from another model (``model_hash`` differs) or layer.
    """
    import zarr

    path = Path(path)
    try:
        g = zarr.open_group(str(path), mode="r")
        fmt = g.attrs.get("format")
    except Exception:  # noqa: BLE001 - any failure to open means "not a store"
        fmt = None
    if fmt != STORE_FORMAT:
        raise UserError(f"{path} is not a seq2reads activation store; point sae.store at a RUN/sae/activations "
                        "folder or leave it unset to extract activations afresh.")
    if expected_hash is not None and g.attrs.get("model_hash") != expected_hash:
        raise UserError(f"activation store {path} was made by another model (model hash "
                        f"{str(g.attrs.get('model_hash'))[:12]}… != {expected_hash[:12]}…); unset sae.store "
                        "or delete the store so that activations are extracted from this run's model.")
    if layer is not None and g.attrs.get("layer") != layer:
        raise UserError(f"activation store {path} holds layer '{g.attrs.get('layer')}', not '{layer}'; "
                        f"set sae.layer={g.attrs.get('layer')} or unset sae.store to extract afresh.")
    return ActivationStore(path, g)


class StoreWriter:
    """Append embedding blocks to a new Zarr activation store in chunk-aligned writes.

    Use as a context manager inside :func:`seq2reads.atomic.atomic_path`; :meth:`add` takes
    per-position embeddings ``(N, D, L')`` with the window row and cell index of each of the N.
    """

    def __init__(self, path: str | Path, d: int, attrs: dict, chunk: int = CHUNK) -> None:
        import zarr

        self.path, self.d, self.chunk = Path(path), d, chunk
        self.group = zarr.open_group(str(self.path), mode="w")
        self.group.attrs.update({"format": STORE_FORMAT, **attrs})
        mk = dict(compressors=None, fill_value=0)  # float16 noise does not compress; skip codecs
        self.arrays = {
            "x": self.group.create_array("x", shape=(0, d), chunks=(chunk, d), dtype="float16", **mk),
            "window": self.group.create_array("window", shape=(0,), chunks=(chunk,), dtype="int32", **mk),
            "pos": self.group.create_array("pos", shape=(0,), chunks=(chunk,), dtype="int32", **mk),
            "cell": self.group.create_array("cell", shape=(0,), chunks=(chunk,), dtype="int16", **mk),
        }
        self.buf: dict[str, list[np.ndarray]] = {k: [] for k in self.arrays}
        self.n_buf = 0
        self.n = 0
        self.moments = RunningMoments(d)
        self.length: int | None = None

    def add(self, emb: np.ndarray, window: np.ndarray, cell: np.ndarray) -> None:
        """Append embeddings ``emb (N, D, L')`` of windows ``window (N,)`` fed cell types ``cell (N,)``."""
        n, d, length = emb.shape
        if d != self.d:
            raise ValueError(f"embedding width {d} != store width {self.d}")
        self.length = length
        x = np.ascontiguousarray(np.asarray(emb, np.float32).transpose(0, 2, 1)).reshape(n * length, d)
        x16 = x.astype(np.float16)
        self.moments.update(x16.astype(np.float32))
        self.buf["x"].append(x16)
        self.buf["window"].append(np.repeat(np.asarray(window, np.int32), length))
        self.buf["pos"].append(np.tile(np.arange(length, dtype=np.int32), n))
        self.buf["cell"].append(np.repeat(np.asarray(cell, np.int16), length))
        self.n_buf += n * length
        if self.n_buf >= self.chunk:
            self._flush(final=False)

    def add_vectors(self, x: np.ndarray, window: np.ndarray, pos: np.ndarray, cell: np.ndarray) -> None:
        """Append flat vectors ``x (n, D)`` with their indices (used to store synthetic vectors)."""
        x16 = np.asarray(x).astype(np.float16)
        self.moments.update(x16.astype(np.float32))
        for k, v, t in (("x", x16, np.float16), ("window", window, np.int32), ("pos", pos, np.int32),
                        ("cell", cell, np.int16)):
            self.buf[k].append(np.asarray(v, t))
        self.n_buf += x16.shape[0]
        if self.n_buf >= self.chunk:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        if not self.n_buf:
            return
        cat = {k: np.concatenate(v) for k, v in self.buf.items()}
        n_write = self.n_buf if final else (self.n_buf // self.chunk) * self.chunk
        for k, arr in self.arrays.items():
            arr.append(cat[k][:n_write], axis=0)
        self.n += n_write
        self.buf = {k: ([v[n_write:]] if n_write < self.n_buf else []) for k, v in cat.items()}
        self.n_buf -= n_write

    def close(self, windows: np.ndarray, heldout: np.ndarray, extra_attrs: dict | None = None) -> None:
        """Write the remaining vectors, the window table and the moments."""
        self._flush(final=True)
        if self.n == 0:
            raise UserError("no activations were extracted (no windows selected); check sae.n_windows "
                            "and that the dataset has windows.")
        self.group.create_array("windows", data=np.asarray(windows, np.int64))
        self.group.create_array("heldout", data=np.asarray(heldout, bool))
        var = self.moments.var
        scale = float(np.sqrt(max(var.mean(), 1e-12)))
        self.group.attrs.update({"d": self.d, "n_vectors": self.n, "length": self.length,
                                 "mean": self.moments.mean.tolist(), "scale": scale,
                                 "var": var.tolist(), **(extra_attrs or {})})


# -- extraction from a model -------------------------------------------------------------------
def select_windows(regions, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``n`` dataset rows (sorted) spread over splits and kinds, and which are held out.

    Held out (never used to train the SAE): the selected windows of the ``valid`` split (falls back
    to every 10th selected window when there are none). Returns ``(rows int64 (W,), heldout bool (W,))``.
    """
    rng = np.random.default_rng(seed)
    rows = np.arange(len(regions))
    if n < len(rows):
        rows = np.sort(rng.choice(rows, size=n, replace=False))
    split = np.asarray(regions["split"])[rows]
    heldout = split == "valid"
    if not heldout.any() or heldout.all():
        heldout = np.arange(len(rows)) % 10 == 9
    return rows.astype(np.int64), heldout


def dominant_cell(signal_out: np.ndarray, cell_means: np.ndarray) -> np.ndarray:
    """Most active cell type per window: argmax of total output counts / that cell's mean total.

    ``signal_out (N, C, 2, L)`` counts; ``cell_means (C,)`` mean totals. Returns int (N,).
    """
    totals = signal_out.sum(axis=(2, 3))
    return np.argmax(totals / np.maximum(cell_means, 1e-6)[None], axis=1)


def encoder_inputs(signal, cells) -> dict:
    """Keyword inputs of the encoder's ``embed`` for (window, cell type) examples.

    ``signal (N, C, 2, L)`` counts of all cell types, ``cells (N,)`` long: the reads of cell type
    ``cells[i]`` for example ``i`` and its index.
    """
    import torch

    rows = torch.arange(signal.shape[0])
    return {"reads": signal[rows, cells], "cell": cells}


def iter_embeddings(model, batches: Iterable[dict], layer: str, model_type: str, n_cells: int,
                    embed_kwargs: Callable[[dict, "np.ndarray"], dict] | None = None,
                    cell_means: np.ndarray | None = None, output_len: int | None = None,
                    ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(emb (N', D, L') float32, window rows (N',), cell (N',))`` per dataset batch.

    The encoder is run once per window and cell type (reads of that cell type + its index), the CNN
    once per window (its embeddings do not depend on the cell type; ``cell`` is then the window's
    most active cell type, so that enrichment compares windows active in one cell type to others).
    """
    import torch

    for batch in batches:
        X = batch["seq"]
        idx = batch["index"].cpu().numpy()
        with torch.no_grad():
            if model_type == "encoder":
                n = X.shape[0]
                cells = torch.arange(n_cells).repeat_interleave(n)
                Xr = X.repeat(n_cells, 1, 1)
                kw = encoder_inputs(batch["signal"].repeat(n_cells, 1, 1, 1), cells)
                emb = model.embed(Xr, layer, **kw)
                win = np.tile(idx, n_cells)
                cell = cells.numpy()
            else:
                emb = model.embed(X, layer)
                win = idx
                sig = batch["signal"].cpu().numpy()
                if output_len is not None:
                    from seq2reads.data.loader import center_crop

                    sig = center_crop(sig, output_len)
                cm = cell_means if cell_means is not None else np.ones(sig.shape[1])
                cell = dominant_cell(sig, cm)
        yield emb.float().cpu().numpy(), win, cell

"""``seq2reads train``: fit the configured model on a prepared dataset with PyTorch Lightning.

What :func:`train` does, in order:

1. checks the window against the model's receptive field and the config against the prepared
   dataset (``RUN/dataset``) — each mismatch is a one-line :class:`UserError`;
2. seeds everything (``train.seed``) and builds the DataModule, the model (registry) and the task
   (:class:`~seq2reads.training.tasks.ProfileCountTask` for ``bpnet``,
   ``MaskedEncoderTask`` for ``encoder``);
3. runs a Lightning ``Trainer``: AdamW + warm-up schedule (in the task), gradient clipping,
   precision (``auto``: bf16-mixed on a GPU, bf16 autocast on CPUs with native bf16, else fp32),
   early stopping on ``val/loss``, ``RUN/checkpoints/last.ckpt`` every ``train.checkpoint_every``
   steps and ``best.ckpt`` on ``val/loss``, a NaN/Inf guard, CSV logs in ``RUN/logs/metrics.csv``,
   DDP through ``devices`` / ``num_nodes`` / ``strategy``;
4. **resumes**: when ``RUN/checkpoints/last.ckpt`` exists the fit continues from it (model,
   optimizer, scheduler, loop counters); earlier log rows are kept;
5. writes the best weights to ``RUN/model`` (:func:`seq2reads.models.io.save_model`) and the
   resolved config to ``RUN/config.yaml``.

Every start and end of a fit is appended to ``RUN/logs/train_history.jsonl``
(``{"event": "start", "global_step": ..., "resumed_from": ...}``), which shows where a resumed run
picked up.
"""

from __future__ import annotations

import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from seq2reads.atomic import write_text_atomic
from seq2reads.errors import Stopped, UserError

CHECKPOINTS = "checkpoints"
LAST = "last"
BEST = "best"
HISTORY = "train_history.jsonl"
RESUME_INFO = "run.json"


# -- precision -----------------------------------------------------------------------------------
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16).

    AVX-512 CPUs without these emulate bf16 (oneDNN still accepts it) with no speed gain, so the
    CPU flags are read rather than ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if flags:
        return "avx512_bf16" in flags or "amx_bf16" in flags
    try:  # non-Linux: ask oneDNN
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except Exception:  # noqa: BLE001 - any failure means "no"
        return False


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will train on CUDA GPUs with this ``train.accelerator``."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """Lightning precision string for ``train.precision`` (``auto`` picks by hardware)."""
    if precision == "32":
        return "32-true"
    if precision != "auto":
        return precision
    if uses_cuda(accelerator):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if cpu_supports_bf16() else "32-true"


# -- callbacks -----------------------------------------------------------------------------------
class NonFiniteGuard(L.Callback):
    """Stop training at the first NaN/Inf loss or gradient, without applying that step.

    Before the optimizer step it checks the (DDP-synchronised) gradients; if any is non-finite the
    gradients are dropped (``grad = None``: the optimizer leaves every weight as it was) and the
    trainer is told to stop. A non-finite loss is caught the same way after the batch. The
    checkpoints therefore only ever hold weights from before the failure. Buffers that the
    forward pass itself updates (BatchNorm running statistics) are snapshotted at each batch start
    and put back when the guard trips, or when they turn non-finite.
    """

    def __init__(self, check_grads: bool = True) -> None:
        self.check_grads = check_grads
        self.tripped_step: int | None = None
        self.what = ""
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._buffers = [(b, b.detach().clone()) for b in pl_module.buffers() if b.is_floating_point()]

    def _trip(self, trainer, what: str) -> None:
        if self.tripped_step is None:
            self.tripped_step = int(trainer.global_step)
            self.what = what
        with torch.no_grad():
            for b, saved in self._buffers:
                b.copy_(saved)
        trainer.should_stop = True

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self.check_grads:
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        total = torch.stack(torch._foreach_norm(grads)).sum()
        bufs = [b for b, _ in self._buffers]
        if bufs and not torch.isfinite(torch.stack(torch._foreach_norm(bufs)).sum()):
            total = total + float("nan")  # the forward pass already wrote non-finite statistics
        if not torch.isfinite(total):
            for g in optimizer.param_groups:
                for p in g["params"]:
                    p.grad = None
            self._trip(trainer, "gradients")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        bad = loss is not None and not bool(torch.isfinite(loss.detach()).all())
        bad = trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            self._trip(trainer, "loss")


class TrainHistory(L.Callback):
    """Append fit start/end records (global step, resume source) to ``RUN/logs/train_history.jsonl``."""

    def __init__(self, path: Path, resumed_from: Path | None) -> None:
        self.path = path
        self.resumed_from = resumed_from
        self.start_step: int | None = None

    def _append(self, trainer, record: dict) -> None:
        if not trainer.is_global_zero:
            return
        old = self.path.read_text() if self.path.exists() else ""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), **record}
        write_text_atomic(self.path, old + json.dumps(record) + "\n")

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = int(trainer.global_step)
        self._append(trainer, {"event": "start", "global_step": self.start_step, "epoch": int(trainer.current_epoch),
                               "resumed_from": str(self.resumed_from) if self.resumed_from else None})

    def on_train_end(self, trainer, pl_module) -> None:
        self._append(trainer, {"event": "end", "global_step": int(trainer.global_step),
                               "epoch": int(trainer.current_epoch)})


def read_history(run_dir: str | Path) -> list[dict]:
    """The records of ``RUN/logs/train_history.jsonl`` (empty when never trained)."""
    p = Path(run_dir) / "logs" / HISTORY
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


# -- checks --------------------------------------------------------------------------------------
def _open_store(cfg):
    from seq2reads.data.store import open_dataset

    path = cfg.run_path / "dataset"
    if not path.exists():
        raise UserError(f"no prepared dataset in {cfg.run_path}: run `seq2reads prepare CONFIG` first.")
    store = open_dataset(path)
    if list(store.samples) != list(cfg.cell_types):
        raise UserError(
            f"the dataset in {path} holds samples {list(store.samples)} but the config names "
            f"{list(cfg.cell_types)}: re-run `seq2reads prepare CONFIG` after changing samples."
        )
    if (store.input_len, store.output_len) != (cfg.window.input, cfg.window.output):
        raise UserError(
            f"the dataset in {path} was prepared with window {store.input_len} -> {store.output_len} bp but the "
            f"config asks for {cfg.window.input} -> {cfg.window.output}: re-run `seq2reads prepare CONFIG`."
        )
    for split, key in (("train", "splits (all chromosomes not held out)"), ("valid", "splits.valid")):
        if len(store.indices(split)) == 0:
            raise UserError(
                f"the prepared dataset has no {split} windows: choose {key} chromosomes that hold regions "
                "and re-run `seq2reads prepare CONFIG`."
            )
    return store


def _resume_key(cfg) -> str:
    return cfg.section_hash("model", "window", "samples", "splits")


def _resume_checkpoint(cfg, ckpt_dir: Path) -> Path | None:
    last = ckpt_dir / f"{LAST}.ckpt"
    if not last.exists():
        return None
    info = ckpt_dir / RESUME_INFO
    if info.exists():
        try:
            key = json.loads(info.read_text()).get("key")
        except json.JSONDecodeError:
            key = None
        if key != _resume_key(cfg):
            raise UserError(
                f"{last} was written for a different model/window/samples/splits config: delete {ckpt_dir} to "
                "train from scratch, or restore the config to resume."
            )
    return last


def _make_task(cfg, model, attrs):
    if cfg.model.type == "encoder":
        from seq2reads.training.encoder_task import MaskedEncoderTask

        return MaskedEncoderTask(cfg, model, attrs)
    from seq2reads.training.tasks import ProfileCountTask

    return ProfileCountTask(cfg, model, attrs)


def _progress_bar():
    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    if sys.stderr.isatty():
        try:
            return RichProgressBar()
        except (ImportError, ModuleNotFoundError):
            pass
    return TQDMProgressBar(refresh_rate=10)


# -- train ---------------------------------------------------------------------------------------
def train(cfg) -> Path:
    """Train the model named in ``cfg`` on ``RUN/dataset``; resume from ``RUN/checkpoints`` if present.

    Returns
    -------
    Path
        ``RUN/model`` (``model.safetensors`` + ``model.json``).

    Raises
    ------
    UserError
        No prepared dataset, a dataset that does not match the config, a window shorter than
        the model's receptive field (names the minimum), checkpoints from another config.
    Stopped
        SIGTERM arrived during training (status 143); the checkpoints are kept for a resume.
    """
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from seq2reads.data.loader import S2RDataModule
    from seq2reads.models.registry import build_model, check_window

    tc = cfg.train
    run = cfg.run_path
    check_window(cfg.model, cfg.window.input, cfg.window.output)
    store = _open_store(cfg)
    ckpt_dir = run / CHECKPOINTS
    resume = _resume_checkpoint(cfg, ckpt_dir)

    L.seed_everything(tc.seed, workers=True, verbose=False)
    model = build_model(cfg.model, len(store.samples), store.input_len, store.output_len)
    attrs = dict(store.attrs)
    task = _make_task(cfg, model, attrs)
    dm = S2RDataModule(store, batch_size=tc.batch_size, jitter=True, revcomp=tc.revcomp, seed=tc.seed,
                       num_workers=tc.num_workers)

    precision = resolve_precision(tc.precision, tc.accelerator)
    guard = NonFiniteGuard(check_grads=precision != "16-mixed")  # the fp16 grad scaler skips inf steps itself
    history = TrainHistory(run / "logs" / HISTORY, resume)
    # save_top_k=0 + save_last: only RUN/checkpoints/last.ckpt, rewritten every N steps (atomically:
    # Lightning writes through an fsspec transaction, i.e. a temporary file then a rename).
    last_ckpt = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=tc.checkpoint_every, save_top_k=0,
                                save_last=True, enable_version_counter=False)
    best_ckpt = ModelCheckpoint(dirpath=ckpt_dir, filename=BEST, monitor="val/loss", mode="min", save_top_k=1,
                                auto_insert_metric_name=False, enable_version_counter=False)
    early = EarlyStopping(monitor="val/loss", mode="min", patience=tc.patience, check_on_train_epoch_end=False)

    n_train = len(store.indices("train"))
    batches = max(1, math.ceil(n_train / tc.batch_size))
    old_metrics = _read_metrics(run / "logs" / "metrics.csv") if resume else None

    # Lightning's `deterministic` switches torch's process-wide flag on; put it back afterwards so
    # that training leaves no global state behind (e.g. for later steps in the same process).
    det_before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
    try:
        trainer = _fit(cfg, task, dm, resume, precision, callbacks=[guard, history, last_ckpt, best_ckpt, early],
                       log_every=max(1, min(50, batches // 4)), ckpt_dir=ckpt_dir)
    finally:
        torch.use_deterministic_algorithms(det_before[0], warn_only=det_before[1])
    return _finish(cfg, trainer, task, model, guard, history, best_ckpt, precision, ckpt_dir, old_metrics)


def _fit(cfg, task, dm, resume, precision, callbacks, log_every, ckpt_dir):
    from lightning.pytorch.loggers import CSVLogger

    tc, run = cfg.train, cfg.run_path
    trainer = L.Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        num_nodes=tc.num_nodes,
        strategy=tc.strategy,
        precision=precision,
        max_epochs=tc.max_epochs,
        max_steps=tc.max_steps,
        gradient_clip_val=tc.grad_clip if tc.grad_clip > 0 else None,
        limit_val_batches=tc.limit_val_batches,
        callbacks=[*callbacks, _progress_bar()],
        logger=CSVLogger(save_dir=str(run / "logs"), name="", version=""),
        log_every_n_steps=log_every,
        deterministic="warn" if uses_cuda(tc.accelerator) else True,
        default_root_dir=str(run),
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    if trainer.is_global_zero:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        write_text_atomic(ckpt_dir / RESUME_INFO, json.dumps({"key": _resume_key(cfg)}))
        if resume:
            print(f"resuming training from {resume}", file=sys.stderr)
    try:
        trainer.fit(task, datamodule=dm, ckpt_path=str(resume) if resume else None)
    except SIGTERMException:
        # Lightning's SIGTERMException is a SystemExit without a code: left alone, the process
        # would end with status 0 as if training had finished.
        raise Stopped("stopped by SIGTERM; the last checkpoint is kept: rerun the same command to resume.",
                      128 + signal.SIGTERM) from None
    return trainer


def _finish(cfg, trainer, task, model, guard, history, best_ckpt, precision, ckpt_dir, old_metrics) -> Path:
    """After the fit: final checkpoint, NaN message, merged logs, best weights to ``RUN/model``."""
    tc, run = cfg.train, cfg.run_path

    if guard.tripped_step is None:  # a collective under DDP: every rank calls it
        # the finished state, so a rerun does nothing; the full state (optimiser, loops), said
        # explicitly so Lightning does not log that it chose it
        trainer.save_checkpoint(ckpt_dir / f"{LAST}.ckpt", weights_only=False)
    if not trainer.is_global_zero:
        return run / "model"
    if guard.tripped_step is not None:
        msg = (f"training stopped at step {guard.tripped_step}: the {guard.what} became NaN or Inf; that step was "
               f"not applied and the last good checkpoint is kept in {ckpt_dir}. Lower train.lr or check the "
               "data for NaN/Inf values.")
        warnings.warn(msg, RuntimeWarning, stacklevel=2)
        print(f"seq2reads train: warning: {msg}", file=sys.stderr)
    if old_metrics is not None and history.start_step is not None:
        _merge_metrics(run / "logs" / "metrics.csv", old_metrics, history.start_step)

    best_path = best_ckpt.best_model_path
    extra = {"global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
             "precision": precision, "stopped_nonfinite": guard.tripped_step is not None}
    if best_path and Path(best_path).exists():
        state = torch.load(best_path, map_location="cpu", weights_only=True)["state_dict"]
        model.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
        score = best_ckpt.best_model_score
        extra["best_val_loss"] = float(score) if score is not None else None
    if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise UserError(f"training produced NaN/Inf weights and no good checkpoint exists: lower train.lr "
                        f"(now {tc.lr}) or check the data, then delete {ckpt_dir} and rerun.")
    if hasattr(task, "count_weights"):
        extra["count_weight"] = list(task.count_weights)
    from seq2reads.config import save_run_config
    from seq2reads.models.io import save_model

    out = save_model(model.cpu(), cfg, run / "model", extra=extra)
    save_run_config(cfg)
    return out


# -- logs across resumes -------------------------------------------------------------------------
def _read_metrics(path: Path):
    import pandas as pd

    if not path.exists():
        return None
    try:
        return pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


def _merge_metrics(path: Path, old, start_step: int) -> None:
    """Put the rows logged before a resume (steps < ``start_step``) back in front of the new ones.

    Lightning's CSVLogger starts a fresh ``metrics.csv`` on every fit; a resumed run would
    otherwise lose its earlier loss curve.
    """
    import pandas as pd

    new = _read_metrics(path)
    if old is None or "step" not in old:
        return
    merged = pd.concat([old[old["step"] < start_step], new], ignore_index=True) if new is not None else old
    write_text_atomic(path, merged.to_csv(index=False))

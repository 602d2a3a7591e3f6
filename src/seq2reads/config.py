"""The YAML config file as pydantic models (SPEC.md, "Config file").

Every section has defaults except ``run_dir``, ``genome``, ``regions`` and ``samples``. Unknown
keys are errors that suggest the closest valid key; ``--set key.sub=value`` overrides any value.
Relative paths in a config file are resolved against the file's folder.

Examples
--------
>>> cfg = load_config("d/config.yaml", overrides=["train.max_epochs=3"])   # doctest: +SKIP
>>> cfg.model.type                                                          # doctest: +SKIP
'bpnet'
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from seq2reads.errors import UserError

ASSAYS = ("pro-seq", "pro-cap", "gro-seq", "gro-cap", "generic")
RUN_CONFIG_NAME = "config.yaml"


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignment is validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class Replicate(Section):
    """A replicate of one sample (stranded bigWigs or a BAM), used for the noise ceiling."""

    plus: str | None = None
    minus: str | None = None
    bam: str | None = None

    @model_validator(mode="after")
    def _one_source(self):
        has_bw = self.plus is not None or self.minus is not None
        if has_bw and self.bam is not None:
            raise ValueError("give either plus/minus bigWigs or a bam, not both")
        if not has_bw and self.bam is None:
            raise ValueError("give plus and minus bigWigs, or a bam")
        if has_bw and (self.plus is None or self.minus is None):
            raise ValueError("stranded bigWigs need both plus and minus")
        return self


class Sample(Replicate):
    """One cell type (or condition): stranded bigWigs or a BAM/CRAM, optional replicates."""

    name: str
    replicates: list[Replicate] = Field(default_factory=list)


class Reads(Section):
    """How reads from a BAM become per-base counts. ``None`` means: take it from the assay preset.

    ``end``: 5, 3 or "coverage"; ``flip_strand``: count on the strand opposite to the read's.
    """

    end: Literal[5, 3, "coverage"] | None = None
    flip_strand: bool | None = None
    min_mapq: int = Field(0, ge=0)


class Window(Section):
    """Window lengths in bp: model input, model output (centred) and the jitter margin."""

    input: int = Field(2114, gt=0)
    output: int = Field(1000, gt=0)
    jitter: int = Field(128, ge=0)

    @model_validator(mode="after")
    def _output_fits(self):
        if self.output > self.input:
            raise ValueError(f"window.output ({self.output}) must not exceed window.input ({self.input})")
        return self


class Splits(Section):
    """Chromosomes held out for validation and test; all others train."""

    valid: list[str] = Field(default_factory=lambda: ["chr8", "chr20"])
    test: list[str] = Field(default_factory=lambda: ["chr1", "chr3", "chr6"])


class Background(Section):
    """Background windows away from regions: ``ratio`` per region, GC-matched to the regions."""

    ratio: float = Field(0.1, ge=0)
    gc_matched: bool = True


class BPNetModel(Section):
    """The BPNet-style dilated residual CNN."""

    type: Literal["bpnet"] = "bpnet"
    filters: int = Field(64, gt=0)
    layers: int = Field(8, ge=0)
    conv_kernel: int = Field(21, gt=0)
    dilated_kernel: int = Field(3, gt=0)
    profile_kernel: int = Field(75, gt=0)
    count_norm: bool = Field(True, description="batch-normalise the pooled features of the count head")
    count_scales: int = Field(5, ge=1, le=12, description="windows the count head averages features over: the "
                              "output window, then its centred half, quarter, ... (1: the output window only, as BPNet); "
                              "used only with count_box: 0")
    count_stem: int = Field(128, ge=0, description="filters of the count head's own convolution of the sequence "
                            "(width conv_kernel; 0: none, the count head reads the shared trunk only, as BPNet)")
    count_box: int = Field(32, ge=0, description="bp: the count head averages over centred windows of +-count_box, "
                           "+-2 count_box, ... and the whole output window, in place of count_scales' halving "
                           "windows (0: use count_scales). Measured (benchmarks/accuracy.py data, 30 epochs, seeds "
                           "0 and 1): test count Pearson 0.633 / 0.603 with 5 nested windows, 0.671 / 0.642 with 32")
    cell_share_weight: float = Field(0.0, ge=0, description="weight of the cell-type split NLL (see losses); 0: off")
    count_weight: float | None = Field(None, ge=0, description="None: set from the data (see losses)")
    background_count_weight: float = Field(0.3, ge=0, le=1, description="factor on the count loss of background "
                                           "windows (peaks: 1; see training/tasks.py). Measured (benchmarks/accuracy.py "
                                           "data, 30 epochs, seeds 0 / 1): test count Pearson on peaks 0.671 / 0.642 "
                                           "at 1, 0.728 / 0.751 at 0.3; on peaks + background 0.740 / 0.722 at 1, "
                                           "0.710 / 0.734 at 0.3")
    count_lr_scale: float = Field(10.0, gt=0, description="learning-rate multiplier of the count head's own "
                                  "parameters (count stem, normalisation, linear map). Measured (benchmarks/accuracy.py "
                                  "data, 30 epochs): test count Pearson 0.496 at 1, 0.578 at 5, 0.597 at 10")
    # Off by default: with it on, integrated gradients (no DeepLIFT rule for attention) recovered 6 of
    # 9 planted motifs in benchmarks/motif_recovery.py against 9 of 9 by DeepLIFT on the plain CNN.
    attention_layers: int = Field(0, ge=0, description="transformer blocks over attention_patch-bp tokens of the "
                                  "trunk's last layer, added back residually (0: none, the plain BPNet trunk; see "
                                  "models/bpnet.py). Measured (benchmarks/accuracy.py, 30 epochs, 2 threads): test profile "
                                  "Pearson 0.762 -> 0.819, JSD 0.652 -> 0.576, count 0.720 -> 0.750 with 1 (2: no "
                                  "better). A CNN that attends is explained by integrated gradients (no DeepLIFT rule), which "
                                  "recovered fewer motifs (6 of 9 against 9 of 9), so 0 by default")
    attention_heads: int | None = Field(None, gt=0, description="attention heads; filters / heads must be even "
                                        "(RoPE). None: the most of 4, 2, 1 that divides filters into an even width")
    attention_patch: int = Field(8, gt=0, description="bp per attention token")

    @model_validator(mode="after")
    def _attention_heads(self):
        if not self.attention_layers:
            return self
        even = [h for h in (4, 2, 1) if self.filters % h == 0 and (self.filters // h) % 2 == 0]
        if self.attention_heads is None and even:
            self.attention_heads = even[0]
        h = self.attention_heads
        if h is None or self.filters % h or (self.filters // h) % 2:
            raise ValueError(
                f"filters ({self.filters}) must split into attention_heads ({h or 'any of 4, 2, 1'}) heads of even "
                "width (RoPE): use an even number of filters, set model.attention_heads, or set model.attention_layers: 0"
            )
        return self


class EncoderModel(Section):
    """The multi-modal masked transformer encoder (sequence + stranded reads + cell type)."""

    type: Literal["encoder"] = "encoder"
    d_model: int = Field(128, gt=0)
    depth: int = Field(4, gt=0)
    heads: int = Field(4, gt=0)
    mlp_ratio: float = Field(4.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    patch: int = Field(1, gt=0, description="positions per token (stride of the embeddings)")
    seq_kernels: list[int] = Field(default_factory=lambda: [1, 9, 25])
    seq_dilated: int = Field(6, ge=0, description="dilated residual convolutions (dilation 2, 4, ...) on the "
                             "sequence embedding at base resolution, before patching; 0: none (measured: S2R "
                             "profile r 0.31 -> 0.80 with 6, benchmarks/encoder.py, simulator-v1 data)")
    mask_min: float = Field(0.15, gt=0, lt=1)
    mask_max: float = Field(0.40, gt=0, lt=1)
    span: int = Field(16, gt=0, description="mean length of a masked span, in positions")
    joint_mask: bool = True
    cell_mask_prob: float = Field(0.15, ge=0, le=1)
    s2r_prob: float = Field(0.25, ge=0, le=1, description="fraction of examples with reads fully masked")
    read_norm: Literal["log1p", "sum"] = "log1p"
    read_loss: Literal["rms", "multinomial"] = "rms"
    balance: bool = True
    balance_smoothing: float = Field(0.9, ge=0, lt=1)
    balance_clamp: list[float] = Field(default_factory=lambda: [0.001, 1000.0])
    count_norm: bool = Field(False, description="batch-normalise the pooled token states of the count head "
                             "(measured: S2R count r 0.24 -> 0.29 but profile r 0.31 -> 0.21, so off by default)")
    count_weight: float | None = Field(None, ge=0)
    # 1 (off) for the encoder: 0.3, which lifts the CNN's count, did not lift the encoder's (below).
    background_count_weight: float = Field(1.0, ge=0, le=1, description="factor on the count loss of background "
                                           "windows (peaks: 1), as the CNN's (see training/tasks.py). Measured "
                                           "(benchmarks/encoder.py, 40 epochs, seed 0): S2R profile / JSD / count "
                                           "Pearson 0.870 / 0.530 / 0.386 at 0.3 against 0.862 / 0.538 / 0.417 at 1")
    count_lr_scale: float = Field(10.0, gt=0, description="learning-rate multiplier of the count head's own "
                                  "parameters (token head, count stem and its normalisation). Measured "
                                  "(benchmarks/encoder.py): with the stem, S2R count Pearson 0.417 at 10; "
                                  "without the stem 0.290 at 10 against 0.29-0.33 at 1")
    count_pool: Literal["window", "output"] = Field(
        "output", description="tokens the count head averages: those over the output window (whose reads it "
        "predicts) or the whole input window")
    # The stem (128 filters, rate 10) is on by default: S2R count Pearson 0.29-0.33 -> 0.417 and the
    # SAE targets still pass. The nested windows are off (they are on in the CNN's defaults): with
    # them (scales 5, stem 128, rate 10) 0.473, but no SAE latent of the encoder's residual stream
    # tracked GATA1::TAL1 any more (sae_targets: best latent 0.46 < 0.5 of its top windows, with or
    # without the stem; 0.56-0.58 without them) -- see models/encoder.py and the README.
    count_scales: int = Field(1, ge=1, le=12, description="token windows the count head (and the count stem) "
                              "averages: all its tokens, then their centred half, quarter, ... (1: all of them; "
                              "at most as many as there are tokens / positions to halve)")
    # Off by default: better S2R counts, but the SAE targets failed on one of two runs with it (figures
    # in models/encoder.py's docstring).
    count_stem_all_cells: bool = Field(False, description="train the count stem on every cell type's total of "
                                       "each window (an extra count loss), not only on the example's cell type; "
                                       "better S2R counts, weaker cell-type latents in the residual stream")
    count_stem: int = Field(128, ge=0, description="filters of the count's own convolution of the sequence, pooled "
                            "like the tokens and batch-normalised, one linear term per cell type added to the log "
                            "count (0: none, the count from the residual stream alone; see models/encoder.py)")

    @model_validator(mode="after")
    def _mask_bounds(self):
        if not (0 < self.mask_min <= self.mask_max < 1):
            raise ValueError(
                f"masking bounds must satisfy 0 < mask_min <= mask_max < 1, got {self.mask_min}, {self.mask_max}"
            )
        if self.d_model % self.heads or (self.d_model // self.heads) % 2:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by heads ({self.heads}) into an even head width (RoPE)"
            )
        return self


ModelConfig = Annotated[Union[BPNetModel, EncoderModel], Field(discriminator="type")]


class Train(Section):
    """Optimisation and hardware (PyTorch Lightning)."""

    batch_size: int = Field(64, gt=0)
    max_epochs: int = Field(50, gt=0)
    max_steps: int = -1
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    optimizer: Literal["adamw", "adam"] = "adamw"
    schedule: Literal["cosine", "plateau", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, ge=0)
    patience: int = Field(5, ge=0)
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed", "bf16-true"] = "auto"
    accelerator: str = "auto"
    devices: int | str = "auto"
    num_nodes: int = Field(1, gt=0)
    strategy: str = "auto"
    checkpoint_every: int = Field(200, gt=0, description="steps between resume checkpoints")
    seed: int = 0
    num_workers: int = Field(0, ge=0)
    revcomp: bool = True
    limit_val_batches: float | int = 1.0

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v):
        return str(v) if isinstance(v, int) else v


class Interpret(Section):
    """Attributions, motif discovery and perturbation."""

    method: Literal["auto", "deeplift", "ig", "ism"] = "auto"
    shuffles: int = Field(20, gt=0)
    n_regions: int = Field(2000, gt=0)
    ig_steps: int = Field(16, gt=0, description="integrated gradients: trapezoid intervals along each path")
    ig_shuffles: int = Field(4, gt=0, description="integrated gradients: dinucleotide-shuffled baselines per "
                                                  "sequence, attributions averaged over them (ig_baseline shuffle)")
    ig_baseline: Literal["shuffle", "zero"] = Field(
        "shuffle", description="integrated-gradients sequence baseline: a dinucleotide shuffle or all-zero")
    targets: list[Literal["count", "count_specific", "profile"]] = Field(
        default_factory=lambda: ["count", "profile"],
        description="count: log count per cell type; count_specific: a cell type's log count minus the mean of "
                    "the others' (what is specific to it); profile: per-strand profile shape")
    cell_types: list[str] | None = None
    motif_db: str = "JASPAR2024"
    max_seqlets: int = Field(2000, gt=0)
    delta_warn: float = Field(0.05, ge=0, description="warn when |convergence delta| exceeds this")
    marginalize_n: int = Field(100, gt=0, description="background sequences per marginalisation")


class SAE(Section):
    """Sparse autoencoder on a layer's per-position embeddings."""

    layer: str = "auto"
    latents: int = Field(256, gt=0)
    k: int = Field(16, gt=0)
    kind: Literal["topk", "batchtopk", "relu"] = "topk"
    l1: float = Field(1.0, ge=0, description="L1 weight (kind: relu), in units of the normalised activations")
    n_windows: int = Field(2000, gt=0)
    epochs: int = Field(5, gt=0)
    batch_size: int = Field(4096, gt=0)
    lr: float = Field(1e-3, gt=0)
    top_windows: int = Field(50, gt=0)
    max_features: int = Field(20, ge=0, description="latents analysed with attributions and motifs")
    store: str | None = Field(None, description="reuse this activation store (RUN/sae/activations of this model)")
    seed: int = 0
    motifs: bool = Field(True, description="TF-MoDISco + TOMTOM on the analysed latents' top windows")

    @model_validator(mode="after")
    def _k_fits(self):
        if self.k > self.latents:
            raise ValueError(f"sae.k ({self.k}) must not exceed sae.latents ({self.latents})")
        return self


class Predict(Section):
    """Inference in ``evaluate`` and ``predict``."""

    revcomp_average: bool = Field(True, description="average each window's prediction with that of its reverse "
                                  "complement, strands flipped back (models/revcomp.py)")


class Report(Section):
    """The HTML report."""

    example_regions: int = Field(3, ge=0)
    compare_runs: list[str] = Field(default_factory=list, description="other run dirs shown beside this one")


class Config(Section):
    """A whole seq2reads config file."""

    run_dir: str
    genome: str
    regions: str
    samples: list[Sample]
    assay: Literal["pro-seq", "pro-cap", "gro-seq", "gro-cap", "generic"] = "generic"
    reads: Reads = Field(default_factory=Reads)
    exclude: str | None = None
    truth: str | None = Field(None, description="simulator truth.json (noise ceiling from true rates)")
    window: Window = Field(default_factory=Window)
    splits: Splits = Field(default_factory=Splits)
    background: Background = Field(default_factory=Background)
    model: ModelConfig = Field(default_factory=BPNetModel)
    train: Train = Field(default_factory=Train)
    interpret: Interpret = Field(default_factory=Interpret)
    sae: SAE = Field(default_factory=SAE)
    predict: Predict = Field(default_factory=Predict)
    report: Report = Field(default_factory=Report)

    @field_validator("samples")
    @classmethod
    def _unique_names(cls, v: list[Sample]):
        if not v:
            raise ValueError("give at least one sample")
        names = [s.name for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"sample names must be unique, repeated: {sorted(dup)}")
        return v

    # -- convenience -------------------------------------------------------------------------
    @property
    def run_path(self) -> Path:
        return Path(self.run_dir)

    @property
    def cell_types(self) -> list[str]:
        return [s.name for s in self.samples]

    def section_hash(self, *sections: str) -> str:
        """Stable hash of the named top-level sections (all when none are named)."""
        data = self.model_dump(mode="json")
        if sections:
            data = {k: data[k] for k in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


PATH_FIELDS = ("genome", "regions", "exclude", "truth", "run_dir")
SAMPLE_PATH_FIELDS = ("plus", "minus", "bam")


# -- loading -----------------------------------------------------------------------------------
def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a YAML config; relative paths resolve against its folder.

    Raises
    ------
    UserError
        Missing file, YAML syntax error, unknown key (with the closest valid key) or a bad value.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"config file not found: {path}. Give the path to a YAML config (see README).")
    if path.is_dir():
        if (path / RUN_CONFIG_NAME).exists():
            path = path / RUN_CONFIG_NAME
        else:
            raise UserError(f"{path} is a folder without {RUN_CONFIG_NAME}: give a config file or a run directory.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"config {path} is not valid YAML{where}: fix the syntax.") from None
    if not isinstance(raw, dict):
        raise UserError(f"config {path} must be a YAML mapping of keys to values.")
    raw = apply_overrides(raw, overrides or [])
    raw = _resolve_paths(raw, path.parent)
    return validate_config(raw, source=str(path))


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    """Validate a config dict, turning pydantic errors into one clear :class:`UserError` line."""
    try:
        return Config.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) and p not in ("bpnet", "encoder"))
        loc_full = _loc_str(err["loc"])
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            valid = _valid_keys(err["loc"][:-1], raw)
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
            hint = f" Did you mean '{close[0]}'?" if close else f" Valid keys: {', '.join(sorted(valid))}."
            raise UserError(f"{source}: unknown key '{loc_full}'.{hint}") from None
        if err["type"] == "missing":
            raise UserError(f"{source}: required key '{loc_full}' is missing; add it to the config.") from None
        msg = err["msg"].removeprefix("Value error, ")
        where = f" at '{loc}'" if loc else ""
        raise UserError(f"{source}: invalid value{where}: {msg}.") from None


def _loc_str(loc) -> str:
    out = ""
    for p in loc:
        if p in ("bpnet", "encoder") and out.endswith("model"):
            continue
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
    return out


def _valid_keys(loc, raw) -> list[str]:
    """Field names of the section at ``loc`` (a pydantic error location)."""
    model: Any = Config
    node: Any = raw
    for p in loc:
        if isinstance(p, int):
            node = node[p] if isinstance(node, list) else node
            continue
        if p in ("bpnet", "encoder") and model is not None and isinstance(node, dict):
            model = BPNetModel if p == "bpnet" else EncoderModel
            continue
        field = model.model_fields.get(p) if model is not None else None
        node = node.get(p) if isinstance(node, dict) else None
        model = _section_of(field, node)
    return list(model.model_fields) if model is not None else []


def _section_of(field, node):
    if field is None:
        return None
    ann = field.annotation
    if ann is not None and getattr(ann, "__origin__", None) is list:
        ann = ann.__args__[0]
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    if isinstance(node, dict) and "type" in node:  # the model union
        return EncoderModel if node.get("type") == "encoder" else BPNetModel
    return BPNetModel if field is Config.model_fields["model"] else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (value parsed as YAML) to a raw config dict.

    ``samples.0.plus=x.bw`` indexes lists. Raises :class:`UserError` on a malformed override.
    """
    raw = json.loads(json.dumps(raw))
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set expects key.sub=value, got '{item}'.")
        key, value = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise UserError(f"--set expects key.sub=value, got '{item}'.")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            parsed = value
        node: Any = raw
        for p in parts[:-1]:
            if isinstance(node, list):
                node = node[_index(p, item)]
            else:
                node = node.setdefault(p, {})
            if not isinstance(node, (dict, list)):
                raise UserError(f"--set {item}: '{p}' is a value, not a section.")
        last = parts[-1]
        if isinstance(node, list):
            node[_index(last, item)] = parsed
        else:
            if parts == ["model", "type"] and node.get("type", "bpnet") != parsed:
                # Switching model type: keys of the other model's section no longer apply.
                keep = (EncoderModel if parsed == "encoder" else BPNetModel).model_fields
                for k in [k for k in node if k not in keep]:
                    del node[k]
            node[last] = parsed
    return raw


def _index(p: str, item: str) -> int:
    try:
        return int(p)
    except ValueError:
        raise UserError(f"--set {item}: '{p}' must be a list index (0, 1, ...).") from None


def _resolve_paths(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    def fix(v):
        if isinstance(v, str) and v and "://" not in v and not Path(v).is_absolute():
            return str((base / v).resolve())
        return v

    for k in PATH_FIELDS:
        if k in raw:
            raw[k] = fix(raw[k])
    for s in raw.get("samples") or []:
        if isinstance(s, dict):
            for k in SAMPLE_PATH_FIELDS:
                if k in s:
                    s[k] = fix(s[k])
            for r in s.get("replicates") or []:
                if isinstance(r, dict):
                    for k in SAMPLE_PATH_FIELDS:
                        if k in r:
                            r[k] = fix(r[k])
    return raw


def dump_config(cfg: Config) -> str:
    """The config as YAML text (all defaults filled in)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def save_run_config(cfg: Config) -> Path:
    """Write the resolved config to ``RUN/config.yaml`` (atomically) and return its path."""
    from seq2reads.atomic import write_text_atomic

    return write_text_atomic(cfg.run_path / RUN_CONFIG_NAME, dump_config(cfg))


def load_run_config(run_dir: str | Path, overrides: list[str] | None = None) -> Config:
    """The config saved in a run directory (written by ``prepare``/``train``), with overrides."""
    run_dir = Path(run_dir)
    p = run_dir / RUN_CONFIG_NAME
    if run_dir.is_file():
        return load_config(run_dir, overrides)
    if not p.exists():
        raise UserError(
            f"{run_dir} is not a run directory (no {RUN_CONFIG_NAME}): run `seq2reads prepare CONFIG` "
            "and `seq2reads train CONFIG` first, or give the run_dir named in your config."
        )
    return load_config(p, overrides)

"""Job configuration: YAML files with ``--set section.key=value`` overrides, validated up front.

A long cluster job must not fail at hour three on a typo, so every key is checked before anything
runs: an unknown key, a value of the wrong type or out of range is one line naming the key.
The schema is the dataclasses below; their defaults are the documented defaults.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional, Union, get_args, get_origin

import yaml

from singe_dist.errors import SingeError
from singe_dist.import_spec import is_import_spec, parse_import_spec
from singe_dist.plan.limits import DEFAULT_ALLOCATION, LIMITS, check_allocation, check_limit
from singe_dist.relevance.criterion_config import CriterionConfig


@dataclass
class RunConfig:
    out_dir: str = "runs/prune"
    overwrite: bool = False  # an existing run directory is never replaced unless this is true
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = 0  # also checkpoint every N fine-tune iterations (0: only after each step)
    eval_after_prune: bool = True  # also evaluate right after each removal, before fine-tuning
    eval_after_step: bool = True  # evaluate after each step's fine-tuning (false: the baseline and final model only)
    latency_batch_sizes: list[int] = field(default_factory=lambda: [1, 8])


@dataclass
class ModelConfig:
    arch: str = "digits_resnet"  # a name of `singe-dist models`, or your own: "package.module:factory"
    num_classes: int = 10
    checkpoint: Optional[str] = None  # baseline weights (a singe-dist checkpoint or a state dict)
    ignored_layers: list[str] = field(default_factory=list)


@dataclass
class DataConfig:
    """Webdataset shards (``singe-dist shards`` writes them from an ImageFolder tree or the digits)."""

    train: str = "runs/data/digits/train-{000000..000001}.tar"  # brace pattern, path list or URL
    val: str = "runs/data/digits/val-000000.tar"
    train_samples: Optional[int] = None  # size of one training epoch, to turn epochs into iterations
    image_size: int = 224
    resize_size: Optional[int] = None  # eval resize before the center crop (default image_size * 256/224)
    crop_scale_min: float = 0.08  # RandomResizedCrop lower scale
    hflip: bool = True  # horizontal flips (off for digits and text)
    batch_size: int = 64
    eval_batch_size: int = 256
    num_workers: int = 2
    shuffle_buffer: int = 1000
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass(frozen=True)
class CriterionSection(CriterionConfig):
    """The criterion (:class:`CriterionConfig`; the registry's default, magnitude L2) plus how a job feeds it."""

    calibration_batches: int = 4  # fresh batches per pruning step (per rank with split=data)
    split: Literal["data", "channels"] = "data"  # how ranks share relevance work (channels: path=channel only)


@dataclass
class PruneConfig:
    metric: Literal["macs", "params"] = "macs"
    remove_fraction: float = 0.5
    steps: int = 5  # T pruning steps
    schedule: Literal["linear", "cosine", "exponential"] = "linear"
    min_keep_fraction: float = 0.1
    min_keep: int = 1
    round_to: int = 1
    normalize_by_cost: bool = False
    allocation: Literal["global", "uniform", "search"] = DEFAULT_ALLOCATION  # channels each group loses (plan/select.py)
    max_remove_fraction: float = 1.0  # cap on the fraction of any group's original width removed (global)
    substeps: int = 1  # greedy: split each step's removal in this many, relevance re-estimated in between
    bn_batches: int = 4  # calibration batches that re-estimate BatchNorm statistics after each removal (0: off)
    reconstruct_batches: int = 0  # calibration batches that refit the removed channels' readers (plan/reconstruct.py)
    # allocation=search (engine/search.py): candidates BN re-estimated on bn_batches, scored on search_batches
    search_candidates: int = 8
    search_spread: float = 0.5  # a candidate weighs each group's share of the removal by U[1 - s, 1 + s]
    search_batches: int = 8
    search_score: Literal["loss", "top1"] = "top1"

    def policy(self, original_sizes: dict[str, int] | None = None):  # noqa: ANN201 (plan.select.Policy)
        """How this section chooses channels, as the planner's :class:`Policy` (the one place a config
        becomes one; imported here lazily, as configs load without torch)."""
        from singe_dist.plan.select import Constraints, Policy

        return Policy(self.metric, Constraints(self.min_keep_fraction, self.min_keep, self.round_to,
                                               self.max_remove_fraction),
                      self.allocation, self.normalize_by_cost, original_sizes)


DISTILL_WEIGHT = 0.5  # finetune.distill_weight by default when model.checkpoint is set (temperature 4)


@dataclass
class FinetuneConfig:
    iters_per_step: int = 50  # F
    final_epochs: float = 1.0  # E (needs data.train_samples for shards)
    final_iters: Optional[int] = None  # overrides final_epochs when set
    # the learning-rate schedule (singe_dist/engine/lr.py says what each key does)
    lr: float = 0.01  # the peak
    lr_shape: Literal["cosine", "linear", "constant", "step"] = "cosine"
    lr_span: Literal["phase", "job"] = "phase"  # one shape per fine-tuning phase, or over the job's fine-tuning
    lr_rewind: bool = False  # the last iterations of the baseline's own schedule (train.lr, train.iters)
    warmup_iters: int = 0
    lr_milestones: list[float] = field(default_factory=lambda: [0.6, 0.8])  # lr_shape=step: fractions of the span
    lr_gamma: float = 0.1  # lr_shape=step: the factor at each milestone
    momentum: float = 0.9
    weight_decay: float = 1e-4
    label_smoothing: float = 0.0
    amp: bool = True  # mixed precision on GPU (ignored on CPU)
    # weight of the KL to the unpruned model's logits (0: plain cross-entropy); None: DISTILL_WEIGHT when
    # model.checkpoint is set (a trained model to distil from), else 0. Chosen on the development split:
    # docs/BENCHMARKS.md, criterion quality on Fashion-MNIST (+1.0 / +1.3 points at 70% / 85% of MACs)
    distill_weight: Optional[float] = None
    distill_temperature: float = 4.0
    log_every: int = 10


@dataclass
class TrainConfig:
    """Baseline training (``singe-dist train``)."""

    iters: int = 300
    lr: float = 0.1


@dataclass
class TrackingConfig:
    """MLflow. ``uri`` falls back to ``MLFLOW_TRACKING_URI``, then to a SQLite file beside the run directory."""

    enabled: bool = True
    uri: Optional[str] = None
    experiment: str = "singe-dist"
    run_name: Optional[str] = None
    log_model: bool = True
    register_model: Optional[str] = None  # registered model name, if any
    connect_timeout_s: float = 10.0  # an unreachable server fails the job at start-up within this time


@dataclass
class DistributedConfig:
    """Ray Train workers. ``num_workers: 0`` runs the loop in this process, without Ray."""

    num_workers: int = 2
    use_gpu: Literal["auto", "true", "false"] = "auto"  # auto: GPUs when the cluster has them
    cpus_per_worker: float = 1.0
    torch_threads: int = 0  # intra-op threads per worker (0: cpus_per_worker, at least 1)
    max_failures: int = 0  # worker-group restarts (from the last checkpoint) before the job fails
    storage_path: Optional[str] = None  # Ray Train storage (shared FS / s3:// on multi-node; default run dir)
    address: Optional[str] = None  # Ray cluster ("auto", "ray://..."); default: RAY_ADDRESS, else a local runtime
    timeout_s: int = 1800  # process-group (Gloo/NCCL) collective timeout
    start_timeout_s: float = 300.0  # the worker group must start (and restart) within this, else the job stops


@dataclass
class JobConfig:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    criterion: CriterionSection = field(default_factory=CriterionSection)
    prune: PruneConfig = field(default_factory=PruneConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    # Validated once: load_config validates (train, eval), the entry point of a pruning job checks it
    # (check_job), and what it hands on (the launcher, the Ray driver, each worker's PruneJob) is not
    # checked again: a checked config says so. Not dataclass fields: neither logged nor compared.
    _valid: ClassVar[bool] = False
    _checked: ClassVar[bool] = False

    @property
    def checked(self) -> bool:
        """Whether :meth:`check_job` passed on this config (or on the driver's, for a Ray worker's copy)."""
        return self._checked

    def _validate_prune(self) -> None:
        for key in LIMITS:  # the budget and what a group may lose: the rules Budget and Constraints apply
            check_limit(key, getattr(self.prune, key), f"config prune.{key}")
        _check(self.prune.steps >= 1, "prune.steps", "must be >= 1", self.prune.steps)
        _check(self.prune.substeps >= 1, "prune.substeps", "must be >= 1", self.prune.substeps)
        for key in ("bn_batches", "reconstruct_batches"):
            _check(getattr(self.prune, key) >= 0, f"prune.{key}", "must be >= 0", getattr(self.prune, key))
        _check(self.prune.search_candidates >= 1, "prune.search_candidates", "must be >= 1", self.prune.search_candidates)
        _check(0 <= self.prune.search_spread < 1, "prune.search_spread", "must be in [0, 1)", self.prune.search_spread)
        _check(self.prune.search_batches >= 1, "prune.search_batches", "must be >= 1", self.prune.search_batches)
        check_allocation(self.prune.allocation, self.prune.normalize_by_cost, "config prune.")

    def validate(self) -> JobConfig:
        """Range checks that types alone cannot express."""
        self._validate_prune()
        if self.finetune.distill_weight is None:  # the default: distil when there is a trained model to distil from
            self.finetune.distill_weight = DISTILL_WEIGHT if self.model.checkpoint is not None else 0.0
        _check(0.0 <= self.finetune.distill_weight <= 1.0, "finetune.distill_weight", "must be in [0, 1]",
               self.finetune.distill_weight)
        _check(self.finetune.distill_temperature > 0, "finetune.distill_temperature", "must be > 0",
               self.finetune.distill_temperature)
        _check(self.criterion.calibration_batches >= 1, "criterion.calibration_batches", "must be >= 1",
               self.criterion.calibration_batches)
        _check(self.finetune.iters_per_step >= 0, "finetune.iters_per_step", "must be >= 0", self.finetune.iters_per_step)
        _check(self.finetune.final_epochs >= 0, "finetune.final_epochs", "must be >= 0", self.finetune.final_epochs)
        _check(self.finetune.final_iters is None or self.finetune.final_iters >= 0, "finetune.final_iters",
               "must be >= 0", self.finetune.final_iters)
        _check(self.finetune.lr > 0, "finetune.lr", "must be > 0", self.finetune.lr)
        _check(self.finetune.warmup_iters >= 0, "finetune.warmup_iters", "must be >= 0", self.finetune.warmup_iters)
        milestones = self.finetune.lr_milestones
        _check(all(0 < m < 1 for m in milestones) and milestones == sorted(milestones), "finetune.lr_milestones",
               "must be increasing fractions of the span, each in (0, 1)", milestones)
        _check(0 < self.finetune.lr_gamma <= 1, "finetune.lr_gamma", "must be in (0, 1]", self.finetune.lr_gamma)
        _check(self.train.lr > 0, "train.lr", "must be > 0", self.train.lr)
        _check(0 <= self.finetune.label_smoothing < 1, "finetune.label_smoothing", "must be in [0, 1)",
               self.finetune.label_smoothing)
        _check(self.finetune.log_every >= 1, "finetune.log_every", "must be >= 1", self.finetune.log_every)
        _check(self.data.image_size >= 8, "data.image_size", "must be >= 8", self.data.image_size)
        _check(self.data.batch_size >= 1, "data.batch_size", "must be >= 1", self.data.batch_size)
        _check(self.data.eval_batch_size >= 1, "data.eval_batch_size", "must be >= 1", self.data.eval_batch_size)
        _check(self.data.num_workers >= 0, "data.num_workers", "must be >= 0", self.data.num_workers)
        _check(self.model.num_classes >= 2, "model.num_classes", "must be >= 2", self.model.num_classes)
        if is_import_spec(self.model.arch):  # its syntax here; the import itself is the preflight's (load_model)
            try:
                parse_import_spec(self.model.arch)
            except SingeError as exc:
                raise SingeError(f"config model.arch: {exc}") from None
        _check(self.run.checkpoint_every >= 0, "run.checkpoint_every", "must be >= 0", self.run.checkpoint_every)
        _check(self.train.iters >= 1, "train.iters", "must be >= 1", self.train.iters)
        _check(self.distributed.num_workers >= 0, "distributed.num_workers", "must be >= 0", self.distributed.num_workers)
        _check(self.distributed.cpus_per_worker > 0, "distributed.cpus_per_worker", "must be > 0",
               self.distributed.cpus_per_worker)
        _check(self.distributed.max_failures >= 0, "distributed.max_failures", "must be >= 0", self.distributed.max_failures)
        _check(self.distributed.start_timeout_s > 0, "distributed.start_timeout_s", "must be > 0",
               self.distributed.start_timeout_s)
        _check(self.distributed.torch_threads >= 0, "distributed.torch_threads", "must be >= 0", self.distributed.torch_threads)
        _check(self.tracking.connect_timeout_s > 0, "tracking.connect_timeout_s", "must be > 0",
               self.tracking.connect_timeout_s)
        _check(0 < self.data.crop_scale_min <= 1, "data.crop_scale_min", "must be in (0, 1]", self.data.crop_scale_min)
        _check(len(self.data.mean) == 3 and len(self.data.std) == 3 and min(self.data.std) > 0, "data.mean/std",
               "must be three numbers each, std > 0", None)
        # rules across keys (the criterion's own, e.g. replan needs name=singe, are CriterionConfig's)
        _check(self.criterion.split != "channels" or self.criterion.path == "channel", "criterion.split=channels",
               "needs criterion.path=channel", None)
        self._valid = True
        return self

    def check_job(self) -> JobConfig:
        """:meth:`validate`, plus the rules only a pruning job needs (``train`` and ``eval`` ignore those
        keys): checked before the job starts anything, so a Ray job refuses before any worker starts.
        Once: a checked config returns at once."""
        if self._checked:
            return self
        if not self._valid:
            self.validate()
        ft = self.finetune
        _check(ft.final_iters is not None or ft.final_epochs == 0 or self.data.train_samples is not None,
               "finetune.final_epochs", "needs data.train_samples (or set finetune.final_iters)", None)
        _check(ft.distill_weight == 0 or self.model.checkpoint is not None, "finetune.distill_weight > 0",
               "needs model.checkpoint: the unpruned model to distil from", None)
        self._checked = True
        return self


def _check(ok: bool, key: str, rule: str, value: object) -> None:
    if not ok:
        raise SingeError(f"config {key} {rule}" + ("" if value is None else f", got {value!r}"))


def _convert(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint, converting only lossless cases (int -> float)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except SingeError as exc:
                errors.append(exc)
        raise errors[0]
    if origin is Literal:
        # YAML reads an unquoted true/false (`--set distributed.use_gpu=false`) as a bool: take it as the word
        if isinstance(value, bool) and str(value).lower() in get_args(hint):
            return str(value).lower()
        if value not in get_args(hint):
            raise SingeError(f"config {key} must be one of {', '.join(map(repr, get_args(hint)))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise SingeError(f"config {key} must be a list, got {type(value).__name__} {value!r}")
        (item,) = get_args(hint)
        return [_convert(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise SingeError(f"config {key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SingeError(f"config {key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SingeError(f"config {key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise SingeError(f"config {key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config type {hint!r} for {key}")


def _build(cls: type, data: Any, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise SingeError(f"config {prefix or 'file'} must be a mapping of keys to values, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise SingeError(f"unknown config key {where!r} (known: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        kwargs[name] = _build(hint, value, key) if dataclasses.is_dataclass(hint) else _convert(value, hint, key)
    return cls(**kwargs)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SingeError(f"override {item!r} must look like section.key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML config (or the defaults), apply ``key=value`` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise SingeError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise SingeError(f"config file {path} is not valid YAML{where}") from None
        if not isinstance(data, dict):
            raise SingeError(f"config file {path} must be a mapping of sections, got {type(data).__name__}")
    for item in overrides or []:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise SingeError(f"override {item!r}: {k!r} is not a section")
        node[keys[-1]] = value
    return config_from_dict(data)


def config_from_dict(data: dict[str, Any], checked: bool = False) -> JobConfig:
    """A validated config from nested ``{section: {key: value}}`` (a YAML file's, or :func:`config_to_dict`'s).

    ``checked``: the dict is a checked job's (a Ray worker's copy of the driver's): built, not checked again.
    """
    config = _build(JobConfig, data, "")
    if not checked:
        return config.validate()
    config._valid = config._checked = True
    return config


def config_to_dict(config: JobConfig) -> dict[str, Any]:
    """Nested ``{section: {key: value}}``: what :func:`config_from_dict` reads (Ray hands it to workers)."""
    return dataclasses.asdict(config)


def flatten(config: JobConfig) -> dict[str, Any]:
    """``{"section.key": value}``: MLflow params and report headers."""
    return {f"{s}.{k}": v for s, section in config_to_dict(config).items() for k, v in section.items()}

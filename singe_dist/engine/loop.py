"""The entwined prune / fine-tune loop (design notes, section 4), for one rank of any world size.

Each of the T steps: relevance on fresh calibration batches (sums and counts all-reduced across ranks)
-> every rank takes the same global decision from the same scores (plan hashes compared) -> channels
removed -> optimiser (and DDP wrapper) rebuilt -> F fine-tune iterations -> exact evaluation. After
the last step, E epochs of fine-tuning. A checkpoint after the baseline evaluation, after every step
(and every N iterations if asked) holds the plan so far, weights, optimiser, position and RNG state, so
``resume`` continues exactly; a resumed checkpoint is validated first (:func:`read_job_checkpoint`).
Every evaluation must count the baseline's number of samples: a validation shard that disappears
mid-run stops the job instead of shortening the evaluation.
"""

from __future__ import annotations

import copy
import io
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from singe_dist.atomic import atomic_write, atomic_write_text, remove_stale_temporaries
from singe_dist.checkpoint import (
    CHECKPOINT_FORMAT,
    atomic_torch_save,
    load_model,
    load_state_dict_strict,
    read_checkpoint,
)
from singe_dist.config import JobConfig, flatten
from singe_dist.data.streams import DataStreams
from singe_dist.engine.collective import Collective, LocalCollective, assert_same_plan
from singe_dist.engine.latency import measure_latency
from singe_dist.engine.rng import restore_rng, rng_state, seed_phase
from singe_dist.engine.schedule import cumulative_fractions
from singe_dist.engine.train import eval_sums, make_optimizer, recalibrate_batchnorm, result_from_sums, train_steps
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.cost import measure
from singe_dist.plan.decide import Budget, decide_and_remove
from singe_dist.plan.plan import Plan, apply_plan
from singe_dist.plan.select import Constraints
from singe_dist.relevance.criteria import accumulate, compute_relevance, planned_path_sums, planned_scores
from singe_dist.relevance.groups import example_input, find_groups
from singe_dist.tracking.base import NullTracker, Tracker

# Fault injection, for tests (docs/RELIABILITY.md, fault matrix). SINGE_DIST_FAIL_AT="<phase>:<k>[:<rank>]"
# makes rank <rank> (every rank when omitted) fail once, in pruning step k (1-based, as in the logs):
#   relevance:k   during step k's relevance: the local sums are computed, not yet all-reduced
#   finetune:k    in the middle of step k's fine-tuning, after iteration F // 2 + 1 of its F
#                 (k = prune.steps + 1: the final fine-tune)
#   checkpoint:k  while rank 0 writes the checkpoint that closes step k (k = 0: the one after the
#                 baseline evaluation; k = prune.steps + 1: the last one): half of the temporary file
#                 is written and flushed, it is never renamed over the previous checkpoint
#   step:k        right after the checkpoint that closes step k
# SINGE_DIST_FAIL_MODE=raise (default) raises a RuntimeError (a crash inside Python, the job's own
# error handling runs); =exit ends the process at once with os._exit(17), as a kill would. A marker
# file .fault-injected-<phase>-<k> in the run directory makes a fault fire once: Ray restarts a
# worker group with the same environment. The older SINGE_DIST_FAIL_AT_STEP="k[:rank]" is "step:k[:rank]".
FAIL_AT_ENV = "SINGE_DIST_FAIL_AT"
FAIL_ENV = "SINGE_DIST_FAIL_AT_STEP"
FAIL_MODE_ENV = "SINGE_DIST_FAIL_MODE"
FAIL_PHASES = ("relevance", "finetune", "checkpoint", "step")
FAIL_EXIT_CODE = 17
CHECKPOINT_NAME = "checkpoint.pt"
# files of a run directory written with atomic_write: a resume removes the temporaries a kill left
RUN_FILES = (CHECKPOINT_NAME, "report.json", "plan.json", "pruned.pt")


@dataclass
class Position:
    """Where the schedule is: ``step`` in [0, T] (T = final fine-tune), and how far into fine-tuning."""

    step: int = 0
    pruned: bool = False  # the removal of ``step`` is done; fine-tuning is under way
    iteration: int = 0  # fine-tune iterations done in this phase


@dataclass(frozen=True)
class Fault:
    """A fault to inject (see ``FAIL_AT_ENV``): ``phase`` of step ``step``, on ``rank`` (None: all ranks)."""

    phase: str
    step: int
    rank: int | None = None


def fault_from_env(environ: Any = None) -> Fault | None:
    """The fault that ``SINGE_DIST_FAIL_AT`` (or the older ``SINGE_DIST_FAIL_AT_STEP``) asks for, if any."""
    environ = os.environ if environ is None else environ
    spec = environ.get(FAIL_AT_ENV)
    if spec:
        name, fields = FAIL_AT_ENV, spec.split(":")
    elif environ.get(FAIL_ENV):
        spec = environ[FAIL_ENV]
        name, fields = FAIL_ENV, ["step", *spec.split(":")]
    else:
        return None
    try:
        if fields[0] not in FAIL_PHASES or not 2 <= len(fields) <= 3:
            raise ValueError
        return Fault(fields[0], int(fields[1]), int(fields[2]) if len(fields) == 3 else None)
    except ValueError:
        raise SingeError(f"{name}={spec!r}: expected <phase>:<step>[:<rank>] with phase one of "
                         f"{', '.join(FAIL_PHASES)}") from None


def pick_device(kind: str, rank: int) -> torch.device:
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise SingeError("run.device is 'cuda' but no GPU is visible")
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def prepare_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Never overwrite a previous run unless asked: its checkpoints may be hours of work."""
    if resume:
        if not (run_dir / CHECKPOINT_NAME).is_file():
            raise SingeError(f"cannot resume: {run_dir / CHECKPOINT_NAME} does not exist")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not overwrite:
            raise SingeError(f"run directory {run_dir} already exists and is not empty: pass --resume to continue "
                             "it or --set run.overwrite=true to replace it")
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)


def read_job_checkpoint(source: Path, config: JobConfig) -> tuple[dict[str, Any], Plan, nn.Module, Position]:
    """Read a job checkpoint to resume and check that it is whole and fits ``config``: one line if not.

    The plan is replayed on the configured architecture and the weights must fit the pruned model
    exactly (names and shapes), so a checkpoint whose plan and weights disagree is refused.
    """
    ckpt = read_checkpoint(source)  # weights_only=True: a pickle that would run code is refused
    missing = [key for key in ("plan", "state_dict", "position", "report", "rng") if ckpt.get(key) is None]
    if missing:
        raise SingeError(f"checkpoint {source} cannot be resumed: it is not a pruning-job checkpoint "
                         f"(no {missing[0]!r}); pass it as model.checkpoint to start a new run instead")
    plan = Plan.from_dict(ckpt["plan"], source=f"plan in checkpoint {source}")
    model_cfg = config.model
    if (plan.arch, plan.num_classes) != (model_cfg.arch, model_cfg.num_classes):
        raise SingeError(f"checkpoint {source} is for model {plan.arch!r} with {plan.num_classes} classes, the config "
                         f"for {model_cfg.arch!r} with {model_cfg.num_classes}: resume with the run's own config")
    try:
        position = Position(**ckpt["position"])
    except TypeError:
        raise SingeError(f"checkpoint {source} cannot be resumed: its position {ckpt['position']!r} is not "
                         "{step, pruned, iteration}") from None
    if not 0 <= position.step <= config.prune.steps:
        raise SingeError(f"checkpoint {source} is at step {position.step}, beyond prune.steps={config.prune.steps}: "
                         "resume with the run's own config")
    model = apply_plan(build_model(plan.arch, plan.num_classes), plan)
    load_state_dict_strict(model, ckpt["state_dict"], str(source))
    return ckpt, plan, model, position


class Progress:
    """A tqdm bar on a terminal, a log line every ``every`` iterations otherwise (cluster logs)."""

    def __init__(self, total: int, desc: str, log: Callable[[str], None], every: int, enabled: bool) -> None:
        self.desc, self.log, self.every, self.total = desc, log, every, total
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)
        self.enabled = enabled

    def __call__(self, iteration: int, loss: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.4f}")
        elif self.enabled and ((iteration + 1) % self.every == 0 or iteration + 1 == self.total):
            self.log(f"      {self.desc}: iteration {iteration + 1}/{self.total} loss {loss:.4f}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class PruneJob:
    """One rank's view of a pruning job. Call :meth:`run`."""

    def __init__(
        self,
        config: JobConfig,
        collective: Collective | None = None,
        tracker: Tracker | None = None,
        resume: bool | Path = False,
        log: Callable[[str], None] = print,
        checkpoint_hook: Callable[[Path, Position], None] | None = None,
        run_dir_ready: bool = False,
        tags: dict[str, str] | None = None,
    ) -> None:
        """``resume``: True continues from the run directory's checkpoint, a path from that checkpoint
        file (Ray Train hands restarted workers the last one it stored). ``run_dir_ready``: a launcher
        already checked and created the run directory (Ray restarts must not trip the overwrite guard).
        """
        self.config = config.check_job()
        self.col = collective or LocalCollective()
        self.rank0 = self.col.rank == 0
        self.tracker = tracker if (tracker is not None and self.rank0) else NullTracker()
        self.resume = resume
        self.run_dir_ready = run_dir_ready
        self.tags = dict(tags or {})  # extra tracking tags from a launcher (e.g. the driver's git commit)
        self._log = log
        self.checkpoint_hook = checkpoint_hook
        self.run_dir = Path(config.run.out_dir)
        self.input_size = (3, config.data.image_size, config.data.image_size)
        self.criterion = config.criterion
        self.budget = Budget(config.prune.metric, config.prune.remove_fraction)
        self.constraints = Constraints(config.prune.min_keep_fraction, config.prune.min_keep, config.prune.round_to,
                                       config.prune.max_remove_fraction)
        self.fault = fault_from_env()

    def log(self, message: str) -> None:
        if self.rank0:
            self._log(message)

    # ----------------------------------------------------------------------------------- helpers
    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        """Exact distributed evaluation: every rank's share, correct and total counts all-reduced."""
        totals = self.col.all_reduce_sum(eval_sums(model, self.streams.val()))
        expected = (self.report.get("baseline") or {}).get("samples")
        if expected is not None and int(totals[3]) != expected:  # every rank sees the same totals: all stop
            gone = self.streams.vanished("val")
            why = f"{gone[0]} has disappeared" if gone else "a validation shard became unreadable"
            raise SingeError(f"validation data changed during the run: {int(totals[3])} samples evaluated, "
                             f"{expected} at the start ({why}); restore it and continue with --resume")
        return result_from_sums(totals).as_dict()

    def _skipped(self) -> int:
        return int(self.col.all_reduce_sum(torch.tensor([float(self.streams.skipped())], dtype=torch.float64))[0])

    def _calibration(self, streams: DataStreams, step: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The first ``count`` calibration batches of ``step``, read and decoded once per step.

        Relevance, re-planning and BN re-estimation of one step (and of its greedy sub-steps) read
        prefixes of the same deterministic stream; only the current step's batches are kept.
        """
        key = (id(streams), step)
        cached = self._calibration_cache.get(key, [])
        if len(cached) < count:
            cached = streams.calibration(step, count)
            self._calibration_cache = {k: v for k, v in self._calibration_cache.items() if k[1] == step}
            self._calibration_cache[key] = cached
        return cached[:count]

    def _relevance_streams(self) -> DataStreams:
        """split=channels: every rank reads the same calibration batches (rank 0 of 1's stream)."""
        return self._shared_streams if self.config.criterion.split == "channels" else self.streams

    def _recalibrate(self, model: nn.Module, step: int) -> None:
        """Re-estimate BatchNorm statistics after a removal (``prune.bn_batches``), identical on every rank."""
        if self.config.prune.bn_batches:
            batches = self._calibration(self.streams, step, self.config.prune.bn_batches)
            recalibrate_batchnorm(model, batches, self.col.all_reduce_sum)

    def _rescore(self, model: nn.Module, groups: list, plan: dict[str, list[int]], step: int) -> dict[str, torch.Tensor]:
        """The planned channels' shares of the plan's joint removal (``criterion.replan``), all-reduced."""
        batches = self._calibration(self._relevance_streams(), step, self.config.criterion.calibration_batches)
        sums = planned_path_sums(model, groups, batches, self.criterion, plan)
        sums.load_flat(self.col.all_reduce_sum(sums.flatten()))  # ratios: the same whichever way ranks share data
        return planned_scores(sums, plan)

    def _teacher(self) -> nn.Module:
        """The unpruned model to distil from: the configured baseline, frozen, on this rank's device."""
        cfg = self.config.model  # model.checkpoint is set: JobConfig.check_job
        teacher, _, _, _ = load_model(cfg.checkpoint, cfg.arch, cfg.num_classes)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.to(self.device).eval()

    def _relevance(self, model: nn.Module, step: int) -> tuple[list, dict[str, torch.Tensor]]:
        groups = find_groups(model, example_input(model, self.input_size), self.config.model.ignored_layers)
        if not self.criterion.needs_data:
            scores = compute_relevance(model, groups, None, self.criterion)
            self._maybe_fail("relevance", step + 1)
            return groups, scores
        split_channels = self.config.criterion.split == "channels"
        share = (self.col.rank, self.col.world_size) if split_channels else (0, 1)  # channels shared out, or data
        batches = self._calibration(self._relevance_streams(), step, self.config.criterion.calibration_batches)
        sums = accumulate(model, groups, batches, self.criterion, channel_share=share)
        self._maybe_fail("relevance", step + 1)
        sums.load_flat(self.col.all_reduce_sum(sums.flatten()))
        if split_channels:  # the same samples were counted by every rank
            sums.samples //= self.col.world_size
            sums.loss_sum /= self.col.world_size
        return groups, sums.finalize(self.criterion.score_reduce)

    def _save(self, model: nn.Module, plan: Plan, position: Position, optimizer: torch.optim.Optimizer | None,
              closes_step: int | None = None) -> None:
        """Checkpoint (rank 0 writes, atomically). ``closes_step``: the step this checkpoint ends (faults)."""
        self.report["wall_time_s"]["total"] = self._elapsed()
        if self.rank0:
            payload = {
                "format": CHECKPOINT_FORMAT,
                "arch": plan.arch,
                "num_classes": plan.num_classes,
                "plan": plan.to_dict(),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                "optimizer": optimizer.state_dict() if optimizer is not None else None,
                "position": asdict(position),
                "rng": rng_state(),
                "report": json.dumps(self.report),
            }
            if closes_step is not None and self._fault_due("checkpoint", closes_step):
                self._torn_write(payload, self.run_dir / CHECKPOINT_NAME, closes_step)
            atomic_torch_save(payload, self.run_dir / CHECKPOINT_NAME)
        self.col.barrier()
        if self.checkpoint_hook is not None:
            self.checkpoint_hook(self.run_dir / CHECKPOINT_NAME, position)

    def _elapsed(self) -> float:
        started, before = self._clock
        return before + time.perf_counter() - started

    # ----------------------------------------------------------------------------------- fault injection
    def _fault_marker(self, phase: str, step: int) -> Path:
        return self.run_dir / f".fault-injected-{phase}-{step}"

    def _fault_due(self, phase: str, step: int) -> bool:
        """Is the injected fault (``SINGE_DIST_FAIL_AT``) this one, on this rank, and not fired yet?"""
        f = self.fault
        return (f is not None and f.phase == phase and f.step == step and f.rank in (None, self.col.rank)
                and not self._fault_marker(phase, step).exists())

    def _maybe_fail(self, phase: str, step: int, detail: str = "") -> None:
        if self._fault_due(phase, step):
            self._fail(phase, step, detail)

    def _fail(self, phase: str, step: int, detail: str = "") -> None:
        self._fault_marker(phase, step).touch()
        where = {"step": f"after step {step}", "relevance": f"during the relevance of step {step}",
                 "finetune": f"during the fine-tuning of step {step}",
                 "checkpoint": f"while writing the checkpoint of step {step}"}[phase] + detail
        self._log(f"fault injection: rank {self.col.rank} fails {where}")
        if os.environ.get(FAIL_MODE_ENV, "raise") == "exit":
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(FAIL_EXIT_CODE)
        raise RuntimeError(f"fault injection: rank {self.col.rank} failed {where}")

    def _torn_write(self, payload: dict[str, Any], path: Path, step: int) -> None:
        """The checkpoint fault: the process fails with half the temporary file written, before the rename."""
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        data = buffer.getvalue()

        def half_then_fail(fh: Any) -> None:
            fh.write(data[: len(data) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            self._fail("checkpoint", step, f" ({len(data) // 2} of {len(data)} bytes written)")

        atomic_write(path, half_then_fail)

    def _finetune(self, model: nn.Module, phase: int, iters: int, position: Position, plan: Plan,
                  opt_state: dict | None) -> float:
        """``iters`` iterations of phase ``phase`` from ``position.iteration`` (a resumed phase skips ahead)."""
        cfg = self.config.finetune
        optimizer = make_optimizer(model, cfg.lr, cfg.momentum, cfg.weight_decay)
        if opt_state is not None:
            optimizer.load_state_dict(opt_state)
        start = position.iteration
        if start >= iters:
            return float("nan")
        seed_phase(self.config.run.seed, phase, self.col.rank)
        stream = self.streams.train(phase, skip=start)
        if opt_state is not None and self._resume_rng is not None:  # mid-phase: every generator where it was
            restore_rng(self._resume_rng)
        train_model = self.col.wrap(model)
        desc = f"fine-tune step {phase + 1}" if phase < self.config.prune.steps else "final fine-tune"
        progress = Progress(iters, desc, self.log, cfg.log_every, self.rank0)
        losses: list[float] = []

        def on_step(i: int, loss: float) -> None:
            progress(i, loss)
            losses.append(loss)
            if (i + 1) % cfg.log_every == 0:
                self.tracker.log_metrics({"finetune_loss": loss}, step=self._global_iter + i + 1)
            every = self.config.run.checkpoint_every
            if every and (i + 1) % every == 0 and i + 1 < iters:
                self._save(model, plan, Position(position.step, True, i + 1), optimizer)
            if i + 1 == iters // 2 + 1:
                self._maybe_fail("finetune", phase + 1, f" (iteration {i + 1} of {iters})")

        try:
            train_steps(train_model, optimizer, stream, iters - start, cfg.lr, cfg.label_smoothing,
                        first_step=start, total_steps=iters, on_step=on_step, amp=cfg.amp, teacher=self.teacher,
                        distill_weight=cfg.distill_weight, temperature=cfg.distill_temperature)
        finally:
            progress.close()
        self._global_iter += iters
        return float(np.mean(losses)) if losses else float("nan")

    # ----------------------------------------------------------------------------------- the run
    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except BaseException as exc:
            self.tracker.fail(exc)
            raise

    def _run(self) -> dict[str, Any]:
        cfg = self.config
        if self.rank0 and not self.run_dir_ready:
            prepare_run_dir(self.run_dir, self.resume is True, cfg.run.overwrite)
        if self.rank0 and self.resume:  # no writer of this run is left: clear what a write killed half-way left
            for stale in remove_stale_temporaries(self.run_dir, RUN_FILES):
                self.log(f"removed {stale.name}, left by a write that was interrupted")
        self.col.barrier()
        self.device = pick_device(cfg.run.device, self.col.rank)
        seed_phase(cfg.run.seed, -1, 0)
        self.streams = DataStreams(cfg.data, cfg.model.num_classes, self.col.rank, self.col.world_size, cfg.run.seed)
        if cfg.criterion.split == "channels":  # the same calibration data on every rank (rank 0 of 1's stream)
            self._shared_streams = DataStreams(cfg.data, cfg.model.num_classes, 0, 1, cfg.run.seed)
        self.num_classes = cfg.model.num_classes
        self._resume_rng = None
        self._calibration_cache: dict[tuple[int, int], list] = {}
        self._global_iter = 0
        opt_state = None

        # the original architecture defines 100% of the budget, also when the checkpoint is already pruned
        original_model = build_model(cfg.model.arch, cfg.model.num_classes)
        original = measure(original_model, self.input_size)
        original_sizes = {g.id: g.size for g in find_groups(original_model, example_input(original_model, self.input_size),
                                                              cfg.model.ignored_layers)}
        del original_model

        if self.resume:
            source = self.resume if isinstance(self.resume, Path) else self.run_dir / CHECKPOINT_NAME
            ckpt, plan, model, position = read_job_checkpoint(source, cfg)
            self.report = json.loads(ckpt["report"])
            opt_state = ckpt["optimizer"] if position.pruned else None
            self._resume_rng = ckpt["rng"]
            self._global_iter = sum(cfg.finetune.iters_per_step for _ in range(min(position.step, cfg.prune.steps)))
            self.log(f"resuming {self.run_dir} at step {position.step + 1}, iteration {position.iteration}")
        else:
            model, arch, num_classes, base_plan = load_model(cfg.model.checkpoint, cfg.model.arch, cfg.model.num_classes)
            plan = Plan(arch, num_classes, self.input_size, list(base_plan.steps) if base_plan else [])
            position = Position()
            self.report = {"format": "singe-dist/report/v1", "config": flatten(cfg), "world_size": self.col.world_size,
                           "original": {"macs": original.macs, "params": original.params}, "steps": [],
                           "wall_time_s": {"baseline_eval": 0.0, "relevance": 0.0, "finetune": 0.0, "eval": 0.0}}
        model = model.to(self.device)
        self.teacher = self._teacher() if cfg.finetune.distill_weight > 0 else None
        self.tracker.start(flatten(cfg), {"model": cfg.model.arch, "criterion": cfg.criterion.name,
                                          "world_size": str(self.col.world_size), "resumed": str(bool(self.resume)),
                                          **self.tags})
        walls = self.report["wall_time_s"]
        self._clock = (time.perf_counter(), walls.get("total", 0.0))  # wall time survives a resume

        if "baseline" not in self.report:
            t0 = time.perf_counter()
            fp = measure(model, self.input_size)
            self.report["baseline"] = {**self._evaluate(model), "macs": fp.macs, "params": fp.params}
            walls["baseline_eval"] = time.perf_counter() - t0
            b = self.report["baseline"]
            self.log(f"baseline: top-1 {b['top1']:.4f}, {fp.macs / 1e6:.2f}M MACs, {fp.params / 1e6:.3f}M params")
            self.tracker.log_metrics({"top1": b["top1"], "top5": b["top5"], "loss": b["loss"], "macs": fp.macs,
                                      "params": fp.params, "fraction_removed": 1 - fp.get(self.budget.metric)
                                      / original.get(self.budget.metric)}, step=0)
            self._save(model, plan, position, None, closes_step=0)  # --resume works from here on
            self._maybe_fail("step", 0)

        fractions = cumulative_fractions(cfg.prune.remove_fraction, cfg.prune.steps, cfg.prune.schedule)
        for t in range(position.step, cfg.prune.steps):
            row: dict[str, Any]
            if position.step == t and position.pruned:  # resumed in the middle of this step's fine-tuning
                row = self.report.pop("pending_row")
            else:
                t_rel, removed, target = 0.0, 0, 0.0
                previous = fractions[t - 1] if t > 0 else 0.0
                k = cfg.prune.substeps
                for sub in range(k):  # greedy sub-steps: relevance re-estimated on what is left
                    t0 = time.perf_counter()
                    groups, scores = self._relevance(model, t)
                    t_rel += time.perf_counter() - t0
                    target = self.budget.target(original, previous + (fractions[t] - previous) * (sub + 1) / k)
                    selection = decide_and_remove(
                        model, groups, scores, self.input_size, cfg.prune.metric, target, self.constraints,
                        cfg.prune.normalize_by_cost, original_sizes, cfg.prune.allocation,
                        rescore=lambda plan, g=groups: self._rescore(model, g, plan, t), rounds=cfg.criterion.replan)
                    plan.steps.append(selection.channels)
                    assert_same_plan(self.col, plan)
                    removed += sum(len(c) for c in selection.channels.values())
                    t0 = time.perf_counter()
                    self._recalibrate(model, t)
                    walls["bn_recalibration"] = walls.get("bn_recalibration", 0.0) + time.perf_counter() - t0
                fp = measure(model, self.input_size)
                row = {"step": t + 1, "target_fraction": fractions[t],
                       "fraction_removed": 1 - fp.get(cfg.prune.metric) / original.get(cfg.prune.metric),
                       "macs": fp.macs, "params": fp.params, "channels_removed": removed,
                       "relevance_s": t_rel, "budget_reached": selection.reached,
                       "target": target, "last_unit_cost": selection.last_unit_cost}
                walls["relevance"] += t_rel
                if cfg.run.eval_after_prune:
                    t0 = time.perf_counter()
                    row["pruned"] = self._evaluate(model)
                    walls["eval"] += time.perf_counter() - t0
                self.log(f"step {t + 1}/{cfg.prune.steps}: removed {row['channels_removed']} channels, "
                         f"{row['fraction_removed']:.1%} of {cfg.prune.metric} gone"
                         + (f", top-1 {row['pruned']['top1']:.4f} before fine-tuning" if "pruned" in row else ""))
                self.tracker.log_step(row, {g: s.tolist() for g, s in scores.items()})
                position = Position(t, True, 0)
                self.report["pending_row"] = row
                opt_state = None
            t0 = time.perf_counter()
            row["finetune_loss"] = self._finetune(model, t, cfg.finetune.iters_per_step, position, plan, opt_state)
            opt_state = None
            row["finetune_s"] = time.perf_counter() - t0
            walls["finetune"] += row["finetune_s"]
            t0 = time.perf_counter()
            row["finetuned"] = self._evaluate(model)
            row["eval_s"] = time.perf_counter() - t0
            walls["eval"] += row["eval_s"]
            row["skipped_samples"] = self._skipped()
            self.report.pop("pending_row", None)
            self.report["steps"].append(row)
            self.log(f"      after fine-tuning: top-1 {row['finetuned']['top1']:.4f}")
            self.tracker.log_metrics(_step_metrics(row), step=t + 1)
            position = Position(t + 1, False, 0)
            self._save(model, plan, position, None, closes_step=t + 1)
            self._maybe_fail("step", t + 1)

        # final fine-tune
        final_iters = self._final_iters()
        if "final" not in self.report:
            t0 = time.perf_counter()
            self._finetune(model, cfg.prune.steps, final_iters, position, plan, opt_state)
            walls["final_finetune"] = time.perf_counter() - t0
            fp = measure(model, self.input_size)
            self.report["final"] = {**self._evaluate(model), "macs": fp.macs, "params": fp.params,
                                    "fraction_removed": 1 - fp.get(cfg.prune.metric) / original.get(cfg.prune.metric)}
            self._save(model, plan, Position(cfg.prune.steps, True, final_iters), None, closes_step=cfg.prune.steps + 1)
        walls["total"] = self._elapsed()
        if self.rank0:
            self._finish(model, plan, original_sizes)
        self.col.barrier()
        return self.report

    def _final_iters(self) -> int:
        ft, data = self.config.finetune, self.config.data
        if ft.final_iters is not None:
            return ft.final_iters
        if ft.final_epochs == 0:
            return 0
        per_iter = data.batch_size * self.col.world_size  # data.train_samples is set: JobConfig.check_job
        return max(1, round(ft.final_epochs * data.train_samples / per_iter))

    def _finish(self, model: nn.Module, plan: Plan, original_sizes: dict[str, int]) -> None:
        cfg = self.config
        cpu_model = build_model(plan.arch, plan.num_classes)
        apply_plan(cpu_model, plan)
        cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        latency = {}
        base_model = build_model(cfg.model.arch, cfg.model.num_classes)
        for name, m in (("baseline", base_model), ("final", cpu_model)):
            latency[name] = measure_latency(m, self.input_size, cfg.run.latency_batch_sizes, "cpu")
            if torch.cuda.is_available():  # on a copy: the model handed to the tracker stays on the CPU
                latency[name].update(measure_latency(copy.deepcopy(m), self.input_size, cfg.run.latency_batch_sizes,
                                                     self.device))
        self.report["latency"] = latency
        widths = {gid: int(s) for gid, s in _group_widths(cpu_model, self.input_size, cfg.model.ignored_layers).items()}
        self.report["channels"] = {gid: {"before": original_sizes.get(gid), "after": w} for gid, w in widths.items()}
        self.report["plan_digest"] = plan.digest()
        plan.save(self.run_dir / "plan.json")
        from singe_dist.checkpoint import save_checkpoint

        save_checkpoint(self.run_dir / "pruned.pt", cpu_model, plan.arch, plan.num_classes, plan)
        self._note_tracking_lost()
        atomic_write_text(self.run_dir / "report.json", json.dumps(self.report, indent=1))
        self.log(summary_table(self.report))
        self.tracker.finish(self.run_dir, self.report, cpu_model, self.input_size)
        if self._note_tracking_lost():  # lost while logging the results: the report says so too
            atomic_write_text(self.run_dir / "report.json", json.dumps(self.report, indent=1))

    def _note_tracking_lost(self) -> bool:
        """Record in the report why tracking stopped mid-run, if it did; True when that is news."""
        lost = getattr(self.tracker, "lost", None)
        if not lost or self.report.get("tracking_lost") == lost:
            return False
        self.report["tracking_lost"] = lost
        return True


def _group_widths(model: nn.Module, input_size: tuple[int, int, int], ignored: list[str]) -> dict[str, int]:
    return {g.id: g.size for g in find_groups(model, example_input(model, input_size), ignored)}


def _step_metrics(row: dict[str, Any]) -> dict[str, float]:
    metrics = {"macs": row["macs"], "params": row["params"], "fraction_removed": row["fraction_removed"],
               "relevance_s": row["relevance_s"], "finetune_s": row["finetune_s"],
               "skipped_samples": row["skipped_samples"], "channels_removed": row["channels_removed"]}
    for key in ("top1", "top5", "loss"):
        metrics[key] = row["finetuned"][key]
        if "pruned" in row:
            metrics[f"pruned_{key}"] = row["pruned"][key]
    return metrics


def summary_table(report: dict[str, Any]) -> str:
    """The before/after table printed at the end of a run."""
    from singe_dist.report import format_table, human

    base, final = report["baseline"], report["final"]
    lat = report.get("latency", {})
    rows = [["baseline", base["top1"], base["top5"], human(base["params"]), human(base["macs"]),
             f"{lat.get('baseline', {}).get('cpu_b1_ms', float('nan')):.2f}"]]
    for r in report["steps"]:
        rows.append([f"step {r['step']}", r["finetuned"]["top1"], r["finetuned"]["top5"], human(r["params"]),
                     human(r["macs"]), ""])
    rows.append(["final", final["top1"], final["top5"], human(final["params"]), human(final["macs"]),
                 f"{lat.get('final', {}).get('cpu_b1_ms', float('nan')):.2f}"])
    return format_table(["model", "top-1", "top-5", "params", "MACs", "CPU ms (b=1)"], rows)

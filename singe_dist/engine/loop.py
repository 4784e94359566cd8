"""The entwined prune / fine-tune schedule (design notes, section 4), for one rank of any world size.

The baseline is evaluated; then each of the T steps: relevance on fresh calibration batches (sums and
counts all-reduced across ranks, :mod:`~singe_dist.engine.step_relevance`) -> every rank takes the same
global decision from the same scores (plan hashes compared) -> channels removed -> optimiser (and DDP
wrapper) rebuilt -> F fine-tune iterations -> exact evaluation. After the last step, E epochs of
fine-tuning. A job checkpoint (:mod:`~singe_dist.engine.run_dir`) follows the baseline evaluation and
every step (and every N iterations if asked), so ``resume`` continues exactly. The report is built with
:mod:`singe_dist.report`. Every evaluation must count the baseline's number of samples: a validation
shard that disappears mid-run stops the job instead of shortening the evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from singe_dist.checkpoint import load_model
from singe_dist.config import JobConfig, flatten
from singe_dist.data.streams import DataStreams
from singe_dist.engine.collective import Collective, LocalCollective, assert_same_plan
from singe_dist.engine.faults import injector_from_env
from singe_dist.engine.latency import measure_latencies
from singe_dist.engine.lr import finetune_schedule
from singe_dist.engine.rng import restore_rng, seed_phase
from singe_dist.engine.run_dir import (CHECKPOINT_NAME, Position, clear_interrupted_writes, prepare_run_dir,
                                      read_job_checkpoint, write_job_checkpoint, write_report, write_run_outputs)
from singe_dist.engine.schedule import cumulative_fractions
from singe_dist.engine.step_relevance import StepRelevance
from singe_dist.engine.train import Progress, eval_sums, make_optimizer, pick_device, result_from_sums, train_steps
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.cost import Footprint, measure
from singe_dist.plan.decide import Budget, decide_and_remove
from singe_dist.plan.plan import Plan, apply_plan
from singe_dist.relevance.groups import example_input, find_groups
from singe_dist.report import (add_wall_time, baseline_entry, baseline_metrics, final_entry, finish_row, new_report,
                               step_metrics, step_row, summary_table)
from singe_dist.tracking.base import NullTracker, Tracker


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
        self.config = config.check_job()  # at once when a launcher (or the Ray driver) checked it
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
        p = config.prune
        self.budget = Budget(p.metric, p.remove_fraction)
        self.policy = p.policy()  # original widths added when the run starts
        self.fractions = cumulative_fractions(p.remove_fraction, p.steps, p.schedule)
        self.faults = injector_from_env(self.run_dir, self.col.rank, log)  # NO_FAULTS unless a test asks
        # set when the run starts (_start)
        self.device = torch.device("cpu")
        self.streams: DataStreams | None = None
        self.relevance: StepRelevance | None = None
        self.report: dict[str, Any] = {}
        self.original = Footprint(0, 0)  # the unpruned architecture: 100% of the budget
        self.original_sizes: dict[str, int] = {}
        self.teacher: nn.Module | None = None
        self._resume_rng: dict[str, Any] | None = None
        self._global_iter = 0
        self._clock = (time.perf_counter(), 0.0)

    def log(self, message: str) -> None:
        if self.rank0:
            self._log(message)

    # ----------------------------------------------------------------------------------- the schedule
    def run(self) -> dict[str, Any]:
        try:
            return self._run()
        except BaseException as exc:
            self.tracker.fail(exc)
            raise

    def _run(self) -> dict[str, Any]:
        model, plan, position, opt_state = self._start()
        if "baseline" not in self.report:
            self._baseline(model, plan, position)
        for t in range(position.step, self.config.prune.steps):
            position = self._step(model, plan, t, position, opt_state)
            opt_state = None
        if "final" not in self.report:
            self._final_finetune(model, plan, position, opt_state)
        self.report["wall_time_s"]["total"] = self._elapsed()
        self.report["peak_memory_mb"] = self._peak_memory()
        if self.rank0:
            self._finish(model, plan)
        self.col.barrier()
        return self.report

    def _start(self) -> tuple[nn.Module, Plan, Position, dict | None]:
        """Run directory, data, the model to prune (new, or where the checkpoint left it), tracker."""
        cfg = self.config
        if self.rank0 and not self.run_dir_ready:
            prepare_run_dir(self.run_dir, self.resume is True, cfg.run.overwrite)
        if self.rank0 and self.resume:  # no writer of this run is left: clear what a write killed half-way left
            for stale in clear_interrupted_writes(self.run_dir):
                self.log(f"removed {stale.name}, left by a write that was interrupted")
        self.col.barrier()
        self.device = pick_device(cfg.run.device, self.col.rank)
        seed_phase(cfg.run.seed, -1, 0)
        self.streams = DataStreams(cfg.data, cfg.model.num_classes, self.col.rank, self.col.world_size, cfg.run.seed)
        self.relevance = StepRelevance(cfg, self.col, self.streams, self.faults, self.input_size, self.log)

        # the original architecture defines 100% of the budget, also when the checkpoint is already pruned
        original_model = build_model(cfg.model.arch, cfg.model.num_classes)
        self.original = measure(original_model, self.input_size)
        self.original_sizes = _group_widths(original_model, self.input_size, cfg.model.ignored_layers)
        self.policy = dataclasses.replace(self.policy, original_sizes=self.original_sizes)
        del original_model

        opt_state = None
        if self.resume:
            source = self.resume if isinstance(self.resume, Path) else self.run_dir / CHECKPOINT_NAME
            ckpt, plan, model, position = read_job_checkpoint(source, cfg)
            self.report = json.loads(ckpt["report"])
            opt_state = ckpt["optimizer"] if position.pruned else None
            self._resume_rng = ckpt["rng"]
            self._global_iter = cfg.finetune.iters_per_step * min(position.step, cfg.prune.steps)
            self.log(f"resuming {self.run_dir} at step {position.step + 1}, iteration {position.iteration}")
        else:
            model, arch, num_classes, base_plan = load_model(cfg.model.checkpoint, cfg.model.arch, cfg.model.num_classes)
            plan = Plan(arch, num_classes, self.input_size, list(base_plan.steps) if base_plan else [])
            position = Position()
            self.report = new_report(flatten(cfg), self.col.world_size, self.original)
        model = model.to(self.device)
        self.teacher = self._teacher() if cfg.finetune.distill_weight > 0 else None
        self.tracker.start(flatten(cfg), {"model": cfg.model.arch, "criterion": cfg.criterion.name,
                                          "world_size": str(self.col.world_size), "resumed": str(bool(self.resume)),
                                          **self.tags})
        self._clock = (time.perf_counter(), self.report["wall_time_s"].get("total", 0.0))  # survives a resume
        return model, plan, position, opt_state

    def _baseline(self, model: nn.Module, plan: Plan, position: Position) -> None:
        t0 = time.perf_counter()
        cost = measure(model, self.input_size)
        self.report["baseline"] = baseline_entry(self._evaluate(model), cost)
        add_wall_time(self.report, "baseline_eval", time.perf_counter() - t0)
        b = self.report["baseline"]
        self.log(f"baseline: top-1 {b['top1']:.4f}, {cost.macs / 1e6:.2f}M MACs, {cost.params / 1e6:.3f}M params")
        self.tracker.log_metrics(baseline_metrics(self.report, cost, self.original, self.budget.metric), step=0)
        self._save(model, plan, position, None, closes_step=0)  # --resume works from here on
        self.faults.check("step", 0)

    def _step(self, model: nn.Module, plan: Plan, t: int, position: Position, opt_state: dict | None) -> Position:
        """Pruning step ``t`` (0-based): removal, unless resumed in its fine-tuning, then fine-tuning."""
        if position.step == t and position.pruned:  # resumed in the middle of this step's fine-tuning
            row = self.report["pending_row"]
        else:
            row = self.report["pending_row"] = self._prune(model, plan, t)
            position, opt_state = Position(t, True, 0), None
        t0 = time.perf_counter()
        loss = self._finetune(model, t, self.config.finetune.iters_per_step, position, plan, opt_state)
        finetune_s, t0 = time.perf_counter() - t0, time.perf_counter()
        finetuned = self._evaluate(model) if self.config.run.eval_after_step else None
        eval_s = time.perf_counter() - t0
        add_wall_time(self.report, "finetune", finetune_s)
        add_wall_time(self.report, "eval", eval_s)
        finish_row(row, loss, finetune_s, finetuned, eval_s, self._skipped())
        self.report.pop("pending_row")
        self.report["steps"].append(row)
        self.log(f"      after fine-tuning: top-1 {finetuned['top1']:.4f}" if finetuned else "      fine-tuned")
        self.tracker.log_metrics(step_metrics(row), step=t + 1)
        position = Position(t + 1, False, 0)
        self._save(model, plan, position, None, closes_step=t + 1)
        self.faults.check("step", t + 1)
        return position

    def _prune(self, model: nn.Module, plan: Plan, t: int) -> dict[str, Any]:
        """Step ``t``'s removal, in ``prune.substeps`` greedy sub-steps (relevance re-estimated in between)."""
        cfg, relevance = self.config, self.relevance
        assert relevance is not None
        t_rel, removed, k = 0.0, 0, cfg.prune.substeps
        previous = self.fractions[t - 1] if t > 0 else 0.0
        for sub in range(k):
            t0 = time.perf_counter()
            groups, scores = relevance.scores(model, t)
            t_rel += time.perf_counter() - t0
            target = self.budget.target(self.original, previous + (self.fractions[t] - previous) * (sub + 1) / k)
            policy = self._search(model, groups, scores, target, t) if self.policy.allocation == "search" else self.policy
            selection = decide_and_remove(
                model, groups, scores, self.input_size, target, policy,
                rescore=lambda plan, g=groups: relevance.rescore(model, g, plan, t), rounds=cfg.criterion.replan,
                before_removal=(lambda c: self._reconstruct(model, plan, groups, t, c))
                if cfg.prune.reconstruct_batches else None)
            plan.steps.append(selection.channels)
            assert_same_plan(self.col, plan)
            removed += sum(len(c) for c in selection.channels.values())
            t0 = time.perf_counter()
            relevance.recalibrate(model, t)
            add_wall_time(self.report, "bn_recalibration", time.perf_counter() - t0)
        row = step_row(t + 1, self.fractions[t], measure(model, self.input_size), self.original, cfg.prune.metric,
                       removed, t_rel, selection.reached, target, selection.last_unit_cost)
        add_wall_time(self.report, "relevance", t_rel)
        if cfg.run.eval_after_prune:
            t0 = time.perf_counter()
            row["pruned"] = self._evaluate(model)
            add_wall_time(self.report, "eval", time.perf_counter() - t0)
        self.log(f"step {t + 1}/{cfg.prune.steps}: removed {row['channels_removed']} channels, "
                 f"{row['fraction_removed']:.1%} of {cfg.prune.metric} gone"
                 + (f", top-1 {row['pruned']['top1']:.4f} before fine-tuning" if "pruned" in row else ""))
        self.tracker.log_step(row, {g: s.tolist() for g, s in scores.items()})
        return row

    def _reconstruct(self, model: nn.Module, plan: Plan, groups: list, t: int, channels: dict[str, list[int]]) -> None:
        """``prune.reconstruct_batches``: refit the readers first; a diverged rank stops here, not in its all-reduces."""
        assert_same_plan(self.col, dataclasses.replace(plan, steps=[*plan.steps, channels]))
        t0, forwards = time.perf_counter(), self.relevance.reconstruct(model, groups, t, channels)
        add_wall_time(self.report, "reconstruct", time.perf_counter() - t0)
        self.report["reconstruct_forward_batches"] = self.report.get("reconstruct_forward_batches", 0) + forwards

    def _search(self, model: nn.Module, groups: list, scores: dict, target: float, t: int):  # noqa: ANN201 (Policy)
        """``allocation=search``: the winning width candidate of step ``t`` (engine/search.py), on the step's
        calibration batches: the BatchNorm ones first, then the held-out ones that score."""
        from singe_dist.engine.search import search_policy

        cfg, relevance = self.config.prune, self.relevance
        batches = relevance.calibration(relevance.streams, t, cfg.bn_batches + cfg.search_batches)
        t0 = time.perf_counter()  # the search's own phase; reading the batches is the data's (BN reads them anyway)
        policy = search_policy(model, groups, scores, self.input_size, target, self.policy, cfg,
                               (batches[: cfg.bn_batches], batches[cfg.bn_batches:]), self.config.run.seed * 1009 + t,
                               (self.col.rank, self.col.world_size), self.col.all_reduce_sum, self.log)
        add_wall_time(self.report, "search", time.perf_counter() - t0)
        return policy

    def _final_finetune(self, model: nn.Module, plan: Plan, position: Position, opt_state: dict | None) -> None:
        steps, final_iters = self.config.prune.steps, self._final_iters()
        t0 = time.perf_counter()
        self._finetune(model, steps, final_iters, position, plan, opt_state)
        add_wall_time(self.report, "final_finetune", time.perf_counter() - t0)
        cost = measure(model, self.input_size)
        self.report["final"] = final_entry(self._evaluate(model), cost, self.original, self.config.prune.metric)
        self._save(model, plan, Position(steps, True, final_iters), None, closes_step=steps + 1)

    def _finish(self, model: nn.Module, plan: Plan) -> None:
        """Rank 0: latency, widths, the run's outputs, the summary table and the tracker's results."""
        cfg = self.config
        cpu_model = apply_plan(build_model(plan.arch, plan.num_classes), plan)
        cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        base_model = build_model(cfg.model.arch, cfg.model.num_classes)
        self.report["latency"] = measure_latencies({"baseline": base_model, "final": cpu_model}, self.input_size,
                                                   cfg.run.latency_batch_sizes, self.device)
        widths = _group_widths(cpu_model, self.input_size, cfg.model.ignored_layers)
        self.report["channels"] = {gid: {"before": self.original_sizes.get(gid), "after": w} for gid, w in widths.items()}
        self.report["plan_digest"] = plan.digest()
        self._note_tracking_lost()
        write_run_outputs(self.run_dir, plan, cpu_model, self.report)
        self.log(summary_table(self.report))
        self.tracker.finish(self.run_dir, self.report, cpu_model, self.input_size)
        if self._note_tracking_lost():  # lost while logging the results: the report says so too
            write_report(self.run_dir, self.report)

    # ----------------------------------------------------------------------------------- phases' parts
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
        assert self.streams is not None
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
                self.faults.check("finetune", phase + 1, f" (iteration {i + 1} of {iters})")

        schedule = finetune_schedule(cfg, self.config.train, iters, self._global_iter,
                                     self.config.finetune.iters_per_step * self.config.prune.steps + self._final_iters())
        try:
            train_steps(train_model, optimizer, stream, iters - start, schedule, cfg.label_smoothing,
                        first_step=start, total_steps=iters, on_step=on_step, amp=cfg.amp, teacher=self.teacher,
                        distill_weight=cfg.distill_weight, temperature=cfg.distill_temperature)
        finally:
            progress.close()
        self.col.broadcast_buffers(model)  # one model on every rank: evaluated, scored and checkpointed as one
        self._global_iter += iters
        return float(np.mean(losses)) if losses else float("nan")

    def _final_iters(self) -> int:
        ft, data = self.config.finetune, self.config.data
        if ft.final_iters is not None:
            return ft.final_iters
        if ft.final_epochs == 0:
            return 0
        per_iter = data.batch_size * self.col.world_size  # data.train_samples is set: JobConfig.check_job
        return max(1, round(ft.final_epochs * data.train_samples / per_iter))

    def _evaluate(self, model: nn.Module) -> dict[str, float]:
        """Exact distributed evaluation: every rank's share, correct and total counts all-reduced."""
        assert self.streams is not None
        totals = self.col.all_reduce_sum(eval_sums(model, self.streams.val()))
        expected = (self.report.get("baseline") or {}).get("samples")
        if expected is not None and int(totals[3]) != expected:  # every rank sees the same totals: all stop
            gone = self.streams.vanished("val")
            why = f"{gone[0]} has disappeared" if gone else "a validation shard became unreadable"
            raise SingeError(f"validation data changed during the run: {int(totals[3])} samples evaluated, "
                             f"{expected} at the start ({why}); restore it and continue with --resume")
        return result_from_sums(totals).as_dict()

    def _peak_memory(self) -> dict[str, list[float]]:
        """Every rank's peak resident set (its own process, not its DataLoader processes), and peak CUDA memory."""
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        peak = {"rss": round(maxrss / (2**20 if sys.platform == "darwin" else 1024), 1)}
        if self.device.type == "cuda":
            peak["cuda"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        ranks = self.col.all_gather_object(peak)
        return {key: [r[key] for r in ranks] for key in peak}

    def _skipped(self) -> int:
        assert self.streams is not None
        return int(self.col.all_reduce_sum(torch.tensor([float(self.streams.skipped())], dtype=torch.float64))[0])

    def _teacher(self) -> nn.Module:
        """The unpruned model to distil from: the configured baseline, frozen, on this rank's device."""
        cfg = self.config.model  # model.checkpoint is set: JobConfig.check_job
        teacher, _, _, _ = load_model(cfg.checkpoint, cfg.arch, cfg.num_classes)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher.to(self.device).eval()

    def _save(self, model: nn.Module, plan: Plan, position: Position, optimizer: torch.optim.Optimizer | None,
              closes_step: int | None = None) -> None:
        """Job checkpoint (rank 0 writes, atomically). ``closes_step``: the step this checkpoint ends (faults)."""
        self.report["wall_time_s"]["total"] = self._elapsed()
        path = self.run_dir / CHECKPOINT_NAME
        if self.rank0:
            write_job_checkpoint(path, model, plan, position, optimizer, self.report,
                                 write=self.faults.checkpoint_writer(closes_step))
        self.col.barrier()
        if self.checkpoint_hook is not None:
            self.checkpoint_hook(path, position)

    def _elapsed(self) -> float:
        started, before = self._clock
        return before + time.perf_counter() - started

    def _note_tracking_lost(self) -> bool:
        """Record in the report why tracking stopped mid-run, if it did; True when that is news."""
        lost = getattr(self.tracker, "lost", None)
        if not lost or self.report.get("tracking_lost") == lost:
            return False
        self.report["tracking_lost"] = lost
        return True


def _group_widths(model: nn.Module, input_size: tuple[int, int, int], ignored: list[str]) -> dict[str, int]:
    return {g.id: int(g.size) for g in find_groups(model, example_input(model, input_size), ignored)}

"""A job's run directory and its job checkpoint (``checkpoint.pt``), the file ``--resume`` continues from.

The run directory holds ``checkpoint.pt``, ``report.json``, ``plan.json`` and ``pruned.pt``, each
written atomically; a previous run is never overwritten unless asked (:func:`prepare_run_dir`). The job
checkpoint is a model checkpoint (:func:`singe_dist.checkpoint.save_checkpoint`: architecture, plan so
far, weights) plus where the schedule is (:class:`Position`), the optimiser, every random generator's
state and the report so far, so a resume continues exactly; :func:`read_job_checkpoint` validates one
before anything is resumed from it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from singe_dist.errors import SingeError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from singe_dist.config import JobConfig
    from singe_dist.plan.plan import Plan

CHECKPOINT_NAME = "checkpoint.pt"
# files of a run directory written with atomic_write: a resume removes the temporaries a kill left
RUN_FILES = (CHECKPOINT_NAME, "report.json", "plan.json", "pruned.pt")


@dataclass
class Position:
    """Where the schedule is: ``step`` in [0, T] (T = final fine-tune), and how far into fine-tuning."""

    step: int = 0
    pruned: bool = False  # the removal of ``step`` is done; fine-tuning is under way
    iteration: int = 0  # fine-tune iterations done in this phase


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


def clear_interrupted_writes(run_dir: Path) -> list[Path]:
    """Remove the temporaries a write killed half-way left (no writer of the run is left); the removed."""
    from singe_dist.atomic import remove_stale_temporaries

    return remove_stale_temporaries(run_dir, RUN_FILES)


def write_job_checkpoint(path: Path, model: nn.Module, plan: Plan, position: Position,
                         optimizer: torch.optim.Optimizer | None, report: dict[str, Any],
                         write: Callable[[Any, Path], None] | None = None) -> None:
    """The model checkpoint of ``model`` and ``plan``, plus what a resume needs.

    ``write``: how the payload is stored (None: atomically; fault injection tears it).
    """
    from singe_dist.checkpoint import atomic_torch_save, save_checkpoint
    from singe_dist.engine.rng import rng_state

    extra = {"optimizer": optimizer.state_dict() if optimizer is not None else None, "position": asdict(position),
             "rng": rng_state(), "report": json.dumps(report)}
    save_checkpoint(path, model, plan.arch, plan.num_classes, plan, extra, write=write or atomic_torch_save)


def read_job_checkpoint(source: Path, config: JobConfig) -> tuple[dict[str, Any], Plan, nn.Module, Position]:
    """Read a job checkpoint to resume and check that it is whole and fits ``config``: one line if not.

    The plan is replayed on the configured architecture and the weights must fit the pruned model
    exactly (names and shapes), so a checkpoint whose plan and weights disagree is refused.
    """
    from singe_dist.checkpoint import load_state_dict_strict, read_checkpoint
    from singe_dist.models import build_model
    from singe_dist.plan.plan import Plan, apply_plan

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


def write_report(run_dir: Path, report: dict[str, Any]) -> None:
    from singe_dist.atomic import atomic_write_text

    atomic_write_text(run_dir / "report.json", json.dumps(report, indent=1))


def write_run_outputs(run_dir: Path, plan: Plan, model: nn.Module, report: dict[str, Any]) -> None:
    """What a finished run leaves: ``plan.json``, ``pruned.pt`` (architecture + plan + weights), ``report.json``."""
    from singe_dist.checkpoint import save_checkpoint

    plan.save(run_dir / "plan.json")
    save_checkpoint(run_dir / "pruned.pt", model, plan.arch, plan.num_classes, plan)
    write_report(run_dir, report)


def resume_hint(run_dir: str | Path, command: str) -> str:
    """One line: where the last checkpoint is and the command that continues the run."""
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return f"no checkpoint was written yet ({checkpoint}): run the same command again to start over"
    step = _checkpoint_step(checkpoint)
    where = f" (after step {step})" if step is not None else ""
    return f"the last checkpoint {checkpoint}{where} is intact: continue with `{command} --resume`"


def _checkpoint_step(path: Path) -> int | None:
    try:
        import torch

        position = torch.load(path, map_location="cpu", weights_only=True).get("position") or {}
        return int(position["step"])
    except Exception:  # noqa: BLE001 - the hint is best effort; --resume validates the file itself
        return None

"""The embedded-default demo: digits -> baseline -> SInGE relevance -> prune 50% of MACs -> table.

Runs in about a minute on two CPU cores with no network: the digits ship with scikit-learn.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from singe_dist.checkpoint import save_checkpoint
from singe_dist.data.digits import NUM_CLASSES, digits_tensors
from singe_dist.models import build_model
from singe_dist.engine.train import evaluate, make_optimizer, tensor_batches, train_steps
from singe_dist.plan.cost import measure
from singe_dist.plan.decide import Budget, prune_one_shot
from singe_dist.relevance.criteria import CriterionConfig
from singe_dist.report import format_table, human


@dataclass(frozen=True)
class DemoConfig:
    image_size: int = 32
    train_steps: int = 300
    finetune_steps: int = 150
    batch_size: int = 64
    lr: float = 0.1
    calibration_samples: int = 256
    remove_fraction: float = 0.5
    seed: int = 0


def run_demo(out_dir: Path, config: DemoConfig = DemoConfig(), log=print) -> dict[str, dict[str, float]]:  # noqa: ANN001
    """Run the demo, write the pruned checkpoint and plan to ``out_dir``, return the table's rows."""
    torch.manual_seed(config.seed)
    size = config.image_size
    input_size = (3, size, size)
    x_tr, y_tr = digits_tensors("train", size)
    x_va, y_va = digits_tensors("val", size)
    val = lambda: tensor_batches(x_va, y_va, 256)  # noqa: E731

    log(f"[1/4] training digits_resnet on {len(x_tr)} digits ({config.train_steps} steps)")
    t0 = time.perf_counter()
    model = build_model("digits_resnet", NUM_CLASSES)
    opt = make_optimizer(model, config.lr)
    train_steps(model, opt, tensor_batches(x_tr, y_tr, config.batch_size, shuffle=True, seed=config.seed, repeat=True),
                config.train_steps, config.lr)
    rows = {"baseline": {**evaluate(model, val()).as_dict(), **measure(model, input_size).__dict__}}
    log(f"      baseline top-1 {rows['baseline']['top1']:.4f} ({time.perf_counter() - t0:.1f}s)")

    log(f"[2/4] SInGE relevance on {config.calibration_samples} calibration digits, pruning "
        f"{config.remove_fraction:.0%} of MACs in one shot")
    t0 = time.perf_counter()
    pruned = copy.deepcopy(model)
    calibration = list(tensor_batches(x_tr[: config.calibration_samples], y_tr[: config.calibration_samples], 64))
    plan, _ = prune_one_shot(pruned, "digits_resnet", NUM_CLASSES, input_size, calibration,
                             CriterionConfig(name="singe"), Budget("macs", config.remove_fraction))
    rows["pruned (no fine-tune)"] = {**evaluate(pruned, val()).as_dict(), **measure(pruned, input_size).__dict__}
    log(f"      removed {plan.removed_channels} channels ({time.perf_counter() - t0:.1f}s)")

    log(f"[3/4] fine-tuning the pruned model ({config.finetune_steps} steps)")
    opt = make_optimizer(pruned, config.lr / 10)
    train_steps(pruned, opt, tensor_batches(x_tr, y_tr, config.batch_size, shuffle=True, seed=config.seed + 1, repeat=True),
                config.finetune_steps, config.lr / 10)
    rows["pruned + fine-tuned"] = {**evaluate(pruned, val()).as_dict(), **measure(pruned, input_size).__dict__}

    out_dir.mkdir(parents=True, exist_ok=True)
    plan.save(out_dir / "plan.json")
    save_checkpoint(out_dir / "pruned.pt", pruned, "digits_resnet", NUM_CLASSES, plan)
    log(f"[4/4] wrote {out_dir / 'plan.json'} and {out_dir / 'pruned.pt'}\n")
    base = rows["baseline"]
    log(format_table(
        ["model", "top-1", "top-5", "params", "MACs", "MACs kept"],
        [[name, r["top1"], r["top5"], human(r["params"]), human(r["macs"]), f"{r['macs'] / base['macs']:.1%}"]
         for name, r in rows.items()],
    ))
    return rows

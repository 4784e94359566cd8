"""A fair fight (protocol v2): our recipes beside Torch-Pruning's own, on converged baselines, at equal budgets.

Protocol v2, fixed and committed before any of its cells ran (issue 26). What is compared is a *recipe*:
how channels are chosen (criterion and allocation) *and* how the pruned network is trained afterwards.

- **Data.** Fashion-MNIST shards, as in ``quality.py``: training shards 0-4 (50,000 images) train the
  baselines, calibrate and fine-tune; shard 5 (10,000 training images never trained on) is the
  *development* split on which settings are chosen; the 10,000 test images are the split the table
  *reports*. Nothing is chosen on the test split.
- **Converged baselines.** One ``cifar_resnet20`` per seed (0, 1, 2), SGD (Nesterov 0.9, weight decay
  1e-4), batch 128, cosine from 0.1 over ``BASELINE_EPOCHS`` epochs of 390 iterations. The development
  top-1 is measured after every epoch and stored with the baseline (its *curve*). A baseline counts as
  converged when its last ``PLATEAU_EPOCHS`` epochs gained less than ``PLATEAU_GAIN`` top-1 on the
  development split; the table says for each seed whether it did. (The 1,000-iteration baselines of
  protocol v1 were still learning: fine-tuning then continued training.)
- **Budgets** are fractions of the baseline's training iterations: ``none`` (0: prune, re-estimate
  BatchNorm, evaluate), ``short`` (2%) and ``long`` (10%). A recipe's fine-tuning iterations, in every
  phase together, are exactly its budget; sparse learning before pruning is paid from the same budget
  (``tp group-sl`` spends half its budget on it and half on fine-tuning, the ratio of Torch-Pruning's
  script, which runs both for the same number of epochs).
- **Same for every recipe:** the seed's baseline, the MACs target (50 / 70 / 85% of the MACs removed,
  counted by ``singe_dist.plan.cost``; the classifier is never pruned), the calibration images (the
  seed's 2 x 128 step-0 calibration batches: relevance or Taylor gradients, and BatchNorm re-estimation
  after removal, which every recipe gets), the training stream and the seed.
- **Peers run through their own code.** Torch-Pruning's rows call ``torch_pruning`` directly: its
  ``BasePruner`` (``MetaPruner``) with its ``GroupMagnitudeImportance(p=2)`` (uniform and global), its
  ``GroupTaylorImportance``, and DepGraph's ``GroupNormPruner`` with sparse learning (``reg=5e-4``, its
  README's ResNet-56 command, ``GroupMagnitudeImportance(p=2, normalizer='max')``, global). Pruning
  is its progressive loop (``iterative_steps=400``, ``pruning_ratio=1.0`` with the per-group cap of
  0.9, as in its ``prune_to_target_macs``), stopped, group by group in its ``interactive`` mode, at the
  first group that reaches the MACs target, so every recipe lands on the target within one channel.
  They fine-tune with Torch-Pruning's benchmark recipe: SGD 0.01, momentum 0.9, weight decay 5e-4,
  the rate divided by 10 at 60% and 80% of the iterations, no distillation (sparse learning: the same
  schedule, no weight decay).
- **Our rows** are the job itself (``PruneJob``, in-process) with the config's defaults where the row
  says nothing: ``default`` is today's default recipe (magnitude L2, uniform allocation, distillation,
  3 entwined steps, 10% of the fine-tuning after each step and the rest at the end, cosine per phase
  from 0.02).
- **Fine-tuning schedules** (``finetune.lr_*`` keys) are rows of their own, registered in
  ``docs/results/fair-jobs.txt`` before their cells, at equal iterations.
- **Choice and report.** The default recipe is the row with the best mean *development* top-1 over
  the 70% and 85% budgets at the long budget; the table reports the *test* split, mean ± std over seeds.
- **Compute** per cell is counted in training-pass equivalents (one forward and backward of a batch of
  128 = 1; a forward alone = 1/3): fine-tuning and sparse-learning iterations, the teacher's forward
  when distilling, the relevance passes, BatchNorm re-estimation.

    uv run python benchmarks/fair_fight.py --work runs/bench/fair --out docs/results/fair-s0 --seeds 0 --phase baselines
    uv run python benchmarks/fair_fight.py --work runs/bench/fair --out docs/results/fair-s0 --seeds 0 --recipes 'tp magnitude uniform' --fractions 0.7 --budgets long
    uv run python benchmarks/fair_fight.py --merge docs/results/fair-*.json --out docs/results/fair --plot docs/plots/fair.png
    uv run python benchmarks/fair_fight.py --smoke        # seconds, on the bundled digits, for the test suite

Torch threads are pinned to 1 (``--threads``): on this 2-core machine torch's default of 2 is several
times slower, and two invocations (one per seed or recipe) use both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import job_config, prepare_data  # noqa: E402  (the same data and job base as protocol v1)

EPOCH = 390  # iterations of batch 128 in one pass over the 50,000 training images
BASELINE_EPOCHS = 10
PLATEAU_EPOCHS, PLATEAU_GAIN = 3, 0.003
BUDGETS = {"none": 0.0, "short": 0.02, "long": 0.10}
FRACTIONS = (0.5, 0.7, 0.85)


def _device(args: argparse.Namespace) -> torch.device:
    return torch.device("cuda" if args.device == "cuda" else "cpu")


def train_converged(args: argparse.Namespace, data: dict[str, str], seed: int) -> tuple[Path, dict]:
    """The seed's converged baseline, its development curve, and its top-1 on dev and test.

    Resumable epoch by epoch (``baseline-seedN.partial.pt`` holds weights, optimiser and curve): every
    epoch reads a training stream and torch seed of its own, so a resumed run trains the same network.
    """
    from singe_dist.checkpoint import atomic_torch_save, load_model, save_checkpoint
    from singe_dist.data.streams import DataStreams
    from singe_dist.engine.rng import seed_phase
    from singe_dist.engine.train import evaluate, make_optimizer, train_steps

    path = args.work / f"baseline-v2-seed{seed}.pt"
    summary_path = path.with_suffix(".json")
    if summary_path.is_file():
        return path, json.loads(summary_path.read_text())
    epochs, per_epoch = args.baseline_epochs, args.epoch_iters
    config = job_config(args, data, seed, args.work / "unused", ["model.checkpoint=null"], val="dev")
    streams = DataStreams(config.data, 10, seed=seed)
    seed_phase(seed, -2, 0)
    model, arch, _, _ = load_model(None, config.model.arch, 10)
    model = model.to(_device(args))
    optimizer = make_optimizer(model, config.train.lr, config.finetune.momentum, config.finetune.weight_decay)
    partial = path.with_suffix(".partial.pt")
    curve: list[dict] = []
    if partial.is_file():
        state = torch.load(partial, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        curve = state["curve"]
    t0 = time.perf_counter()
    for epoch in range(len(curve), epochs):
        seed_phase(seed, 1000 + epoch, 0)
        loss = train_steps(model, optimizer, streams.train(1000 + epoch), per_epoch, config.train.lr,
                           first_step=epoch * per_epoch, total_steps=epochs * per_epoch)
        dev = evaluate(model, streams.val()).top1
        curve.append({"epoch": epoch + 1, "iters": (epoch + 1) * per_epoch, "train_loss": loss, "dev_top1": dev})
        atomic_torch_save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "curve": curve}, partial)
        print(f"baseline seed {seed}: epoch {epoch + 1}/{epochs} loss {loss:.4f} dev top-1 {dev:.4f} "
              f"({time.perf_counter() - t0:.0f}s)", flush=True)
    save_checkpoint(path, model.cpu(), arch, 10)
    model = model.to(_device(args))
    test_config = job_config(args, data, seed, args.work / "unused", [], val="test")
    test = evaluate(model, DataStreams(test_config.data, 10, seed=seed, training=False).val()).top1
    summary = {"seed": seed, "iters": epochs * per_epoch, "curve": curve, "dev_top1": curve[-1]["dev_top1"],
               "test_top1": test, "converged": converged(curve)}
    from singe_dist.atomic import atomic_write_text

    atomic_write_text(summary_path, json.dumps(summary, indent=1))
    partial.unlink()
    return path, summary


def converged(curve: list[dict]) -> bool:
    """The protocol's plateau rule: the last ``PLATEAU_EPOCHS`` epochs gained less than ``PLATEAU_GAIN``."""
    if len(curve) <= PLATEAU_EPOCHS:
        return False
    return curve[-1]["dev_top1"] - curve[-1 - PLATEAU_EPOCHS]["dev_top1"] < PLATEAU_GAIN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--phase", choices=("baselines", "cells"), default="cells")
    parser.add_argument("--dataset", choices=("fashion", "digits"), default="fashion")
    parser.add_argument("--source", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST idx files")
    parser.add_argument("--size", type=int, default=16, help="digits only: image size")
    parser.add_argument("--baseline-epochs", type=int, default=BASELINE_EPOCHS)
    parser.add_argument("--epoch-iters", type=int, default=EPOCH)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--path-points", type=int, default=4)
    parser.add_argument("--calibration-batches", type=int, default=2)
    parser.add_argument("--train-iters", type=int, default=BASELINE_EPOCHS * EPOCH)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--work", type=Path, required=True)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    args.train_iters = args.baseline_epochs * args.epoch_iters
    args.work.mkdir(parents=True, exist_ok=True)
    data = prepare_data(args)
    for seed in args.seeds:
        _, summary = train_converged(args, data, seed)
        print(f"baseline seed {seed}: dev {summary['dev_top1']:.4f} test {summary['test_top1']:.4f} "
              f"converged {summary['converged']}", flush=True)


if __name__ == "__main__":
    main()

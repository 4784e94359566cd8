"""``singe-dist train``: a baseline from shards (users normally bring torchvision weights; the demo can't)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from singe_dist.checkpoint import load_model, save_checkpoint
from singe_dist.config import JobConfig, flatten
from singe_dist.data.streams import DataStreams
from singe_dist.engine.rng import seed_phase
from singe_dist.engine.train import Progress, evaluate, make_optimizer, pick_device, train_steps
from singe_dist.plan.cost import measure
from singe_dist.atomic import atomic_write_text


def train_baseline(config: JobConfig, out: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config.model`` for ``config.train.iters`` iterations; write ``out`` and ``out``.json.

    Starts from ``model.checkpoint`` when it names another file (training on from it), and from fresh
    weights when it names ``out`` itself: a job config names the baseline it prunes, and training that
    baseline from the same config must write it, not first demand that it exist.
    """
    seed_phase(config.run.seed, -2, 0)
    device = pick_device(config.run.device, 0)
    streams = DataStreams(config.data, config.model.num_classes, seed=config.run.seed)
    start = config.model.checkpoint
    if start is not None and Path(start).resolve() == Path(out).resolve():
        start = None
    model, arch, num_classes, plan = load_model(start, config.model.arch, config.model.num_classes)
    model = model.to(device)
    optimizer = make_optimizer(model, config.train.lr, config.finetune.momentum, config.finetune.weight_decay)
    t0 = time.perf_counter()
    progress = Progress(config.train.iters, "train", log, max(1, config.train.iters // 10), True)
    try:
        loss = train_steps(model, optimizer, streams.train(10_000), config.train.iters, config.train.lr,
                           config.finetune.label_smoothing, on_step=progress, amp=config.finetune.amp)
    finally:
        progress.close()
    result = evaluate(model, streams.val()).as_dict()
    size = config.data.image_size
    fp = measure(model, (3, size, size))
    summary = {"arch": arch, "num_classes": num_classes, "iters": config.train.iters, "train_loss": loss,
               "val": result, "macs": fp.macs, "params": fp.params, "seconds": time.perf_counter() - t0,
               "skipped_samples": streams.skipped(), "config": flatten(config)}
    save_checkpoint(out, model.cpu(), arch, num_classes, plan)
    atomic_write_text(out.with_suffix(".json"), json.dumps(summary, indent=1))
    log(f"baseline {arch}: top-1 {result['top1']:.4f} after {config.train.iters} iterations -> {out}")
    return summary

"""GPU throughput: SInGE relevance versus plain training, and DDP fine-tuning (run by ``gpu.sh``).

Three measurements on synthetic batches (throughput does not depend on pixel values), after warm-up,
timed with the device synchronised:

- **relevance**: SInGE group path (``accumulate``, the job's own code) over ``--batches`` batches;
  reported as images x path points per second (one sweep of every group's path per image and point)
  and as gated passes per second (images x points x groups, each a forward with one group gated);
- **training**: plain SGD steps (``train_steps``, the fine-tune loop) in fp32 and with bf16 autocast,
  images per second, the yardstick for both;
- **DDP fine-tune**: ``train_steps`` under DistributedDataParallel on every visible GPU, launched with
  ``torch.distributed.run``; images per second summed over ranks, and per GPU.

    bash benchmarks/gpu.sh                       # ResNet-50 at 224 px on the visible GPUs
    bash benchmarks/gpu.sh --smoke               # tiny, runs on CPU (Gloo) for the test suite
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from singe_dist.engine.train import make_optimizer, train_steps
from singe_dist.models import build_model
from singe_dist.relevance.criteria import CriterionConfig, accumulate
from singe_dist.relevance.groups import example_input, find_groups
from singe_dist.report import format_table


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batches(n: int, batch: int, size: int, classes: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return [(torch.randn(batch, 3, size, size, generator=gen).to(device),
             torch.randint(0, classes, (batch,), generator=gen).to(device)) for _ in range(n)]


def relevance_throughput(args: argparse.Namespace, device: torch.device) -> dict:
    model = build_model(args.model, args.classes).to(device)
    groups = find_groups(model, example_input(model, (3, args.size, args.size)))
    config = CriterionConfig(name="singe", path="group", steps=args.points, max_rows=args.max_rows)
    warm, timed = (_batches(n, args.batch, args.size, args.classes, device) for n in (1, args.batches))
    accumulate(model, groups, warm, config)
    _sync(device)
    start = time.perf_counter()
    accumulate(model, groups, timed, config)
    _sync(device)
    seconds = time.perf_counter() - start
    images = args.batch * args.batches
    return {"seconds": seconds, "images": images, "groups": len(groups),
            "image_points_per_s": images * args.points / seconds,
            "gated_passes_per_s": images * args.points * len(groups) / seconds}


def training_throughput(args: argparse.Namespace, device: torch.device, amp: bool) -> dict:
    model = build_model(args.model, args.classes).to(device)
    optimizer = make_optimizer(model, 0.01)
    batches = _batches(args.train_iters + args.warmup, args.batch, args.size, args.classes, device)
    train_steps(model, optimizer, iter(batches[: args.warmup]), args.warmup, 0.01, amp=amp)
    _sync(device)
    start = time.perf_counter()
    train_steps(model, optimizer, iter(batches[args.warmup:]), args.train_iters, 0.01, amp=amp)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images_per_s": args.batch * args.train_iters / seconds}


def ddp_worker(args: argparse.Namespace) -> None:
    """One rank under ``torch.distributed.run``: DDP fine-tune steps; rank 0 writes the result."""
    import torch.distributed as dist

    from singe_dist.engine.collective import TorchCollective

    cuda = torch.cuda.is_available() and not args.cpu
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    col = TorchCollective(device)
    torch.manual_seed(0)
    model = build_model(args.model, args.classes).to(device)
    ddp = col.wrap(model)
    optimizer = make_optimizer(model, 0.01)
    batches = _batches(args.train_iters + args.warmup, args.batch, args.size, args.classes, device)
    train_steps(ddp, optimizer, iter(batches[: args.warmup]), args.warmup, 0.01, amp=True)
    _sync(device)
    col.barrier()
    start = time.perf_counter()
    train_steps(ddp, optimizer, iter(batches[args.warmup:]), args.train_iters, 0.01, amp=True)
    _sync(device)
    col.barrier()
    seconds = time.perf_counter() - start
    if col.rank == 0:
        images = args.batch * args.train_iters * col.world_size
        Path(args.ddp_result).write_text(json.dumps({"world_size": col.world_size, "seconds": seconds,
                                                     "images_per_s": images / seconds}))
    dist.destroy_process_group()


def ddp_throughput(args: argparse.Namespace, workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "ddp.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
               __file__, "--model", args.model, "--size", str(args.size), "--batch", str(args.batch),
               "--train-iters", str(args.train_iters), "--warmup", str(args.warmup), "--classes", str(args.classes),
               "--ddp-result", str(result)] + (["--cpu"] if args.cpu else [])
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not result.is_file():
            raise SystemExit(f"DDP run failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
        return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64, help="images per batch (per GPU for DDP)")
    parser.add_argument("--points", type=int, default=8, help="SInGE path points S")
    parser.add_argument("--max-rows", type=int, default=256, help="rows per relevance pass (criterion.max_rows)")
    parser.add_argument("--batches", type=int, default=4, help="timed relevance batches")
    parser.add_argument("--train-iters", type=int, default=50, help="timed training iterations")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--ddp-workers", type=int, default=None, help="DDP ranks (default: every visible GPU)")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is visible (Gloo for DDP)")
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny settings on the CPU, for the test suite")
    parser.add_argument("--ddp-result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.smoke:
        args.model, args.size, args.classes, args.batch, args.points = "digits_resnet", 16, 10, 4, 2
        args.batches, args.train_iters, args.warmup, args.ddp_workers, args.cpu = 1, 2, 1, 2, True
    if args.ddp_result:
        ddp_worker(args)
        return
    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.smoke:
        raise SystemExit("gpu.sh: no CUDA GPU is visible (nvidia-smi / CUDA_VISIBLE_DEVICES); use --smoke for a CPU check")
    device = torch.device("cuda", 0) if cuda else torch.device("cpu")
    workers = args.ddp_workers or (torch.cuda.device_count() if cuda else 1)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({platform.processor() or platform.machine()})"

    rel = relevance_throughput(args, device)
    fp32 = training_throughput(args, device, amp=False)
    bf16 = training_throughput(args, device, amp=True) if cuda else None
    ddp = ddp_throughput(args, workers)

    print(f"device={name} x{workers if cuda else 1} model={args.model} {args.size}px batch={args.batch} S={args.points} "
          f"max_rows={args.max_rows} torch={torch.__version__} date={datetime.date.today()}")
    headers = ["measurement", "precision", "throughput", "unit", "vs fp32 training"]
    train = fp32["images_per_s"]
    rows = [
        ["relevance (SInGE group path)", "fp32", rel["image_points_per_s"], "images x points / s",
         f"{rel['image_points_per_s'] / train:.2f}x"],
        ["relevance gated passes", "fp32", rel["gated_passes_per_s"], f"images x points x {rel['groups']} groups / s",
         f"{rel['gated_passes_per_s'] / train:.2f}x"],
        ["training step", "fp32", train, "images / s", "1.00x"],
    ]
    if bf16:
        rows.append(["training step", "bf16 autocast", bf16["images_per_s"], "images / s",
                     f"{bf16['images_per_s'] / train:.2f}x"])
    rows.append([f"DDP fine-tune, {ddp['world_size']} rank(s)", "bf16 autocast" if cuda else "fp32",
                 ddp["images_per_s"], "images / s (all ranks)", f"{ddp['images_per_s'] / train:.2f}x"])
    print(format_table(headers, rows))
    if args.out:
        from singe_dist.atomic import atomic_write_text

        atomic_write_text(args.out, json.dumps({"device": name, "args": vars(args) | {"out": str(args.out)},
                                                "relevance": rel, "train_fp32": fp32, "train_bf16": bf16,
                                                "ddp": ddp}, indent=1, default=str))


if __name__ == "__main__":
    main()

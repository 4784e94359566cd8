"""Rehearse the flagship job at ImageNet's shape: ResNet-50, 224-px JPEG shards, 1000 classes, `ray job submit`.

What a cluster user submits first (``jobs/configs/resnet50_imagenet.yaml``), unchanged except ``--set``
overrides for the data paths, the run and Ray Train directories, the device and small counts: a local
Ray head on 127.0.0.1 with token authentication (``cluster/start_local_head.sh``, through
``tests.ray_head.local_ray_head``, which always stops it), the real ``ray job submit`` with
``--working-dir . --runtime-env jobs/runtime_env.yaml``, 2 Ray Train workers of 1 CPU: SInGE group
relevance on a few calibration images, one pruning step of the config's 50% of the MACs with its
``round_to: 8``, a few DDP iterations, the exact evaluation, the MLflow run (an SQLite store), the
pruned checkpoint. Then, in this process: the pruned checkpoint is reloaded and its architecture and
outputs checked against a replay of ``plan.json`` on a fresh ResNet-50; the MLflow run is read back.

Measured beside the job (``--no-measure`` skips it), each in a fresh subprocess with one torch thread:
relevance seconds per calibration image at the job's image size (group path, S = 8), seconds per
(channel, point) row of the channel path (a fixed share of its pairs), and the peak resident memory of
relevance at two values of ``criterion.max_rows`` (how the chunk size bounds memory); plus the
all-reduce size of a relevance step and of a DDP gradient, before and after pruning.

    uv run python benchmarks/imagenet_rehearsal_data.py            # the data (1000 classes, ~1 min)
    uv run python benchmarks/imagenet_rehearsal.py                 # the job (~15-30 min on 2 CPU cores)

Writes ``docs/results/imagenet_rehearsal.{md,json}`` (``--results``) and prints the table.
tests/test_flagship.py runs :func:`submit_flagship` at 32 px on 10 classes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

FLAGSHIP = "jobs/configs/resnet50_imagenet.yaml"
RUNTIME_ENV = "jobs/runtime_env.yaml"


# ---------------------------------------------------------------------------------- the job
def flagship_overrides(data: dict, out_dir: Path, *, num_classes: int, checkpoint: str | None, image_size: int = 224,
                       batch: int = 2, calibration_batches: int = 1, finetune_iters: int = 3, final_iters: int = 1,
                       val_pattern: str | None = None, data_workers: int = 1, **extra: object) -> list[str]:
    """The ``--set`` overrides of the flagship config: paths, device, small counts; nothing else changes.

    ``data``: what :func:`imagenet_rehearsal_data.make_data` returned. ``extra``: more keys, ``section__key``.
    """
    values = {
        "run.out_dir": str(out_dir / "run"), "run.device": "cpu", "run.latency_batch_sizes": "[1]",
        "model.num_classes": num_classes, "model.checkpoint": checkpoint or "null",
        "data.train": data["train"]["pattern"], "data.val": val_pattern or data["val"]["pattern"],
        "data.train_samples": data["images"]["train"], "data.image_size": image_size,
        "data.resize_size": round(image_size * 256 / 224), "data.batch_size": batch, "data.eval_batch_size": 8,
        "data.num_workers": data_workers,
        "criterion.calibration_batches": calibration_batches,
        "prune.steps": 1,
        "finetune.iters_per_step": finetune_iters, "finetune.final_iters": final_iters, "finetune.log_every": 1,
        "tracking.uri": f"sqlite:///{out_dir / 'mlflow.db'}",
        "distributed.num_workers": 2, "distributed.use_gpu": "false", "distributed.cpus_per_worker": 1,
        "distributed.torch_threads": 1, "distributed.storage_path": str(out_dir / "ray-results"),
    }
    values.update({k.replace("__", "."): v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in values.items()]


def submit_flagship(head, overrides: list[str], *, deadline_s: float, log_path: Path,  # noqa: ANN001
                    echo: bool = True) -> tuple[int, str, float]:
    """``ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- python jobs/prune.py --config
    <flagship> --set ...`` to ``head``; the job's log streamed (with elapsed seconds) to ``log_path`` and,
    with ``echo``, to stdout. Returns (exit status, log, seconds); past ``deadline_s`` the submitter is
    killed and the status is 124 (stopping the head ends the job itself)."""
    from tests.ray_head import ray_executable

    sets = sum((["--set", o] for o in overrides), [])
    cmd = [ray_executable(), "job", "submit", "--address", head.dashboard_url, "--working-dir", ".",
           "--runtime-env", RUNTIME_ENV, "--", "python", "jobs/prune.py", "--config", FLAGSHIP, *sets]
    started = time.monotonic()
    lines: list[str] = []
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=head.client_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    queue: Queue[str | None] = Queue()

    def pump() -> None:  # a thread: the main loop keeps the deadline while the job's output trickles in
        assert proc.stdout is not None
        for line in proc.stdout:
            queue.put(line.rstrip("\n"))
        queue.put(None)

    threading.Thread(target=pump, daemon=True).start()
    with open(log_path, "w") as log:
        while True:
            left = deadline_s - (time.monotonic() - started)
            try:
                line = queue.get(timeout=max(0.0, min(left, 5.0)))
            except Empty:
                if left <= 0:
                    proc.kill()
                    proc.wait()
                    lines.append(f"imagenet_rehearsal: the job did not end within {deadline_s:.0f} s")
                    return 124, "\n".join(lines), time.monotonic() - started
                continue
            if line is None:
                break
            stamped = f"[{time.monotonic() - started:7.1f}s] {line}"
            lines.append(line)
            log.write(stamped + "\n")
            log.flush()
            if echo:
                print(stamped, flush=True)
    return proc.wait(), "\n".join(lines), time.monotonic() - started


def check_pruned(run_dir: Path, images: int, image_size: int) -> dict:
    """Reload ``pruned.pt``; replay ``plan.json`` on a fresh model; same widths, same outputs, round_to 8 kept."""
    import torch

    from singe_dist.checkpoint import load_model
    from singe_dist.models import build_model
    from singe_dist.plan.plan import Plan, apply_plan

    loaded, arch, num_classes, _ = load_model(run_dir / "pruned.pt")
    plan = Plan.load(run_dir / "plan.json")
    replayed = apply_plan(build_model(plan.arch, plan.num_classes), plan)
    widths = lambda m: {n: (x.out_channels if isinstance(x, torch.nn.Conv2d) else x.out_features)  # noqa: E731
                        for n, x in m.named_modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))}
    same_architecture = widths(loaded) == widths(replayed)
    replayed.load_state_dict(loaded.state_dict())
    loaded.eval()
    replayed.eval()
    x = torch.randn(images, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = loaded(x), replayed(x)
    report = json.loads((run_dir / "report.json").read_text())
    kept = {g: c["after"] for g, c in report["channels"].items()}
    return {"arch": arch, "num_classes": num_classes, "same_architecture": same_architecture,
            "max_abs_output_difference": float((a - b).abs().max()), "groups": len(kept),
            "groups_not_multiple_of_8": sorted(g for g, w in kept.items() if w % 8),
            "params": sum(p.numel() for p in loaded.parameters())}


def mlflow_run(out_dir: Path) -> dict:
    """The job's MLflow run, read back from the SQLite store: status, metric keys, artifacts."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out_dir / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    if len(runs) != 1:
        return {"runs": len(runs)}
    run = runs[0]
    return {"runs": 1, "status": run.info.status, "experiment": client.get_experiment(run.info.experiment_id).name,
            "metrics": len(run.data.metrics), "params": len(run.data.params),
            "artifacts": sorted(a.path for a in client.list_artifacts(run.info.run_id))}


# ---------------------------------------------------------------------------------- measurements
def measure_relevance(args: argparse.Namespace) -> dict:
    """(Subprocess.) ResNet-50 relevance on ``--images`` real images of the val shard: time and peak RSS."""
    import torch

    from singe_dist.data.shard_samples import decode_rgb
    from singe_dist.data.transforms import eval_transform
    from singe_dist.models import build_model
    from singe_dist.relevance.criteria import CriterionConfig, RelevanceSums, accumulate, path_points
    from singe_dist.relevance.groups import example_input, find_groups

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("resnet50", args.num_classes)
    groups = find_groups(model, example_input(model, (3, args.image_size, args.image_size)), [])
    import tarfile

    transform = eval_transform(args.image_size, round(args.image_size * 256 / 224))
    xs, ys = [], []
    with tarfile.open(args.shard) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for name in sorted(members):
            if name.endswith(".jpg") and len(xs) < args.images:
                xs.append(transform(decode_rgb(tar.extractfile(members[name]).read())))
                ys.append(int(tar.extractfile(members[name[:-4] + ".cls"]).read()))
    batch = [(torch.stack(xs), torch.tensor(ys))]
    config = CriterionConfig(name="singe", path=args.path, steps=8, max_rows=args.max_rows)
    share = (0, args.channel_share)
    rss_before = _rss_mb("VmRSS")
    started = time.perf_counter()
    sums = accumulate(model, groups, batch, config, channel_share=share)
    seconds = time.perf_counter() - started
    peak_rss = _rss_mb("VmHWM")  # before the training pass below, which needs memory of its own
    training_s = None
    if args.path == "group":  # the unit of the compute share: one training pass (forward + backward) per image
        x, y = batch[0]
        model.eval()  # BN on running statistics, weight gradients on: relevance_cost.py's "training pass"
        torch.nn.functional.cross_entropy(model(x), y).backward()  # warm-up
        started = time.perf_counter()
        for _ in range(2):
            model.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
        training_s = (time.perf_counter() - started) / (2 * len(x))
    points, weights = path_points(8, "midpoint")
    channels = sum(g.size for g in groups)
    rows = len(xs) * (8 * len(groups) if args.path == "group"
                      else sum(-(-g.size * 8 // args.channel_share) for g in groups))  # pairs with index % share == 0
    return {"path": args.path, "images": len(xs), "max_rows": args.max_rows, "seconds": seconds, "rows": rows,
            "groups": len(groups), "channels": channels, "channel_share": args.channel_share,
            "rss_before_mb": rss_before, "peak_rss_mb": peak_rss,
            "allreduce_bytes": RelevanceSums.empty(groups, points, weights).flatten().numel() * 8,
            "samples_counted": sums.samples, "training_pass_s_per_image": training_s}


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _measure(shard: str, num_classes: int, image_size: int, **kw: object) -> dict:
    args = ["--shard", shard, "--num-classes", str(num_classes), "--image-size", str(image_size)]
    for key, value in kw.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.run([sys.executable, __file__, "--measure-relevance", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"relevance measurement failed: {proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def allreduce_sizes(report: dict, num_classes: int, image_size: int) -> dict:
    """Bytes of one relevance all-reduce (float64 sums and counts, S = 8) and of one DDP gradient (fp32)."""
    import torch  # noqa: F401

    from singe_dist.checkpoint import load_model
    from singe_dist.relevance.criteria import RelevanceSums, path_points
    from singe_dist.relevance.groups import example_input, find_groups

    points, weights = path_points(8, "midpoint")
    out = {}
    for label, path in (("original", None), ("pruned", Path(report["config"]["run.out_dir"]) / "pruned.pt")):
        model, _, _, _ = load_model(path, "resnet50", num_classes)
        groups = find_groups(model, example_input(model, (3, image_size, image_size)), [])
        out[label] = {"relevance_allreduce_bytes": RelevanceSums.empty(groups, points, weights).flatten().numel() * 8,
                      "ddp_gradient_bytes": sum(p.numel() for p in model.parameters()) * 4,
                      "channels": sum(g.size for g in groups), "groups": len(groups)}
    return out


# ---------------------------------------------------------------------------------- the table
def table(result: dict) -> str:
    from singe_dist.report import format_table

    r, walls = result["report"], result["report"]["wall_time_s"]
    rows = [["machine", result["machine"]], ["GPU", "none lent to this session: CPU only"],
            ["command", f"`{result['command']}`"], ["date (UTC)", result["date"]],
            ["data", f"{result['data']['classes']} classes, {result['data']['images']['train']} train / "
                     f"{result['data']['images']['val']} val JPEGs (ImageNet sizes, e.g. 500x375), "
                     f"evaluated on {result['val_images']} val images"],
            ["train shards", f"{result['data']['train']['shards']} x ~{result['shard_mb']['train']:.1f} MB "
                             f"({result['data']['train']['bytes'] / 2**20:.1f} MiB)"],
            ["job status", f"exit {result['exit_status']}, {result['job_s']:.0f} s from submit to end"],
            ["Ray head start s", f"{result['head_start_s']:.1f}"]]
    rows += [[f"phase: {k} s", f"{v:.1f}"] for k, v in walls.items()]
    rows += [["peak RSS per worker MB (rank process)", ", ".join(f"{v:.0f}" for v in r["peak_memory_mb"]["rss"])],
             ["baseline / pruned top-1 (random init)", f"{r['baseline']['top1']:.4f} / {r['final']['top1']:.4f}"],
             ["MACs removed", f"{r['final']['fraction_removed']:.1%} (target 50%, one step)"],
             ["params before / after", f"{r['original']['params'] / 1e6:.2f} M / {r['final']['params'] / 1e6:.2f} M"],
             ["checkpoint.pt / pruned.pt / baseline MB",
              " / ".join(f"{result['sizes_mb'][k]:.1f}" for k in ("checkpoint.pt", "pruned.pt", "baseline"))],
             ["pruned reload vs plan replay",
              f"same architecture: {result['check']['same_architecture']}, max |output diff| "
              f"{result['check']['max_abs_output_difference']:.1e}, groups not a multiple of 8: "
              f"{len(result['check']['groups_not_multiple_of_8'])}"],
             ["MLflow run", f"{result['mlflow'].get('status')}, {result['mlflow'].get('metrics')} metrics, "
                            f"artifacts: {', '.join(result['mlflow'].get('artifacts', []))}"]]
    a = result.get("allreduce")
    if a:
        rows += [["relevance all-reduce bytes (original / pruned)",
                  f"{a['original']['relevance_allreduce_bytes']:,} / {a['pruned']['relevance_allreduce_bytes']:,}"],
                 ["DDP gradient bytes per iteration (original / pruned)",
                  f"{a['original']['ddp_gradient_bytes']:,} / {a['pruned']['ddp_gradient_bytes']:,}"]]
    for m in result.get("measurements", []):
        per = m["seconds"] / (m["images"] if m["path"] == "group" else m["rows"])
        unit = "s per calibration image (group path, S=8)" if m["path"] == "group" else "s per (channel, point) row"
        rows.append([f"relevance {unit}, max_rows={m['max_rows']}",
                     f"{per:.2f} ({m['seconds']:.1f} s, {m['rows']} rows; peak RSS {m['peak_rss_mb']:.0f} MB, "
                     f"{m['peak_rss_mb'] - m['rss_before_mb']:.0f} MB above the loaded model)"])
    return format_table(["quantity", "value"], rows)


# ---------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="runs/imagenet_rehearsal/data", help="imagenet_rehearsal_data.py output")
    parser.add_argument("--out", default="runs/imagenet_rehearsal/job", help="run directory root (replaced)")
    parser.add_argument("--results", default="docs/results/imagenet_rehearsal", help="writes .md and .json")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=2, help="per worker (calibration and fine-tune)")
    parser.add_argument("--calibration-batches", type=int, default=1)
    parser.add_argument("--finetune-iters", type=int, default=3)
    parser.add_argument("--val-shards", type=int, default=1, help="evaluate on the first N val shards")
    parser.add_argument("--deadline", type=float, default=3600, help="seconds the job may take")
    parser.add_argument("--no-measure", action="store_true", help="skip the separate relevance measurements")
    # --measure-relevance: one measurement, in a subprocess (internal)
    parser.add_argument("--measure-relevance", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shard", help=argparse.SUPPRESS)
    parser.add_argument("--num-classes", type=int, default=1000, help=argparse.SUPPRESS)
    parser.add_argument("--path", default="group", help=argparse.SUPPRESS)
    parser.add_argument("--images", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--max-rows", type=int, default=512, help=argparse.SUPPRESS)
    parser.add_argument("--channel-share", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure_relevance:
        print(json.dumps(measure_relevance(args)))
        return 0

    import shutil

    import torch

    from singe_dist.models import build_model
    from tests.ray_head import local_ray_head

    data_dir, out = (REPO_ROOT / args.data).resolve(), (REPO_ROOT / args.out).resolve()
    if not (data_dir / "shards" / "classes.json").is_file():
        raise SystemExit(f"no rehearsal data in {data_dir}: run benchmarks/imagenet_rehearsal_data.py --out {args.data}")
    shards = data_dir / "shards"
    classes = json.loads((shards / "classes.json").read_text())
    train = sorted(shards.glob("train-*.tar"))
    val = sorted(shards.glob("val-*.tar"))[: args.val_shards]
    data = {"classes": len(classes), "train": {"pattern": str(shards / f"train-{{000000..{len(train) - 1:06d}}}.tar"),
                                               "shards": len(train), "bytes": sum(p.stat().st_size for p in train)},
            "val": {"pattern": ",".join(map(str, val))}}
    count = lambda paths: sum(1 for p in paths for line in subprocess.run(  # noqa: E731
        ["tar", "tf", str(p)], capture_output=True, text=True).stdout.split() if line.endswith(".cls"))
    data["images"] = {"train": count(train), "val": count(sorted(shards.glob("val-*.tar")))}
    val_images = count(val)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    baseline = out / "resnet50-random-init.pt"  # no pretrained weights can be downloaded here: a bare state dict
    torch.manual_seed(0)
    torch.save(build_model("resnet50", len(classes)).state_dict(), baseline)
    overrides = flagship_overrides(data, out, num_classes=len(classes), checkpoint=str(baseline),
                                   image_size=args.image_size, batch=args.batch,
                                   calibration_batches=args.calibration_batches, finetune_iters=args.finetune_iters,
                                   val_pattern=data["val"]["pattern"])
    command = "uv run python benchmarks/imagenet_rehearsal.py" + (f" {' '.join(argv)}" if argv else "")
    result = {"command": command, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              "machine": f"{os.cpu_count()} CPU cores ({platform.machine()}), shared with a benchmark sweep "
                         f"(load average {os.getloadavg()[0]:.1f} at the start); torch {torch.__version__}",
              "overrides": overrides, "data": data, "val_images": val_images,
              "shard_mb": {"train": data["train"]["bytes"] / len(train) / 1e6}}
    started = time.monotonic()
    with local_ray_head(num_cpus=2) as head:
        result["head_start_s"] = time.monotonic() - started
        print(f"imagenet_rehearsal: Ray head up in {result['head_start_s']:.1f} s at {head.dashboard_url}", flush=True)
        status, log, seconds = submit_flagship(head, overrides, deadline_s=args.deadline, log_path=out / "job.log")
    result.update(exit_status=status, job_s=seconds)
    if status != 0:
        print(log[-6000:])
        raise SystemExit(f"imagenet_rehearsal: the job failed ({status}); log in {out / 'job.log'}")
    run_dir = out / "run"
    result["report"] = json.loads((run_dir / "report.json").read_text())
    result["check"] = check_pruned(run_dir, 2, args.image_size)
    result["mlflow"] = mlflow_run(out)
    result["sizes_mb"] = {name: (run_dir / name).stat().st_size / 1e6 for name in ("checkpoint.pt", "pruned.pt")}
    result["sizes_mb"]["baseline"] = baseline.stat().st_size / 1e6
    result["allreduce"] = allreduce_sizes(result["report"], len(classes), args.image_size)
    if not args.no_measure:
        first_val = str(val[0])
        result["measurements"] = [
            _measure(first_val, len(classes), args.image_size, path="group", images=1, max_rows=8),
            _measure(first_val, len(classes), args.image_size, path="group", images=1, max_rows=2),
            _measure(first_val, len(classes), args.image_size, path="channel", images=1, max_rows=64,
                     channel_share=1024),
        ]
    text = table(result)
    print(text)
    results = REPO_ROOT / args.results
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    results.with_suffix(".md").write_text(f"# ImageNet-shape rehearsal of the flagship job\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

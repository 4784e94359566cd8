"""Data-loading throughput: webdataset shards (singe_dist.data.shards) vs torchvision ImageFolder.

Three readers of the same JPEGs, each with the ImageNet train transforms (RandomResizedCrop 224 +
flip + normalise) in the same number of DataLoader workers, for the same number of images:

- the shard reader, as the jobs use it: torchvision's decoder into a uint8 tensor, then the tensor
  transforms of ``singe_dist.data.transforms``;
- torchvision ``ImageFolder`` with its standard recipe (the baseline): PIL decoding and the PIL
  transforms RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize;
- ``ImageFolder`` with the shard reader's decoder and transforms: the same work on individual files,
  which separates what the file format gives from what the decoding pipeline gives.

ImageFolder shuffles file by file, epoch after epoch (persistent workers, so no re-fork per epoch); the shard reader runs its real training stream (resampled shards, shuffle
buffer of raw samples). Throughput counts the images after the first batch, so worker start-up and
the shuffle buffer's initial fill are reported apart ("first batch"); runs alternate between the
readers and the median is reported. CPU time per image (main process and workers) is the number to
trust on a machine that is busy with other work, where images/s are noisy; the last column says how
busy it was (the most CPU cores other processes used during any run of that reader). Memory is the PSS
(proportional set size: pages shared by the forked workers counted once) of this process and all its
children, sampled every 0.1 s, shown at every tenth of the last run to see whether it stays flat.
Linux only (reads /proc).

    python benchmarks/data_throughput.py                 # 1000 JPEGs of ~500x375, 224 px crops
    python benchmarks/data_throughput.py --smoke         # a few seconds, tiny images
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T
from torchvision.datasets import ImageFolder

from singe_dist.data.convert import imagefolder_to_shards
from singe_dist.data.shard_samples import decode_rgb
from singe_dist.data.shards import shard_loader
from singe_dist.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform

WEBDATASET = "webdataset shards (singe-dist reader)"
IMAGEFOLDER = "torchvision ImageFolder (PIL recipe)"
IMAGEFOLDER_SAME = "ImageFolder, singe-dist decode + transforms"
READERS = (WEBDATASET, IMAGEFOLDER, IMAGEFOLDER_SAME)
SAMPLE_PERIOD_S = 0.1
DECILES = 10


def synthetic_photo(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A photo-like image: smooth colour regions, mid-frequency texture and sensor noise.

    Pure noise would make JPEGs several times larger (and slower to decode) than photos, flat colour
    much smaller; this mix gives ImageNet-like file sizes (about 50 KB at 500x375, quality 90).
    """
    base = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    texture = Image.fromarray(rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8))
    texture = texture.resize((width, height), Image.BILINEAR)
    pixels = 0.7 * np.asarray(base, np.float32) + 0.3 * np.asarray(texture, np.float32)
    pixels += rng.normal(0, 5, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_jpegs(root: Path, count: int, classes: int, size: tuple[int, int]) -> None:
    """``count`` JPEGs in an ImageFolder tree; landscape and portrait, as in ImageNet."""
    rng = np.random.default_rng(0)
    for index in range(count):
        folder = root / f"class_{index % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        width, height = size if index % 4 else size[::-1]
        synthetic_photo(rng, width, height).save(folder / f"img_{index:06d}.jpg", "JPEG", quality=90)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (children are listed under the thread that forked them)."""
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except FileNotFoundError:
            continue
        tree.append(current)
        for task in tasks:
            try:
                with open(f"/proc/{current}/task/{task}/children") as f:
                    pending += [int(child) for child in f.read().split()]
            except FileNotFoundError:
                continue
    return tree


def _read_proc(pid: int, name: str) -> str:
    """A /proc file of a process, or "" if the process has gone meanwhile."""
    try:
        with open(f"/proc/{pid}/{name}") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        return ""


def tree_pss_mib(pid: int) -> float:
    """PSS of ``pid`` and all its descendants, MiB."""
    rollups = (_read_proc(p, "smaps_rollup") for p in process_tree(pid))
    return sum(int(line.split()[1]) for r in rollups for line in r.splitlines() if line.startswith("Pss:")) / 1024


def machine_busy_s() -> float:
    """CPU seconds all processes on the machine have used, summed over cores (from /proc/stat)."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by ``pid`` and its live descendants."""
    ticks = 0
    for stat in (_read_proc(p, "stat") for p in process_tree(pid)):
        if stat:
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "; utime, stime are fields 14, 15
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    """One timed run of one reader."""

    reader: str
    images: int = 0
    first_batch_s: float = 0.0
    steady_s: float = 0.0
    cpu_s: float = 0.0  # CPU seconds of the main process and its workers over the steady phase
    others_cpu_s: float = 0.0  # CPU seconds other processes on the machine used meanwhile
    memory: list[tuple[int, float]] = field(default_factory=list)  # (images after the first batch, PSS MiB)

    @property
    def images_per_s(self) -> float:
        return self.images / self.steady_s

    @property
    def cpu_ms_per_image(self) -> float:
        return 1000 * self.cpu_s / self.images

    def memory_at(self, fraction: float) -> float:
        """PSS at the last sample taken, after the first batch, before ``fraction`` of the images were through."""
        target = fraction * self.images
        return [mib for done, mib in self.memory if 0 <= done <= target][-1]


def timed_run(reader: str, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], images: int) -> Run:
    """Draw batches until ``images`` images have come after the first batch, sampling memory meanwhile."""
    run, stop, steady_phase = Run(reader), threading.Event(), threading.Event()

    def sample_memory() -> None:
        while not stop.is_set():
            run.memory.append((run.images if steady_phase.is_set() else -1, tree_pss_mib(os.getpid())))
            stop.wait(SAMPLE_PERIOD_S)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    start = time.perf_counter()
    sampler.start()
    iterator = iter(batches)
    next(iterator)
    run.first_batch_s = time.perf_counter() - start
    run.memory.append((0, tree_pss_mib(os.getpid())))
    steady_phase.set()
    steady, cpu, busy = time.perf_counter(), tree_cpu_s(os.getpid()), machine_busy_s()
    for batch, _ in iterator:
        run.images += len(batch)
        if run.images >= images:
            break
    run.steady_s = time.perf_counter() - steady
    run.cpu_s = tree_cpu_s(os.getpid()) - cpu
    run.others_cpu_s = max(0.0, machine_busy_s() - busy - run.cpu_s)
    stop.set()
    sampler.join()
    run.memory.append((run.images, tree_pss_mib(os.getpid())))
    return run


def pil_recipe(crop: int) -> Callable:
    """torchvision's standard ImageNet training transform on PIL images (the classification reference's)."""
    return T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def read_decoded(path: str) -> torch.Tensor:
    """ImageFolder loader with the shard reader's decoder."""
    return decode_rgb(Path(path).read_bytes())


def imagefolder_batches(root: Path, transform: Callable, batch_size: int, workers: int,
                        loader: Callable | None = None) -> Iterable:
    dataset = ImageFolder(str(root), transform=transform, **({"loader": loader} if loader else {}))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0,
    )
    return itertools.chain.from_iterable(itertools.repeat(loader))


def throughput_table(runs: list[Run], workers: int, images: int) -> str:
    lines = [
        "| reader | workers | images / run | runs | images/s | min | max | vs ImageFolder (PIL) | CPU ms / image "
        "| first batch (s) | other processes (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    baseline = statistics.median(r.images_per_s for r in runs if r.reader == IMAGEFOLDER)
    for reader in READERS:
        speeds = [r.images_per_s for r in runs if r.reader == reader]
        first = statistics.median(r.first_batch_s for r in runs if r.reader == reader)
        cpu = statistics.median(r.cpu_ms_per_image for r in runs if r.reader == reader)
        others = max(r.others_cpu_s / r.steady_s for r in runs if r.reader == reader)
        median = statistics.median(speeds)
        lines.append(
            f"| {reader} | {workers} | {images} | {len(speeds)} | {median:.1f} | {min(speeds):.1f} | {max(speeds):.1f} "
            f"| {median / baseline:.2f}x | {cpu:.2f} | {first:.2f} | {others:.2f} |"
        )
    return "\n".join(lines)


def runs_table(runs: list[Run]) -> str:
    """Every run in order, so that runs disturbed by other work on the machine can be told apart."""
    lines = ["| run | reader | images/s | CPU ms / image | other processes (cores) |", "|---:|---|---:|---:|---:|"]
    for index, r in enumerate(runs):
        lines.append(
            f"| {index + 1} | {r.reader} | {r.images_per_s:.1f} | {r.cpu_ms_per_image:.2f} "
            f"| {r.others_cpu_s / r.steady_s:.2f} |"
        )
    return "\n".join(lines)


def memory_table(runs: list[Run]) -> str:
    tenths = [f"{10 * (i + 1)}%" for i in range(DECILES)]
    lines = ["| reader | first batch | " + " | ".join(tenths) + " | peak |", "|---" + "|---:" * (DECILES + 2) + "|"]
    for reader in READERS:
        last = [r for r in runs if r.reader == reader][-1]
        at = [last.memory_at((i + 1) / DECILES) for i in range(DECILES)]
        peak = max(mib for _, mib in last.memory)
        cells = [f"{last.memory_at(0):.0f}", *(f"{m:.0f}" for m in at), f"{peak:.0f}"]
        lines.append(f"| {reader} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1000, help="JPEGs generated")
    parser.add_argument("--passes", type=int, default=6, help="images per run = passes x images")
    parser.add_argument("--repeats", type=int, default=5, help="runs per reader, alternating readers")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both readers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--crop", type=int, default=224, help="RandomResizedCrop size")
    parser.add_argument("--per-shard", type=int, default=100, help="samples per shard")
    parser.add_argument("--shuffle-buffer", type=int, default=1000, help="shard reader's shuffle buffer")
    parser.add_argument("--smoke", action="store_true", help="tiny, fast run that checks the script works")
    args = parser.parse_args(argv)
    args.width_height = (500, 375)
    if args.smoke:
        args.images, args.passes, args.repeats, args.batch_size, args.crop = 48, 2, 1, 8, 32
        args.per_shard, args.shuffle_buffer, args.width_height = 10, 16, (64, 48)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    transform = train_transform(args.crop)
    per_run = args.images * args.passes
    with tempfile.TemporaryDirectory(prefix="singe-data-bench-") as tmp:
        folder, shards = Path(tmp) / "images", Path(tmp) / "shards"
        started = time.perf_counter()
        write_jpegs(folder, args.images, classes=10, size=args.width_height)
        generated = time.perf_counter()
        shard_set = imagefolder_to_shards(folder, shards, per_shard=args.per_shard)
        converted = time.perf_counter()
        jpeg_kib = sum(p.stat().st_size for p in folder.rglob("*.jpg")) / args.images / 1024
        width, height = args.width_height
        print(
            f"{args.images} JPEGs of {width}x{height} (mean {jpeg_kib:.0f} KiB) generated in {generated - started:.1f} s;"
            f" converted to {len(shard_set.paths)} shards in {converted - generated:.1f} s\n"
        )
        runs = []
        for _ in range(args.repeats):
            loader = shard_loader(
                shard_set.pattern, mode="train", num_classes=10, batch_size=args.batch_size, num_workers=args.workers,
                transform=transform, shuffle_buffer=args.shuffle_buffer,
            )
            runs.append(timed_run(WEBDATASET, loader, per_run))
            for reader, tf, read in ((IMAGEFOLDER, pil_recipe(args.crop), None),
                                     (IMAGEFOLDER_SAME, transform, read_decoded)):
                folder_batches = imagefolder_batches(folder, tf, args.batch_size, args.workers, read)
                runs.append(timed_run(reader, folder_batches, per_run))
                del folder_batches  # its persistent workers must not run during the next measurement
    print(throughput_table(runs, args.workers, per_run))
    print("\nEach run (the readers alternate):\n")
    print(runs_table(runs))
    print(f"\nMemory, PSS MiB of the main process and its workers, in the last run of each reader: when the "
          f"first batch arrived, at each tenth of the {per_run} images after it, and the peak of the whole run:\n")
    print(memory_table(runs))


if __name__ == "__main__":
    main()

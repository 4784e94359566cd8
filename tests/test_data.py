"""The webdataset data path: conversion round trip, exact splitting, endless training, skips, user errors.

All data is generated in tmp_path; the shards are written with webdataset's own TarWriter.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import logging
import multiprocessing
import random
import re
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import webdataset as wds
from PIL import Image
from torchvision.datasets import ImageFolder

from singe_dist.data import shards, shards_cli
from singe_dist.data.convert import imagefolder_to_shards, write_shards
from singe_dist.data.digits import MEAN, STD, digits_tensors
from singe_dist.data.shard_slots import resolve_rank, slot_parts
from singe_dist.data.shards import ShardDataset, shard_loader
from singe_dist.data.transforms import eval_transform
from singe_dist.errors import SingeError

# uneven shard sizes (one empty): 5 shards, fewer than the 6 slots of 3 ranks x 2 workers
SHARD_SIZES = (7, 1, 4, 0, 5)
NUM_SAMPLES = sum(SHARD_SIZES)


def _write_tar(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def _sample(key: str, label: int, fmt: str = "PNG") -> dict:
    """A tiny image whose pixels encode the label, so that a mix-up would show."""
    encoded = io.BytesIO()
    Image.fromarray(np.full((6, 6, 3), label % 256, np.uint8)).save(encoded, fmt)
    return {"__key__": key, "png" if fmt == "PNG" else "jpg": encoded.getvalue(), "cls": str(label).encode()}


@pytest.fixture(scope="module")
def numbered_shards(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Shards of SHARD_SIZES samples, labelled 0..NUM_SAMPLES-1 (the label identifies the sample)."""
    root = tmp_path_factory.mktemp("numbered")
    label = 0
    for index, size in enumerate(SHARD_SIZES):
        _write_tar(root / f"part-{index:02d}.tar", [_sample(f"s{label + i:03d}", label + i) for i in range(size)])
        label += size
    return str(root / f"part-{{00..{len(SHARD_SIZES) - 1:02d}}}.tar")


def to_unit_float(image: torch.Tensor) -> torch.Tensor:
    """The reader hands transforms uint8 (3, H, W) tensors; this is ToTensor's scaling, without PIL."""
    return image.float() / 255


def to_hwc_array(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) uint8 tensor -> (H, W, 3) array, the layout of ``np.asarray(pil_image)``."""
    return image.permute(1, 2, 0).numpy()


# --- 1. ImageFolder -> shards -> reader ------------------------------------------------------------


def _image_folder(root: Path) -> None:
    """Three classes of small random images in PNG, JPEG and BMP (BMP gets re-encoded, losslessly)."""
    rng = np.random.default_rng(0)
    for class_name, count in (("cat", 4), ("dog", 3), ("emu", 5)):
        (root / class_name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (int(rng.integers(5, 30)), int(rng.integers(5, 30)), 3), dtype=np.uint8)
            fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("BMP", "bmp")][i % 3]
            Image.fromarray(pixels).save(root / class_name / f"img.{i}.{ext}", fmt)


def test_imagefolder_round_trip(tmp_path: Path) -> None:
    _image_folder(tmp_path / "images")
    written = imagefolder_to_shards(tmp_path / "images", tmp_path / "shards", per_shard=5)

    assert [p.name for p in written.paths] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert json.loads((tmp_path / "shards" / "classes.json").read_text()) == ["cat", "dog", "emu"]
    assert not list((tmp_path / "shards").glob(".*"))  # no temporary files left
    folder = ImageFolder(str(tmp_path / "images"))  # the convention we follow: same classes, same decoding
    expected = sorted((label, np.asarray(image).shape, np.asarray(image).tobytes()) for image, label in folder)
    dataset = ShardDataset(written.pattern, num_classes=3, mode="eval", transform=to_hwc_array)
    read = sorted((label, pixels.shape, pixels.tobytes()) for pixels, label in dataset)
    assert read == expected
    assert dataset.skips.samples == dataset.skips.shards == 0
    stored = set()
    for path in written.paths:
        with tarfile.open(path) as tar:
            stored |= {tar.extractfile(m).read() for m in tar.getmembers() if not m.name.endswith(".cls")}
    files = list((tmp_path / "images").rglob("*.*"))
    kept = {p.read_bytes() for p in files if p.suffix in (".png", ".jpg")}
    bmps = [p for p in files if p.suffix == ".bmp"]
    assert kept < stored and len(stored - kept) == len(bmps) > 0  # PNG / JPEG bytes as they were, BMPs re-encoded


def test_converter_is_atomic_and_leaves_no_stale_shards(tmp_path: Path) -> None:
    samples = [_sample(f"k{i}", i) for i in range(10)]
    broken = [*samples[:6], {"__key__": "k6", "cls": 6}, *samples[7:]]  # TarWriter fails inside shard 1

    with pytest.raises(ValueError):
        write_shards(broken, tmp_path, "x", per_shard=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar"]  # no half shard, named or temporary
    write_shards(samples, tmp_path, "x", per_shard=2)
    write_shards(samples, tmp_path, "x", per_shard=4)  # fewer shards: the old x-000003/4 must go
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["x-000000.tar", "x-000001.tar", "x-000002.tar"]


def test_cli_digits_shards_match_the_bundled_digits(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parser = argparse.ArgumentParser()
    shards_cli.register(parser.add_subparsers())
    args = parser.parse_args(["shards", "--digits", "--out", str(tmp_path), "--size", "16", "--per-shard", "200"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert re.search(r"^val: 360 samples in 2 shard\(s\): .*val-\{000000\.\.000001\}\.tar$", printed, re.M)
    assert json.loads((tmp_path / "classes.json").read_text()) == [str(d) for d in range(10)]

    loader = shard_loader(
        str(tmp_path / "val-{000000..000001}.tar"), mode="eval", num_classes=10, batch_size=128, num_workers=0,
        transform=eval_transform(16, 16, MEAN, STD),
    )
    images, labels = (torch.cat(parts) for parts in zip(*loader))
    want_images, want_labels = digits_tensors("val", 16)
    assert torch.equal(labels, want_labels)  # one reader reads the shards in order
    assert (images - want_images).abs().mean() * STD[0] < 2 / 255  # JPEG quality 95


# --- 2. splitting by rank and worker ----------------------------------------------------------------


def test_slot_parts_cover_every_sample_once() -> None:
    rng = random.Random(0)
    for num_shards, num_slots in itertools.product(range(1, 10), range(1, 9)):
        sizes = [rng.randrange(6) for _ in range(num_shards)]
        seen = [
            (shard, index)
            for slot in range(num_slots)
            for shard, stride, offset in slot_parts(num_shards, slot, num_slots)
            for index in range(offset, sizes[shard], stride)
        ]
        assert sorted(seen) == [(s, i) for s in range(num_shards) for i in range(sizes[s])]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_eval_reads_every_sample_exactly_once(numbered_shards: str, world_size: int, num_workers: int) -> None:
    labels = []
    for rank in range(world_size):
        loader = shard_loader(
            numbered_shards, mode="eval", num_classes=NUM_SAMPLES, batch_size=3, num_workers=num_workers,
            rank=rank, world_size=world_size, transform=to_unit_float,
        )
        for images, batch_labels in loader:
            assert images.dtype == torch.float32 and images.shape[1:] == (3, 6, 6)
            assert batch_labels.dtype == torch.int64
            assert torch.equal(images[:, 0, 0, 0], batch_labels.float() / 255)  # image and label stay together
            labels += batch_labels.tolist()
    assert sorted(labels) == list(range(NUM_SAMPLES))


def test_rank_defaults_to_torch_distributed(tmp_path: Path) -> None:
    assert resolve_rank() == (0, 1)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert resolve_rank() == (0, 1)
        assert resolve_rank(2, 3) == (2, 3)  # explicit arguments win
    finally:
        dist.destroy_process_group()
    with pytest.raises(SingeError, match="rank 3 is outside world size 3"):
        resolve_rank(3, 3)


def _train_labels(shards: str, batches: int, **options) -> list[int]:
    loader = shard_loader(shards, mode="train", num_classes=NUM_SAMPLES, batch_size=4, transform=to_unit_float,
                          shuffle_buffer=8, **options)
    drawn = list(itertools.islice(loader, batches))
    assert len(drawn) == batches and all(len(labels) == 4 for _, labels in drawn)
    return [label for _, labels in drawn for label in labels.tolist()]


def test_training_stream_never_runs_dry(numbered_shards: str) -> None:
    batches = 3 * NUM_SAMPLES // 4  # three epochs' worth, from one rank of three
    labels = _train_labels(numbered_shards, batches, num_workers=2, rank=2, world_size=3)
    assert set(labels) <= set(range(NUM_SAMPLES)) and len(set(labels)) > NUM_SAMPLES // 2


def test_training_stream_is_seeded_per_rank(numbered_shards: str) -> None:
    first = _train_labels(numbered_shards, 6, num_workers=0, rank=0, world_size=2)
    assert _train_labels(numbered_shards, 6, num_workers=0, rank=0, world_size=2) == first
    assert _train_labels(numbered_shards, 6, num_workers=0, rank=1, world_size=2) != first


# --- 3. corrupt samples and truncated shards --------------------------------------------------------


def _damaged_shards(root: Path) -> tuple[str, set[int]]:
    """Three shards of 5: one whole, one with two undecodable JPEGs, one cut inside its 4th image."""
    _write_tar(root / "d-0.tar", [_sample(f"a{i}", i, "JPEG") for i in range(5)])
    corrupt = [_sample(f"b{i}", 5 + i, "JPEG") for i in range(5)]
    corrupt[1]["jpg"] = corrupt[1]["jpg"][: len(corrupt[1]["jpg"]) // 2]  # truncated JPEG
    corrupt[3]["jpg"] = b"\xff\xd8\xff\xe0 not a jpeg at all"
    _write_tar(root / "d-1.tar", corrupt)
    cut = _write_tar(root / "d-2.tar", [_sample(f"c{i}", 10 + i, "JPEG") for i in range(5)])
    with tarfile.open(cut) as tar:
        fourth_image = [m for m in tar.getmembers() if m.name == "c3.jpg"][0]
    with open(cut, "r+b") as f:
        f.truncate(fourth_image.offset_data + fourth_image.size // 2)
    return str(root / "d-{0..2}.tar"), set(range(15)) - {6, 8, 13, 14}


@pytest.mark.parametrize(("world_size", "num_workers"), [(1, 0), (1, 2), (2, 2)])
def test_damaged_input_is_skipped_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, world_size: int, num_workers: int
) -> None:
    pattern, readable = _damaged_shards(tmp_path)
    labels, skipped_samples, skipped_shards = [], 0, 0
    with caplog.at_level(logging.WARNING, logger="singe_dist.data.shards"):
        for rank in range(world_size):
            loader = shard_loader(pattern, mode="eval", num_classes=15, batch_size=2, num_workers=num_workers,
                                  rank=rank, world_size=world_size, transform=to_unit_float)
            labels += [label for _, batch in loader for label in batch.tolist()]
            skipped_samples += loader.skips.samples
            skipped_shards += loader.skips.shards
    assert sorted(labels) == sorted(readable)
    assert (skipped_samples, skipped_shards) == (2, 1)
    # the end-of-pass summary is logged in the main process, whichever process did the skipping
    summaries = [r.getMessage() for r in caplog.records if "this pass over 3 shard(s)" in r.getMessage()]
    assert sum(int(re.search(r"(\d+) corrupt", m).group(1)) for m in summaries) == 2
    assert sum(int(re.search(r"(\d+) broken", m).group(1)) for m in summaries) == 1


# --- 4. user errors ---------------------------------------------------------------------------------


def _assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_pattern_matching_no_file(tmp_path: Path) -> None:
    pattern = str(tmp_path / "train-{000000..000009}.tar")
    with pytest.raises(SingeError) as error:
        ShardDataset(pattern, num_classes=10, mode="eval")
    _assert_one_line(error, pattern, "matches no file")


def test_pattern_with_missing_shards(numbered_shards: str) -> None:
    with pytest.raises(SingeError) as error:
        ShardDataset(numbered_shards.replace("{00..04}", "{00..06}"), num_classes=NUM_SAMPLES, mode="eval")
    _assert_one_line(error, "2 of 7 shards do not exist", "part-05.tar")


def test_shards_without_any_readable_sample(tmp_path: Path) -> None:
    (tmp_path / "a.tar").write_bytes(b"this is not a tar file" * 100)
    (tmp_path / "b.tar").write_bytes(b"")
    with pytest.raises(SingeError) as error:
        ShardDataset(str(tmp_path / "{a,b}.tar"), num_classes=10, mode="train")
    _assert_one_line(error, "no readable sample in any of the 2 shard(s)", "a.tar")


def test_training_stops_when_shards_become_unreadable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Resampling would otherwise draw broken shards forever (say, storage lost mid-run)."""
    monkeypatch.setattr(shards, "MAX_EMPTY_DRAWS", 20)
    shard = _write_tar(tmp_path / "only.tar", [_sample(f"k{i}", i) for i in range(3)])
    loader = shard_loader(shard, mode="train", num_classes=3, batch_size=2, num_workers=0, transform=to_unit_float)
    Path(shard).write_bytes(b"gone")
    with pytest.raises(SingeError) as error:
        next(iter(loader))
    _assert_one_line(error, "no readable sample in 20 shards drawn in a row")
    assert loader.skips.shards == 20


@pytest.mark.parametrize(
    ("bad_sample", "fragments"),
    [
        ({"__key__": "nolabel", "png": _sample("x", 0)["png"]}, ["'nolabel'", "no 'cls' label key"]),
        ({**_sample("big", 0), "cls": b"7"}, ["'big'", "label 7 outside [0, 5)"]),
        ({**_sample("neg", 0), "cls": b"-1"}, ["'neg'", "label -1 outside [0, 5)"]),
    ],
)
@pytest.mark.parametrize("position", ["first", "later"])
def test_bad_labels_are_one_line_errors(tmp_path: Path, bad_sample: dict, fragments: list[str], position: str) -> None:
    """First sample: caught at start-up. Later sample: raised when read, even from a worker process."""
    samples = [_sample(f"ok{i}", i) for i in range(4)]
    samples.insert(0 if position == "first" else 3, bad_sample)
    shard = _write_tar(tmp_path / "bad.tar", samples)
    with pytest.raises(SingeError) as error:
        for _ in shard_loader(shard, mode="eval", num_classes=5, batch_size=2, num_workers=2, transform=to_unit_float):
            pass
    _assert_one_line(error, *fragments, shard)
    assert not multiprocessing.active_children()  # the workers stopped with the error


# --- the benchmark script ----------------------------------------------------------------------------


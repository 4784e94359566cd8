"""Write webdataset shards: from an ImageFolder tree (what users have on disk) or from the bundled digits.

Shards are ``<prefix>-000000.tar``, ``<prefix>-000001.tar``... of ``per_shard`` samples each, every
sample an image (``jpg`` / ``png`` / ``webp``, the original bytes: no generation loss, no decode cost
at conversion) and its class index (``cls``). ``classes.json`` beside the shards lists the class names
in index order. Each shard is written under a temporary name, synced, then renamed, so a crash never
leaves a truncated shard under a final name; shards of an earlier run with the same prefix beyond the
new count are removed, so the directory holds exactly the new set.
"""

from __future__ import annotations

import io
import itertools
import json
import logging
import os
import random
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from singe_dist.data.digits import NUM_CLASSES, digits_split, upsample_rgb
from singe_dist.errors import SingeError

CLASSES_FILE = "classes.json"
# PIL format name -> sample key, for the formats the reader accepts as they are
KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}
DIGITS_JPEG_QUALITY = 95
# a webdataset sample: "__key__" (str) and one bytes value per field
Sample = dict[str, bytes | str]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShardSet:
    """Shards written for one prefix: their paths, the brace pattern to read them with, the sample count."""

    paths: list[Path]
    pattern: str
    samples: int
    skipped: int = 0


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def shard_pattern(out_dir: Path, prefix: str, count: int) -> str:
    """The brace pattern that expands to the ``count`` shards of ``prefix`` in ``out_dir``."""
    return str(out_dir / f"{prefix}-{{{0:06d}..{count - 1:06d}}}.tar")


def write_shards(samples: Iterable[Sample], out_dir: Path, prefix: str, per_shard: int) -> list[Path]:
    """Write webdataset samples (``__key__`` plus bytes fields) as shards of ``per_shard``, atomically."""
    if per_shard < 1:
        raise SingeError(f"samples per shard must be at least 1, got {per_shard}")
    out_dir.mkdir(parents=True, exist_ok=True)
    # whole seconds: a float mtime makes tarfile add a PAX header to every member, which doubles the
    # headers the reader parses per sample
    mtime = int(time.time())
    paths = []
    it = iter(samples)
    while chunk := list(itertools.islice(it, per_shard)):
        final = out_dir / shard_name(prefix, len(paths))
        temporary = out_dir / f".{final.name}.tmp"
        try:
            with open(temporary, "wb") as stream:
                with wds.TarWriter(stream, encoder=False, mtime=mtime) as writer:
                    for sample in chunk:
                        writer.write(sample)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
        paths.append(final)
    if paths:  # a conversion that produced nothing leaves an earlier one alone
        _remove_stale(out_dir, prefix, len(paths))
    return paths


def _remove_stale(out_dir: Path, prefix: str, count: int) -> None:
    """Delete ``prefix`` shards numbered ``count`` and above: leftovers of an earlier, larger run."""
    numbered = re.compile(rf"{re.escape(prefix)}-(\d{{6}})\.tar")
    for path in out_dir.iterdir():
        match = numbered.fullmatch(path.name)
        if match and int(match.group(1)) >= count:
            log.warning("removing %s, left over from an earlier conversion", path)
            path.unlink()


def write_classes(out_dir: Path, classes: list[str]) -> None:
    """Write ``classes.json``; if one is there already (another split), it must list the same classes."""
    path = out_dir / CLASSES_FILE
    if path.exists():
        existing = json.loads(path.read_text())
        if existing != classes:
            raise SingeError(
                f"{path} lists {len(existing)} classes that differ from the {len(classes)} being written; "
                "write each data set to its own directory"
            )
        return
    path.write_text(json.dumps(classes, indent=1) + "\n")


def _image_sample(path: str, label: int, key: str) -> Sample | None:
    """One sample from an image file: original bytes if the reader takes the format, else PNG; None if unreadable."""
    try:
        with Image.open(path) as image:
            image_key = KEPT_FORMATS.get(image.format or "")
            if image_key is None:
                encoded = io.BytesIO()
                image.convert("RGB").save(encoded, "PNG")
                image_key, data = "png", encoded.getvalue()
            else:
                data = Path(path).read_bytes()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exn:
        log.warning("skipping unreadable image %s: %s", path, exn)
        return None
    return {"__key__": key, image_key: data, "cls": str(label).encode()}


def imagefolder_to_shards(
    root: str | os.PathLike, out_dir: str | os.PathLike, *, prefix: str = "train", per_shard: int = 1000, seed: int = 0
) -> ShardSet:
    """Convert an ImageFolder tree (``root/<class>/<image>``) to shards, classes indexed by sorted folder name.

    The samples are shuffled (with ``seed``) before writing: ImageFolder order is class by class,
    and a shard holding a single class defeats the reader's shuffle buffer. Files PIL cannot open are
    skipped with a warning (``ShardSet.skipped``).
    """
    root, out = Path(root), Path(out_dir)
    try:
        classes, class_to_idx = find_classes(root)
        files = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as exn:
        raise SingeError(f"cannot read image folder {root}: {exn}") from None
    random.Random(seed).shuffle(files)
    out.mkdir(parents=True, exist_ok=True)
    write_classes(out, classes)
    skipped = 0

    def samples() -> Iterator[Sample]:
        nonlocal skipped
        for index, (path, label) in enumerate(files):
            key = f"{index:08d}_{re.sub(r'[^A-Za-z0-9_-]', '_', Path(path).stem)}"
            sample = _image_sample(path, label, key)
            if sample is None:
                skipped += 1
            else:
                yield sample

    paths = write_shards(samples(), out, prefix, per_shard)
    if not paths:
        raise SingeError(f"no readable image in {root}")
    return ShardSet(paths, shard_pattern(out, prefix, len(paths)), len(files) - skipped, skipped)


def _digits_samples(split: str, images: np.ndarray, labels: np.ndarray, size: int) -> Iterator[Sample]:
    pixels = (upsample_rgb(images, size) * 255).round().byte().permute(0, 2, 3, 1).numpy()
    for index, (image, label) in enumerate(zip(pixels, labels)):
        encoded = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image), "RGB").save(encoded, "JPEG", quality=DIGITS_JPEG_QUALITY)
        yield {"__key__": f"{split}_{index:05d}", "jpg": encoded.getvalue(), "cls": str(int(label)).encode()}


def digits_to_shards(out_dir: str | os.PathLike, *, size: int = 32, per_shard: int = 1000) -> dict[str, ShardSet]:
    """The scikit-learn digits as ``train-*.tar`` and ``val-*.tar`` (the fixed split), RGB JPEGs of ``size`` px."""
    if size < 8:
        raise SingeError(f"digits image size must be at least 8 px, got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_classes(out, [str(digit) for digit in range(NUM_CLASSES)])
    written = {}
    for split, (images, labels) in digits_split().items():
        paths = write_shards(_digits_samples(split, images, labels, size), out, split, per_shard)
        written[split] = ShardSet(paths, shard_pattern(out, split, len(paths)), len(labels))
    return written


# Fashion-MNIST (Xiao et al. 2017, MIT licence): the Debian package dataset-fashion-mnist installs these
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "val": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
FASHION_MNIST_CLASSES = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
                         "ankle boot"]


def read_idx(path: Path) -> np.ndarray:
    """Read an idx file (the MNIST format: magic, dimensions, then unsigned bytes), gzipped or not."""
    import gzip

    raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise SingeError(f"{path} is not an idx file of unsigned bytes (the MNIST format)")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)):
        raise SingeError(f"{path} is truncated: {len(body)} bytes of data for dimensions {dims}")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _grey_png_samples(split: str, images: np.ndarray, labels: np.ndarray) -> Iterator[Sample]:
    for index, (image, label) in enumerate(zip(images, labels)):
        encoded = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image), "L").save(encoded, "PNG")
        yield {"__key__": f"{split}_{index:05d}", "png": encoded.getvalue(), "cls": str(int(label)).encode()}


def fashion_mnist_to_shards(
    out_dir: str | os.PathLike, *, source: str | os.PathLike = FASHION_MNIST_DIR, per_shard: int = 10000
) -> dict[str, ShardSet]:
    """Fashion-MNIST as ``train-*.tar`` (60,000) and ``val-*.tar`` (the 10,000 test images).

    Images stay 28x28 grey and lossless (PNG); the reader decodes them to RGB. The files are the
    four idx ``.gz`` files of the original release, as the Debian package installs them.
    """
    src = Path(source)
    missing = [name for pair in FASHION_MNIST_FILES.values() for name in pair if not (src / name).is_file()]
    if missing:
        raise SingeError(f"Fashion-MNIST file {src / missing[0]} not found: install the Debian package "
                         "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass --source DIR")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_classes(out, FASHION_MNIST_CLASSES)
    written = {}
    for split, (image_file, label_file) in FASHION_MNIST_FILES.items():
        images, labels = read_idx(src / image_file), read_idx(src / label_file)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SingeError(f"{src / image_file} and {src / label_file} do not hold one label per image")
        if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
            raise SingeError(f"{src / label_file} has label {labels.max()}, Fashion-MNIST has 10 classes")
        paths = write_shards(_grey_png_samples(split, images, labels), out, split, per_shard)
        written[split] = ShardSet(paths, shard_pattern(out, split, len(paths)), len(labels))
    return written

"""A rehearsal data set in ImageNet's exact format, from real images: ImageFolder trees -> webdataset shards.

ImageNet's shape, not its size: ``--classes`` (1000) class folders named like WordNet ids
(``n01440764``...), ``--train-per-class`` / ``--val-per-class`` JPEGs each, of ImageNet-like sizes and
aspect ratios (500x375, 375x500, 500x333, 500x500, 640x480...; ``--max-side`` scales them down for
tests), JPEG quality 90. Every image is built from real pictures, never noise: a random crop of one of
scikit-learn's two sample photographs (``load_sample_images``: a temple in China, a flower),
colour-jittered (brightness, contrast, saturation, channel mixing), with a Fashion-MNIST garment
(``/usr/share/datasets/fashion-mnist``, the Debian package; read with ``singe_dist.data.convert.read_idx``;
``--fashion-dir`` names other idx files of that layout, as the tests do with scikit-learn's digits)
scaled up, tinted and pasted at a random place. A class is (garment label, tint, background photo): the
classes are learnable, as ImageNet's are. Everything is a deterministic function of ``--seed``.

The trees are then converted with the project's own command, ``singe-dist shards --imagefolder``, into
``train-*.tar`` / ``val-*.tar`` (samples ``jpg`` + ``cls``, the public ImageNet exports' conventions)
and ``classes.json``:

    uv run python benchmarks/imagenet_rehearsal_data.py --out runs/imagenet_rehearsal/data   # 1000 classes, ~1 min
    uv run python benchmarks/imagenet_rehearsal_data.py --out /tmp/tiny --classes 10 --max-side 48  # a test's

Prints one JSON line: the shard patterns, sample counts and sizes in bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from singe_dist.data.convert import FASHION_MNIST_DIR, FASHION_MNIST_FILES, read_idx  # noqa: E402

# (width, height) of ImageNet photographs: most are 500 px on the long side, landscape 4:3 the commonest
IMAGENET_SIZES = [(500, 375), (500, 375), (500, 333), (375, 500), (500, 500), (333, 500), (640, 480), (500, 400)]
JPEG_QUALITY = 90
FIRST_WNID = 1440764  # n01440764, ImageNet's first class (tench); later names only look like WordNet ids


def wnid(index: int) -> str:
    """A WordNet-id-like folder name, sorted in class order (ImageFolder indexes classes by sorted name)."""
    return f"n{FIRST_WNID + 7919 * index:08d}"


class Sources:
    """The real images everything is made of: two photographs and the Fashion-MNIST garments."""

    def __init__(self, fashion_dir: str | os.PathLike = FASHION_MNIST_DIR) -> None:
        from sklearn.datasets import load_sample_images

        self.photos = [np.asarray(image) for image in load_sample_images().images]  # 427x640 RGB each
        source = Path(fashion_dir)
        image_file, label_file = FASHION_MNIST_FILES["train"]
        if not (source / image_file).is_file():
            raise SystemExit(f"{source / image_file} not found: install the Debian package dataset-fashion-mnist "
                             "or pass --fashion-dir")
        images, labels = read_idx(source / image_file), read_idx(source / label_file)
        self.garments = [images[labels == label] for label in range(10)]  # 6,000 per label


def class_style(index: int, rng: np.random.Generator) -> dict:
    """What makes class ``index``: its garment label, tint (a 3x3 channel mix), background photo."""
    mix = np.eye(3) * rng.uniform(0.5, 1.0) + rng.uniform(0.0, 0.5, (3, 3))
    return {"garment": index % 10, "photo": (index // 10) % 2, "mix": mix / mix.sum(1, keepdims=True),
            "garment_colour": rng.uniform(0, 255, 3)}


def make_image(sources: Sources, style: dict, rng: np.random.Generator, max_side: int | None) -> Image.Image:
    """One photograph of a class: a jittered crop of its background photo with a garment of its label on it."""
    width, height = IMAGENET_SIZES[rng.integers(len(IMAGENET_SIZES))]
    if max_side is not None and max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(8, round(width * scale)), max(8, round(height * scale))
    photo = sources.photos[style["photo"]]
    ph, pw = photo.shape[:2]
    crop_w = int(rng.uniform(0.35, 1.0) * pw)  # a crop of the aspect ratio wanted, at a random scale and place
    crop_h = min(ph, int(crop_w * height / width))
    crop_w = int(crop_h * width / height)
    top, left = rng.integers(0, ph - crop_h + 1), rng.integers(0, pw - crop_w + 1)
    crop = photo[top : top + crop_h, left : left + crop_w].astype(np.float64)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    tinted = np.clip(crop @ style["mix"].T, 0, 255).astype(np.uint8)
    image = Image.fromarray(np.ascontiguousarray(tinted)).resize((width, height), Image.BILINEAR)
    for enhancer, low, high in ((ImageEnhance.Brightness, 0.7, 1.3), (ImageEnhance.Contrast, 0.7, 1.3),
                                (ImageEnhance.Color, 0.6, 1.4)):
        image = enhancer(image).enhance(rng.uniform(low, high))
    # the garment: a random one of the class's label, 35-75% of the short side, tinted, pasted where it falls
    pool = sources.garments[style["garment"]]
    garment = pool[rng.integers(len(pool))]
    side = max(8, int(rng.uniform(0.35, 0.75) * min(width, height)))
    alpha = Image.fromarray(garment).resize((side, side), Image.BICUBIC)
    colour = np.clip(style["garment_colour"] + rng.normal(0, 20, 3), 0, 255).astype(np.uint8)
    layer = Image.new("RGB", (side, side), tuple(int(c) for c in colour))
    image.paste(layer, (int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))), alpha)
    return image


def make_imagefolders(out: Path, classes: int, train_per_class: int, val_per_class: int, seed: int,
                      max_side: int | None, sources: Sources) -> dict[str, int]:
    """``out/images/{train,val}/<wnid>/<wnid>_<i>.JPEG``; returns the image count per split."""
    counts = {"train": 0, "val": 0}
    for c in range(classes):
        rng = np.random.default_rng([seed, c])
        style = class_style(c, rng)
        for split, per_class in (("train", train_per_class), ("val", val_per_class)):
            folder = out / "images" / split / wnid(c)
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                make_image(sources, style, rng, max_side).save(folder / f"{wnid(c)}_{split}_{i}.JPEG", "JPEG",
                                                               quality=JPEG_QUALITY)
                counts[split] += 1
    return counts


def convert(out: Path, split: str, per_shard: int) -> dict:
    """``singe-dist shards --imagefolder`` (the CLI, as a user runs it) for one split; its shard pattern."""
    shards = out / "shards"
    cmd = [sys.executable, "-m", "singe_dist.cli", "shards", "--imagefolder", str(out / "images" / split),
           "--out", str(shards), "--prefix", split, "--per-shard", str(per_shard)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"singe-dist shards failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    paths = sorted(shards.glob(f"{split}-*.tar"))
    return {"pattern": str(shards / f"{split}-{{000000..{len(paths) - 1:06d}}}.tar"), "shards": len(paths),
            "bytes": sum(p.stat().st_size for p in paths), "first_shard": str(paths[0])}


def make_data(out: str | os.PathLike, *, classes: int = 1000, train_per_class: int = 2, val_per_class: int = 1,
              per_shard: int = 250, val_per_shard: int = 50, seed: int = 0, max_side: int | None = None,
              fashion_dir: str | os.PathLike = FASHION_MNIST_DIR, keep_images: bool = True) -> dict:
    """Make the trees and their shards under ``out`` (replaced); returns what :func:`main` prints."""
    out = Path(out).resolve()  # absolute shard patterns: a Ray job runs in a copy of the working directory
    if out.exists():
        shutil.rmtree(out)
    started = time.perf_counter()
    counts = make_imagefolders(out, classes, train_per_class, val_per_class, seed, max_side, Sources(fashion_dir))
    images_s = time.perf_counter() - started
    jpegs = list((out / "images").rglob("*.JPEG"))
    sizes = [Image.open(p).size for p in jpegs[:200]]
    info = {"classes": classes, "images": counts, "seed": seed, "images_s": round(images_s, 1),
            "jpeg_bytes": sum(p.stat().st_size for p in jpegs), "example_sizes": sorted(set(sizes))[:8]}
    started = time.perf_counter()
    info["train"] = convert(out, "train", per_shard)
    info["val"] = convert(out, "val", val_per_shard)
    info["shards_s"] = round(time.perf_counter() - started, 1)
    info["classes_json"] = str(out / "shards" / "classes.json")
    if not keep_images:
        shutil.rmtree(out / "images")
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/imagenet_rehearsal/data", help="directory (replaced)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--train-per-class", type=int, default=2)
    parser.add_argument("--val-per-class", type=int, default=1)
    parser.add_argument("--per-shard", type=int, default=250, help="training samples per shard")
    parser.add_argument("--val-per-shard", type=int, default=50,
                        help="validation samples per shard (small: a CPU rehearsal evaluates on one shard)")
    parser.add_argument("--max-side", type=int, help="scale images down to this long side (tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fashion-dir", default=FASHION_MNIST_DIR)
    parser.add_argument("--drop-images", action="store_true", help="delete the ImageFolder trees once sharded")
    args = parser.parse_args(argv)
    info = make_data(args.out, classes=args.classes, train_per_class=args.train_per_class,
                     val_per_class=args.val_per_class, per_shard=args.per_shard,
                     val_per_shard=args.val_per_shard, seed=args.seed,
                     max_side=args.max_side, fashion_dir=args.fashion_dir, keep_images=not args.drop_images)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())

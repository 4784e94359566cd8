"""From shard to labelled image: read a shard's samples, check their labels, decode, skip what is broken.

A sample is one image (key ``jpg``, ``jpeg``, ``png`` or ``webp``) and its integer label (key ``cls``),
the layout of the public ImageNet webdataset exports.

**Decoding** reads the header with PIL (format check, and PIL's decompression-bomb limit on the
pixel count), then decodes with ``torchvision.io.decode_image`` into a uint8 (3, H, W) RGB tensor, which
is what transforms receive: libjpeg-turbo straight into a tensor, pixel-identical to PIL's decode and
about a quarter cheaper (no PIL image object and RGB copy), and the tensor transforms that follow avoid a
PIL round trip.

**Robustness.** An undecodable image or a shard that breaks off (truncated, unreadable) is skipped,
logged, and counted in a :class:`SkipCounter` that lives in shared memory, so the counts from the
DataLoader worker processes reach the caller. Input that cannot be right (a sample without ``cls``, a
label outside ``[0, num_classes)``) raises :class:`SingeError`, at start-up for the first sample and
for any later one when it is read.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import webdataset as wds
from PIL import Image
from torchvision.io import ImageReadMode, decode_image

from singe_dist.errors import SingeError

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
LABEL_KEY = "cls"
# what PIL raises on a header it cannot read, and torchvision (RuntimeError) on data it cannot decode
DECODE_ERRORS = (OSError, ValueError, SyntaxError, RuntimeError, Image.DecompressionBombError)

# the shard reader's one logger, named for its public module: the skip warnings and the end-of-pass
# summary (singe_dist.data.shards) are configured and filtered together
log = logging.getLogger("singe_dist.data.shards")


class SkipCounter:
    """Corrupt samples and broken shards skipped, cumulative until :meth:`reset`.

    The counts live in a lock-protected shared array: a DataLoader hands the dataset (and this counter
    with it) to its worker processes when it starts them, and their increments are visible here. The
    array comes from the spawn context because a lock made in the fork context cannot be handed to
    spawned workers, while a spawn one works with every start method.
    """

    def __init__(self) -> None:
        self._counts = multiprocessing.get_context("spawn").Array("q", 2)  # [samples, shards]

    def add_sample(self) -> None:
        with self._counts.get_lock():
            self._counts[0] += 1

    def add_shard(self) -> None:
        with self._counts.get_lock():
            self._counts[1] += 1

    @property
    def samples(self) -> int:
        """Samples skipped because their image could not be decoded (or was missing)."""
        return self._counts[0]

    @property
    def shards(self) -> int:
        """Shard reads that broke off (truncated, unreadable), samples before the break kept.

        Training resamples shards, so a broken shard counts once per time it is drawn.
        """
        return self._counts[1]

    def reset(self) -> None:
        with self._counts.get_lock():
            self._counts[0] = self._counts[1] = 0

    def __str__(self) -> str:
        return f"{self.samples} corrupt sample(s) and {self.shards} broken shard(s) skipped"


def _part_samples(url: str, stride: int, offset: int, failures: list[Exception]) -> Iterator[dict[str, Any]]:
    """Raw samples of one shard with index % stride == offset; a read error ends the shard.

    The error is appended to ``failures``. The sample being assembled when the shard broke off is
    incomplete and dropped; all samples before it are kept.
    """

    def note(exn: Exception) -> bool:
        failures.append(exn)
        return False  # stop reading this shard

    for index, sample in enumerate(wds.tarfile_samples([{"url": url}], handler=note)):
        if failures:
            return
        if index % stride == offset:
            yield sample


def _image_key(sample: dict[str, Any]) -> str | None:
    return next((key for key in IMAGE_KEYS if key in sample), None)


def _label(sample: dict[str, Any], num_classes: int) -> int:
    """The sample's ``cls`` as an int in [0, num_classes); a one-line SingeError otherwise."""
    where = f"sample {sample['__key__']!r} of shard {sample['__url__']}"
    if LABEL_KEY not in sample:
        keys = ", ".join(sorted(key for key in sample if not key.startswith("__")))
        raise SingeError(f"{where} has no {LABEL_KEY!r} label key (its keys: {keys})")
    raw = sample[LABEL_KEY]
    try:
        label = int(raw)
    except ValueError:
        raise SingeError(f"{where} has a non-integer {LABEL_KEY!r} label {raw!r}") from None
    if not 0 <= label < num_classes:
        raise SingeError(f"{where} has {LABEL_KEY!r} label {label} outside [0, {num_classes})")
    return label


def _short(exn: Exception) -> str:
    message = re.sub(r"^\S+, \S+\.cpp:\d+, ", "", str(exn.args[0]) if exn.args else "")  # torchvision's source location
    return f"{type(exn).__name__}: {message}"


def labelled_samples(
    parts: Iterable[dict[str, Any]], skips: SkipCounter, num_classes: int, max_empty_draws: int | None
) -> Iterator[dict[str, Any]]:
    """Pipeline stage: shard parts -> ``{"key", "url", "image" (bytes), "label"}``, skipping broken input.

    A broken shard is counted once, by the slot reading offset 0 of it. A sample with a label but no
    image is what a shard cut at a member boundary ends with, so it is skipped as corrupt, not an error.
    """
    empty_draws = 0
    for part in parts:
        url, offset, failures = part["url"], part.get("offset", 0), []
        kept = 0
        for sample in _part_samples(url, part.get("stride", 1), offset, failures):
            image_key = _image_key(sample)
            if image_key is None:
                skips.add_sample()
                log.warning("skipped sample %r of %s: no image key; %s so far", sample["__key__"], url, skips)
                continue
            kept += 1
            label = _label(sample, num_classes)
            yield {"key": sample["__key__"], "url": url, "image": sample[image_key], "label": label}
        if failures and offset == 0:
            skips.add_shard()
            log.warning("shard %s broke off (%s), samples before it kept; %s so far", url, _short(failures[0]), skips)
        empty_draws = 0 if kept else empty_draws + 1
        if max_empty_draws is not None and empty_draws >= max_empty_draws:
            raise SingeError(f"no readable sample in {empty_draws} shards drawn in a row, the data is unusable ({skips})")


def decode_rgb(data: bytes) -> torch.Tensor:
    """Encoded image bytes -> uint8 RGB tensor (3, H, W); raises one of ``DECODE_ERRORS`` if they are not an image."""
    with Image.open(io.BytesIO(data)):  # header only: format, size, and PIL's decompression-bomb check
        pass
    return decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def decoded(samples: Iterable[dict[str, Any]], skips: SkipCounter, transform: Callable) -> Iterator[tuple[Any, int]]:
    """Pipeline stage: decode to an RGB tensor and transform; an undecodable image is skipped and counted."""
    for sample in samples:
        try:
            rgb = decode_rgb(sample["image"])
        except DECODE_ERRORS as exn:
            skips.add_sample()
            log.warning("skipped sample %r of %s: %s; %s so far", sample["key"], sample["url"], _short(exn), skips)
            continue
        yield transform(rgb), sample["label"]


def check_first_sample(urls: list[str], num_classes: int) -> None:
    """Read the first complete sample in the main process, so that a wrong layout fails at start-up.

    Shards that are broken from their first byte are passed over; if all are, nothing can be read,
    and that is an error too.
    """
    failures: list[Exception] = []
    for url in urls:
        shard_failures: list[Exception] = []
        for sample in _part_samples(url, 1, 0, shard_failures):
            if _image_key(sample) is not None:
                _label(sample, num_classes)
                return
        failures += shard_failures
    reason = f": {_short(failures[0])}" if failures else ""
    raise SingeError(f"no readable sample in any of the {len(urls)} shard(s), the first is {urls[0]}{reason}")


__all__ = ["DECODE_ERRORS", "IMAGE_KEYS", "LABEL_KEY", "SkipCounter", "check_first_sample", "decode_rgb", "decoded",
           "labelled_samples"]

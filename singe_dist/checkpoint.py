"""Checkpoints: architecture name + plan + state dict, never pickled code.

A pruned model is rebuilt by building the original architecture by name and replaying the plan, then
loading the weights. The file holds only tensors and plain containers, so it is read with
``torch.load(weights_only=True)``: a file crafted to execute code on unpickling is refused. Writes go
through a temporary file and a rename, so a crash or a full disk never leaves a truncated checkpoint
in place of the previous one.
"""

from __future__ import annotations

import os
from collections import OrderedDict
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from singe_dist.atomic import atomic_write
from singe_dist.errors import SingeError
from singe_dist.models import build_model
from singe_dist.plan.plan import Plan, apply_plan

CHECKPOINT_FORMAT = "singe-dist/checkpoint/v1"


class _WriteRecorder:
    """A file wrapper that remembers the OSError of a failed write.

    ``torch.save`` turns an exception of the file's ``write`` (a full disk) into a RuntimeError about
    zip positions; the recorded error lets :func:`atomic_torch_save` report the real cause.
    """

    def __init__(self, fh: IO[bytes]) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save`` through :func:`singe_dist.atomic.atomic_write`: never a truncated checkpoint.

    A full disk is a one-line SingeError naming the file; the previous checkpoint stays in place.
    """

    def write(fh: IO[bytes]) -> None:
        recorder = _WriteRecorder(fh)
        try:
            torch.save(obj, recorder)
        except RuntimeError:
            if recorder.error is not None:
                raise recorder.error from None
            raise

    atomic_write(path, write)


def load_state_dict_strict(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, turning missing, unexpected or mis-shaped keys into one clear line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first: {missing[0]})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (first: {unexpected[0]})")
        raise SingeError(f"checkpoint {source} does not match the model: {'; '.join(parts)}")
    for key, tensor in own.items():
        got = state_dict[key]
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(tensor.shape):
            shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
            raise SingeError(
                f"checkpoint {source} does not match the model: {key} has shape {shape}, "
                f"model expects {tuple(tensor.shape)}"
            )
    model.load_state_dict(state_dict)


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (torch's text is a page long)."""
    text = _ANSI.sub("", str(exc)).strip()
    found = re.search(r"(?:Unsupported global: |unsupported )GLOBAL ([^\s]+?)(?:\s|$)", text)
    if found:  # a pickle that would build an object (or call a function) when loaded
        return (f"it refers to {found.group(1)}, which is not a tensor or a plain container; weights_only=True "
                "refused it before anything in the file was run")
    if "Weights only load failed" in text:
        detail = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
        return f"weights_only=True refused it: {detail.group(1).strip() if detail else 'unsupported content'}"
    first = text.splitlines()[0] if text else ""
    if isinstance(exc, RuntimeError) and first:
        return first
    return f"the file is damaged or not a PyTorch checkpoint ({type(exc).__name__}{': ' + first if first else ''})"


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file safely (``weights_only=True``) and check its layout.

    Accepts our own format and, for convenience, a bare state dict (as torchvision or a user's
    training script would save it).
    """
    path = Path(path)
    if not path.is_file():
        raise SingeError(f"checkpoint {path} does not exist")
    with path.open("rb") as fh:
        head = fh.read(4)
    # torch.save writes a zip archive (PK..), older versions a pickle (protocol byte 0x80): anything else
    # is some other file, whatever torch.load's unpickler would make of it
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        what = "an empty file" if not head else "neither a zip archive nor a pickle, as torch.save writes"
        raise SingeError(f"checkpoint {path} is not a PyTorch checkpoint ({what})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad input file
        raise SingeError(f"checkpoint {path} cannot be loaded safely: {_load_failure(exc)}") from None
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": CHECKPOINT_FORMAT, "arch": None, "num_classes": None, "plan": None,
                "state_dict": obj}
    raise SingeError(f"checkpoint {path} is neither a singe-dist checkpoint nor a state dict")


def _cpu_state_dict(model: nn.Module) -> OrderedDict[str, torch.Tensor]:
    """The state dict on the CPU, with its per-module version metadata: some layers (torchvision's
    MNASNet) refuse to load a state dict without it."""
    state = model.state_dict()
    out = OrderedDict((k, v.detach().cpu()) for k, v in state.items())
    out._metadata = getattr(state, "_metadata", None)  # type: ignore[attr-defined]
    return out


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    arch: str,
    num_classes: int,
    plan: Plan | None = None,
    extra: dict[str, Any] | None = None,
    write: Callable[[Any, Path], None] = atomic_torch_save,
) -> None:
    """Write ``model`` as (arch, num_classes, plan, state dict) atomically: every checkpoint goes through here.

    ``extra``: more entries (a job checkpoint's position, optimizer, RNG state and report). ``write``
    stores the payload (fault injection swaps in a writer that fails half-way).
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "num_classes": num_classes,
        "plan": plan.to_dict() if plan is not None else None,
        "state_dict": _cpu_state_dict(model),
    }
    payload.update(extra or {})
    write(payload, Path(path))


def load_model(
    path: str | os.PathLike[str] | None,
    arch: str | None = None,
    num_classes: int | None = None,
) -> tuple[nn.Module, str, int, Plan | None]:
    """Build the model a checkpoint describes (replaying its plan) and load its weights.

    ``arch``/``num_classes`` are needed for a bare state dict and must agree with the checkpoint
    otherwise. With ``path=None`` the model is freshly initialised.
    """
    if path is None:
        if arch is None or num_classes is None:
            raise SingeError("without a checkpoint, the model name and num_classes must be given")
        return build_model(arch, num_classes), arch, num_classes, None
    ckpt = read_checkpoint(path)
    for key, given in (("arch", arch), ("num_classes", num_classes)):
        if given is not None and ckpt[key] is not None and ckpt[key] != given:
            raise SingeError(f"checkpoint {path} is for {key}={ckpt[key]!r}, not {given!r}")
    arch = ckpt["arch"] or arch
    num_classes = ckpt["num_classes"] or num_classes
    if arch is None or num_classes is None:
        raise SingeError(f"checkpoint {path} is a bare state dict: give the model name and num_classes")
    plan = Plan.from_dict(ckpt["plan"], source=f"plan in checkpoint {path}") if ckpt["plan"] else None
    model = build_model(arch, num_classes)
    if plan is not None:
        if plan.arch != arch:
            raise SingeError(f"checkpoint {path}: its plan is for {plan.arch!r}, not {arch!r}")
        apply_plan(model, plan)
    load_state_dict_strict(model, ckpt["state_dict"], str(path))
    return model, arch, num_classes, plan

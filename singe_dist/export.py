"""ONNX export of a (pruned) model, verified through ONNX Runtime before the file is kept.

Why: a pruned checkpoint rebuilds by plan replay, which needs this package and PyTorch; a deployment
usually wants neither. ONNX is the format serving stacks read (ONNX Runtime, TensorRT, OpenVINO), and a
pruned network is an ordinary dense one with fewer channels, so it exports like any other. An export
can still be silently wrong (an operator translated differently, a shape fixed by tracing), so the
file is only kept after ONNX Runtime reproduced PyTorch on random inputs at two batch sizes, neither
of them the tracing example's, which also proves the batch dimension is dynamic.

The rule: for each checked batch, ``max |onnx - torch| <= 1e-4 * max |torch|`` (the maximum absolute
difference over all outputs, relative to the largest absolute PyTorch output; a scale below 1e-6 is
taken as 1e-6). A failure is a one-line :class:`SingeError` and nothing is written: the model is
serialised to memory, checked, and only then written through :func:`singe_dist.atomic.atomic_write`
(a temporary file renamed over the target).

Exporter: the TorchScript-based one (``torch.onnx.export(..., dynamo=False)``). The newer
``torch.export``-based exporter (the default since PyTorch 2.9) needs the ``onnxscript`` package, which
this project does not install; the TorchScript exporter needs only ``onnx``, handles every torchvision
CNN, and takes the dynamic batch as ``dynamic_axes``. It serialises to memory, so models whose weights
exceed ONNX's 2 GB protobuf limit are out of its reach (no image classifier this project prunes is near).
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from singe_dist.atomic import atomic_write
from singe_dist.errors import SingeError

TOLERANCE = 1e-4  # max |onnx - torch| relative to max |torch|, per checked batch
CHECK_BATCHES = (1, 3)  # batch sizes ONNX Runtime is checked at; the export traces batch 2
TRACE_BATCH = 2
OPSET = 17
INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass
class ExportResult:
    """What :func:`export_onnx` wrote and how closely ONNX Runtime matched PyTorch."""

    path: Path
    input_size: tuple[int, int, int]
    batch_sizes: tuple[int, ...]
    max_error: float  # the largest relative difference over the checked batches
    size_bytes: int

    def summary(self) -> str:
        c, h, w = self.input_size
        sizes = " and ".join(str(b) for b in self.batch_sizes)
        return (f"wrote {self.path} ({self.size_bytes / 1e6:.1f} MB, input N x {c} x {h} x {w}, dynamic batch); "
                f"ONNX Runtime matches PyTorch at batch {sizes}: max difference {self.max_error:.1e} of the "
                f"output scale (limit {TOLERANCE:.0e})")


def relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    """``max |other - reference| / max(max |reference|, 1e-6)``: the comparison rule of the export."""
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-6)
    return float(np.abs(other.astype(np.float64) - reference.astype(np.float64)).max(initial=0.0)) / scale


def onnx_bytes(model: nn.Module, input_size: tuple[int, int, int], opset: int = OPSET) -> bytes:
    """Serialise ``model`` (eval mode) to ONNX in memory, with a dynamic batch dimension."""
    example = torch.randn(TRACE_BATCH, *input_size, generator=torch.Generator().manual_seed(0))
    buffer = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
            torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}})
    except Exception as exc:  # noqa: BLE001 - an operator ONNX lacks, a model that does not trace
        raise SingeError(f"cannot export the model to ONNX: {_first_line(exc)}") from None
    return buffer.getvalue()


def run_onnxruntime(data: bytes, x: np.ndarray) -> np.ndarray:
    """The ONNX model's output for ``x`` on ONNX Runtime's CPU provider."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]


def export_onnx(model: nn.Module, path: str | os.PathLike[str], input_size: tuple[int, int, int],
                batch_sizes: tuple[int, ...] = CHECK_BATCHES, tolerance: float = TOLERANCE) -> ExportResult:
    """Export ``model`` to ``path`` as ONNX, keeping the file only if ONNX Runtime reproduces PyTorch.

    Raises a one-line SingeError (and leaves ``path`` as it was) when the export fails, the ONNX
    checker refuses the model, or an output differs by more than ``tolerance`` (module docstring).
    """
    import onnx

    path = Path(path)
    model = copy.deepcopy(model).cpu().eval()
    input_size = tuple(int(v) for v in input_size)  # type: ignore[assignment]
    data = onnx_bytes(model, input_size)
    try:
        onnx.checker.check_model(onnx.load_from_string(data))
    except Exception as exc:  # noqa: BLE001
        raise SingeError(f"the exported ONNX model is invalid: {_first_line(exc)}; {path} not written") from None
    worst = 0.0
    generator = torch.Generator().manual_seed(1)
    for batch in batch_sizes:
        x = torch.randn(batch, *input_size, generator=generator)
        with torch.no_grad():
            expected = model(x).numpy()
        try:
            got = run_onnxruntime(data, x.numpy())
        except Exception as exc:  # noqa: BLE001
            raise SingeError(f"ONNX Runtime cannot run the exported model at batch {batch}: {_first_line(exc)}; "
                             f"{path} not written") from None
        if got.shape != expected.shape:
            raise SingeError(f"ONNX Runtime's output has shape {got.shape} at batch {batch}, PyTorch's "
                             f"{expected.shape}; {path} not written")
        error = relative_error(expected, got)
        worst = max(worst, error)
        if not error <= tolerance:  # NaN fails too
            raise SingeError(f"ONNX Runtime differs from PyTorch at batch {batch}: max difference {error:.2e} of "
                             f"the output scale (limit {tolerance:.0e}); {path} not written")
    atomic_write(path, lambda fh: fh.write(data))
    return ExportResult(path, input_size, tuple(batch_sizes), worst, len(data))  # type: ignore[arg-type]


def export_checkpoint(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str],
                      image_size: int | None = None) -> ExportResult:
    """Rebuild a checkpoint's model (plan replay) and export it with :func:`export_onnx`.

    ``image_size``: the side of the square input; default the plan's input size, required for a
    checkpoint without a plan.
    """
    from singe_dist.checkpoint import load_model

    if image_size is not None and image_size <= 0:
        raise SingeError(f"--image-size must be > 0, got {image_size}")
    model, _arch, _classes, plan = load_model(checkpoint)
    if image_size is not None:
        input_size = (plan.input_size[0] if plan is not None else 3, image_size, image_size)
    elif plan is not None:
        input_size = tuple(plan.input_size)
    else:
        raise SingeError(f"checkpoint {checkpoint} has no plan to take the input size from: give --image-size")
    return export_onnx(model, path, input_size)  # type: ignore[arg-type]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= 300 else line[:297] + "..."

"""Measured inference latency: what a smaller model is for."""

from __future__ import annotations

import copy
import platform
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn


def cpu_name() -> str:
    """The CPU's model name, for the header of a latency table (numbers mean nothing without it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure_latency(
    model: nn.Module,
    input_size: Sequence[int],
    batch_sizes: Sequence[int] = (1, 8),
    device: torch.device | str = "cpu",
    repeats: int = 20,
    warmup: int = 3,
) -> dict[str, float]:
    """Median milliseconds per forward pass for each batch size, e.g. ``{"cpu_b1_ms": 3.1}``."""
    device = torch.device(device)
    model = model.to(device).eval()
    out = {}
    with torch.no_grad():
        for bs in batch_sizes:
            x = torch.randn(bs, *input_size, device=device)
            times = []
            for i in range(warmup + repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                model(x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if i >= warmup:
                    times.append(time.perf_counter() - start)
            out[f"{device.type}_b{bs}_ms"] = 1000.0 * statistics.median(times)
    return out


def measure_latencies(models: dict[str, nn.Module], input_size: Sequence[int], batch_sizes: Sequence[int],
                      device: torch.device | str) -> dict[str, dict[str, float]]:
    """The report's ``latency``: each model on the CPU, and on ``device`` (a copy) when a GPU is visible."""
    latency = {}
    for name, model in models.items():
        latency[name] = measure_latency(model, input_size, batch_sizes, "cpu")
        if torch.cuda.is_available():  # on a copy: the model handed on (to the tracker) stays on the CPU
            latency[name].update(measure_latency(copy.deepcopy(model), input_size, batch_sizes, device))
    return latency

"""The pruned model as MLflow artifacts: a PyTorch model that loads anywhere, optionally registered,
and beside it ``model_onnx/model.onnx`` checked through ONNX Runtime.

The PyTorch model is logged with a signature and an input example, so that MLflow's serving and
``mlflow.pytorch.load_model`` know its input, and with the package's code, so that it loads without
singe-dist installed.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import nn

from singe_dist.tracking.redaction import short_error, tag_value

MODEL_NAME = "model"


@contextlib.contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (``log_model`` uses it) at ``uri`` for a moment, then restore it.

    The model registry follows (MLflow's default registry is the tracking store) unless the user set
    ``MLFLOW_REGISTRY_URI``.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = os.environ.get("MLFLOW_TRACKING_URI")
    old = getattr(tracking_utils, "_tracking_uri", None)
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(old)
        if env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = env


class _DropPickleWarning(logging.Filter):
    """We log pickles on purpose (see :func:`log_pytorch_model`): MLflow's warning about them is noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Pickle or CloudPickle" not in record.getMessage()


def _example_and_signature(model: nn.Module, input_size: tuple[int, ...]) -> tuple[Any, Any]:
    """A seeded random input of batch 1 and the signature inferred from the model's output on it."""
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.random.default_rng(0).standard_normal((1, *input_size)).astype(np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    return example, infer_signature(example, output)


def log_pytorch_model(client: Any, *, uri: str, experiment_id: str, run_id: str, model: nn.Module,
                      input_size: tuple[int, ...], registered: str | None) -> str:
    """Log ``model`` to the run (registered as ``registered`` when given); returns its ``models:/`` URI."""
    import mlflow
    import mlflow.pytorch
    import torchvision

    import singe_dist

    model = copy.deepcopy(model).cpu().eval()
    example, signature = _example_and_signature(model, input_size)
    requirements = [*mlflow.pytorch.get_default_pip_requirements(),
                    f"torchvision=={torchvision.__version__.split('+')[0]}"]
    extra: dict[str, Any] = {}
    if "serialization_format" in inspect.signature(mlflow.pytorch.log_model).parameters:
        # MLflow 3's default "pt2" (torch.export) specialises the batch dimension to the example's 1:
        # the logged model would refuse any other batch size. Pickle keeps the module as it is; the
        # package's code travels with it (code_paths), so it loads without singe-dist installed.
        extra["serialization_format"] = "pickle"
    pickle_filter = _DropPickleWarning()
    logging.getLogger("mlflow.pytorch").addFilter(pickle_filter)
    try:
        with _global_tracking_uri(uri):
            logged = client.create_logged_model(experiment_id, name=MODEL_NAME, source_run_id=run_id)
            info = mlflow.pytorch.log_model(
                model, name=MODEL_NAME, model_id=logged.model_id, run_id=run_id, signature=signature,
                input_example=example, pip_requirements=requirements,
                code_paths=[str(Path(singe_dist.__file__).parent)], registered_model_name=registered,
                await_registration_for=60 if registered else 0, **extra)
    finally:
        logging.getLogger("mlflow.pytorch").removeFilter(pickle_filter)
    return info.model_uri


def log_onnx_model(client: Any, run_id: str, model: nn.Module, input_size: tuple[int, ...]) -> None:
    """``model_onnx/model.onnx``: the model exported and checked by :func:`singe_dist.export.export_onnx`.

    A model that does not export (or does not match through ONNX Runtime) costs only this file: a
    warning and the run's ``model_onnx_error`` tag say why; the run and the PyTorch model stand.
    """
    from singe_dist.export import export_onnx  # looked up at each call: tests replace it

    with tempfile.TemporaryDirectory(prefix="singe-mlflow-") as tmp:
        try:
            result = export_onnx(model, Path(tmp) / "model.onnx", tuple(input_size))  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001 - the export is optional next to the run
            # stacklevel 3 (here <- MlflowTracker._log_onnx <- its caller): the warning names the tracker's
            # module, so a filter on singe_dist.tracking.mlflow_tracker still catches it
            warnings.warn(f"ONNX model not logged: {short_error(exc)}", RuntimeWarning, stacklevel=3)
            client.set_tag(run_id, "model_onnx_error", tag_value(short_error(exc)))
            return
        client.log_artifact(run_id, str(result.path), "model_onnx")
    client.set_tag(run_id, "model_onnx", "model_onnx/model.onnx")


__all__ = ["MODEL_NAME", "log_pytorch_model", "log_onnx_model"]

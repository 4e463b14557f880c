"""The trainer's versions as ONNX models (``exportFormat = onnx``): the deployable model
(normalisation folded in) exported by torch.onnx.export with a dynamic number of points, for the
model workers' ONNX Runtime backend and for solvers that link ONNX Runtime instead of libtorch.
Each export is checked against the torch model on realistic rows where ONNX Runtime is installed,
so a version that ONNX Runtime would answer differently is never published."""

from __future__ import annotations

import io
import warnings

import numpy as np

from ..errors import ConfigError, NekrsMLError

FORMAT = "onnx"
INPUT, OUTPUT = "x", "y"
OPSET = 17


def check_available() -> None:
    """exportFormat = onnx needs the onnx package (torch.onnx.export writes through it)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("exportFormat = onnx: the trainer needs the onnx package, which is not "
                          "installed; pip install 'nekrs_ml[backends]' (or onnx) where the "
                          "trainer runs, or set exportFormat = torch-export") from None


def onnx_bytes(model, n_in: int) -> bytes:
    """The ONNX model of a deployable (CPU, float32) module: input "x" [points, n_in], output
    "y" [points, n_out]."""
    import torch

    check_available()
    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.inference_mode(False):
        warnings.simplefilter("ignore")  # the exporter's notes on its own deprecations
        torch.onnx.export(model, (torch.zeros(8, n_in, dtype=torch.float32),), buffer,
                          input_names=[INPUT], output_names=[OUTPUT], opset_version=OPSET,
                          dynamic_axes={INPUT: {0: "points"}, OUTPUT: {0: "points"}},
                          dynamo=False)
    blob = buffer.getvalue()
    check_against_torch(model, blob, n_in)
    return blob


def check_against_torch(model, blob: bytes, n_in: int) -> None:
    """ONNX Runtime (where installed) answers the probe rows as torch does."""
    try:
        import onnxruntime
    except ImportError:
        return
    import torch

    from ..models.backend_formats import probe_rows

    rows = probe_rows(n_in)
    session = onnxruntime.InferenceSession(blob, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT: rows})[0]
    with torch.inference_mode():
        expected = model(torch.from_numpy(rows)).numpy()
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise NekrsMLError("the ONNX export of the model answers differently from torch "
                           f"(largest difference {np.abs(got - expected).max():.3g}); set "
                           "exportFormat = torch-export")

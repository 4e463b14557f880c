"""The benchmark's wall models in the other backends' forms: ``NAME_onnx`` is the torch model
NAME (same layers, same weights) exported to ONNX, deployed as ``.onnx`` and served by the
worker's ONNX Runtime backend; its bare forward is ONNX Runtime in the rank's process."""

from __future__ import annotations

from typing import Callable, Dict, List

import numpy as np

ONNX = "_onnx"


def forms(models: Dict[str, tuple]) -> Dict[str, tuple]:
    """The ONNX form of every torch model of ``models``."""
    return {name + ONNX: shape for name, shape in models.items()}


def is_onnx(name: str) -> bool:
    return name.endswith(ONNX)


def suffix(name: str) -> str:
    """The model file's suffix, which tells `deploy` its format."""
    return ".onnx" if is_onnx(name) else ".pt"


def mlp(n_in: int, hidden: List[int], n_out: int):
    """The benchmark's MLP (SiLU, seed 0): every form of a model (torch.export, TorchScript,
    ONNX) is made from it, so all carry the same weights."""
    import torch

    torch.manual_seed(0)
    layers, width = [], n_in
    for size in hidden:
        layers += [torch.nn.Linear(width, size), torch.nn.SiLU()]
        width = size
    layers.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*layers).eval()


def onnx_blob(n_in: int, hidden: List[int], n_out: int) -> bytes:
    from ..train.onnx_export import onnx_bytes

    return onnx_bytes(mlp(n_in, hidden, n_out), n_in)


def onnx_forward(modules: dict, model: str, device: str, blob: bytes) -> Callable:
    """The rank's ONNX Runtime session of ``model`` (made once), as inputs -> outputs."""
    key = f"{model}@{device}"
    if key not in modules:
        import torch

        from ..models.backends import OnnxBackend

        modules[key] = OnnxBackend(blob, device, max(1, torch.get_num_threads()))
    backend = modules[key]
    return lambda inputs: np.asarray(backend.evaluate(inputs))


def onnx_available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True

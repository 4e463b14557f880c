"""Deploying a model file into the registry: a TorchScript archive (torch.jit.save) or a saved
torch.export program (torch.export.save, ``.pt2``). The file is loaded and run once on a probe
batch before anything is stored, so a broken file never becomes the current version."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Optional, Union

from .. import registry
from ..client import Client
from ..errors import ConfigError


def _first_input_width(module) -> Optional[int]:
    """Input features of an MLP-like module: the second dimension of its first 2-D weight."""
    for _, parameter in module.named_parameters():
        if parameter.ndim == 2:
            return int(parameter.shape[1])
    return None


def inspect_model(path: Union[str, Path], n_in: Optional[int] = None):
    """(format, blob, n_in, n_out) of a model file; ConfigError naming the file otherwise."""
    import torch

    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"model file {path}: cannot be read ({exc.strerror})") from None
    try:
        module, fmt = torch.jit.load(io.BytesIO(blob), map_location="cpu"), "torchscript"
    except Exception as jit_error:
        try:
            module, fmt = torch.export.load(io.BytesIO(blob)).module(), "export"
        except Exception:
            raise ConfigError(
                f"model file {path} is neither a TorchScript archive (torch.jit.save) nor a saved "
                f"torch.export program (torch.export.save): {jit_error}") from None
    width = n_in or _first_input_width(module)
    if not width:
        raise ConfigError(f"model file {path}: cannot tell its number of inputs; pass --inputs N")
    try:
        with torch.inference_mode():
            probe = module(torch.zeros(2, width, dtype=torch.float32))
    except Exception as exc:
        raise ConfigError(f"model file {path}: a forward pass on float32[2, {width}] failed "
                          f"({exc}); models take [points, inputs] float32") from None
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2 or probe.shape[0] != 2:
        shape = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ConfigError(f"model file {path}: returned {shape} for float32[2, {width}]; a model "
                          "must return one tensor [points, outputs]")
    return fmt, blob, int(width), int(probe.shape[1])


def deploy(client: Client, ns: str, name: str, path: Union[str, Path],
           n_in: Optional[int] = None, origin: Optional[str] = None) -> int:
    """Publishes the model file as the next version of ``name``; returns the version."""
    registry.check_name(name)
    fmt, blob, width, n_out = inspect_model(path, n_in)
    meta = {"n_in": width, "n_out": n_out, "dtype": "float32", "format": fmt,
            "origin": origin or f"deploy:{Path(path).name}",
            "sha256": hashlib.sha256(blob).hexdigest()}
    return registry.publish(client, ns, name, blob, meta)

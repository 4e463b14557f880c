"""Deploying a model file into the registry: a TorchScript archive (torch.jit.save) or a saved
torch.export program (torch.export.save, ``.pt2``). The file is loaded and run once on a probe
batch before anything is stored, so a broken file never becomes the current version.

A file written by the trainer or by `nekrs-ml models export` (nekrs_ml.model_file) brings its
metadata (normalisation, epoch, validation loss, ...) and its torch.export form along."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Optional, Union

from .. import model_file, registry
from ..client import Client
from ..errors import ConfigError


def _first_input_width(module) -> Optional[int]:
    """Input features of an MLP-like module: the second dimension of its first 2-D weight."""
    for _, parameter in module.named_parameters():
        if parameter.ndim == 2:
            return int(parameter.shape[1])
    return None


def inspect_model(path: Union[str, Path], n_in: Optional[int] = None,
                  blob: Optional[bytes] = None):
    """(format, blob, n_in, n_out) of a model file; ConfigError naming the file otherwise."""
    import torch

    path = Path(path)
    if blob is None:
        blob = model_file.read(path).blob
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


# Metadata of a model file that describe the file or its old registry entry, not the model.
_FILE_KEYS = ("name", "version", "time", "export", "file", "export_file", "origin", "format",
              "sha256")


def deploy(client: Client, ns: str, name: str, path: Union[str, Path],
           n_in: Optional[int] = None, origin: Optional[str] = None) -> int:
    """Publishes the model file as the next version of ``name``; returns the version."""
    registry.check_name(name)
    found = model_file.read(path)
    saved = found.meta or {}
    fmt, blob, width, n_out = inspect_model(path, n_in or saved.get("n_in"), found.blob)
    check_saved_shape(path, saved, width, n_out)
    meta = {key: value for key, value in saved.items() if key not in _FILE_KEYS}
    meta.update({"n_in": width, "n_out": n_out, "dtype": saved.get("dtype", "float32"),
                 "format": fmt, "origin": origin or f"deploy:{Path(path).name}",
                 "sha256": model_file.sha256(blob)})
    if saved:
        meta["source"] = {key: saved.get(key) for key in ("name", "version", "origin", "time")}
    return registry.publish(client, ns, name, blob, meta, export_blob=found.export_blob)


def check_saved_shape(path, saved: dict, n_in: int, n_out: int) -> None:
    """The metadata beside a model file must describe that model."""
    for key, actual in (("n_in", n_in), ("n_out", n_out)):
        if key in saved and int(saved[key]) != actual:
            raise ConfigError(f"model file {path}: its metadata {model_file.metadata_path(path)} "
                              f"says {key} = {saved[key]}, the model has {actual}; export the "
                              "model again or remove the metadata file")

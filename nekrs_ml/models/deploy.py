"""Deploying a model file into the registry: a saved torch.export program (torch.export.save,
``.pt2``; the trainer's format) or a legacy TorchScript archive (torch.jit.save). The file is
loaded and run once on a probe batch of realistic inputs before anything is stored, so a broken
file (an exception, a wrong shape, NaN/Inf answers) never becomes the current version.

A torch.export version is published with its weights for in-process inference (nekrs_ml.models.aot).
A TorchScript file with a torch.export form beside it (an older `models export`) is deployed in
that form; a TorchScript file alone is served by the model workers only.

A file written by the trainer or by `nekrs-ml models export` (nekrs_ml.models.model_file) brings its
metadata (normalisation, epoch, validation loss, ...) along."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Optional, Union

from . import aot, backend_formats, model_file, registry
from .features import deploy_features
from ..client import Client
from ..errors import ConfigError


def _first_input_width(module) -> Optional[int]:
    """Input features of an MLP-like module: the second dimension of its first 2-D weight."""
    for _, parameter in module.named_parameters():
        if parameter.ndim == 2:
            return int(parameter.shape[1])
    return None


def probe_inputs(width: int, seed: int = 0):
    """Inputs of the range a wall model sees: velocities of the scale of the wall velocity
    (uniform in [-2, 2]), a few rows of larger magnitude, and a row of zeros."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    typical = torch.rand(61, width, generator=generator) * 4.0 - 2.0
    large = (torch.rand(2, width, generator=generator) * 2.0 - 1.0) * 50.0
    return torch.cat([typical, large, torch.zeros(1, width)]).to(torch.float32)


def _archive_kind(blob: bytes) -> str:
    """"export" (torch.export.save), "torchscript" (torch.jit.save) or "unknown", from the
    names inside the zip archive, so that neither loader is tried on the other's files."""
    try:
        names = zipfile.ZipFile(io.BytesIO(blob)).namelist()
    except (zipfile.BadZipFile, ValueError):
        return "unknown"
    if any(name.endswith("/archive_format") for name in names):
        return "export"
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return "torchscript"
    return "unknown"


def _load_module(path: Path, blob: bytes):
    """(module, format) of a saved torch.export program or a legacy TorchScript archive."""
    import torch

    kind = _archive_kind(blob)
    try:
        if kind == "export":
            return aot.load_program(blob, f"model file {path}").module(), "export"
        if kind == "torchscript":
            return torch.jit.load(io.BytesIO(blob), map_location="cpu"), "torchscript"
        reason = "not a zip archive of either" if blob[:2] != b"PK" else "an unknown archive"
    except aot.UnsafeModelError:
        raise
    except Exception as exc:
        reason = _last_line(exc)
    raise ConfigError(f"model file {path} is neither a saved torch.export program "
                      f"(torch.export.save) nor a TorchScript archive (torch.jit.save): {reason}")


def probe(module, path: Path, width: int, n_out: Optional[int] = None) -> int:
    """Runs the model on realistic inputs; returns its number of outputs, or raises ConfigError
    naming the file and what is wrong (an exception, a wrong shape, non-finite values)."""
    import torch

    inputs = probe_inputs(width)
    shape = f"float32[{inputs.shape[0]}, {width}] (values in [-50, 50])"
    try:
        with torch.inference_mode():
            answer = module(inputs)
    except Exception as exc:
        raise ConfigError(f"model file {path}: a forward pass on {shape} failed "
                          f"({_last_line(exc)}); models take [points, inputs] float32") from None
    if not isinstance(answer, torch.Tensor) or answer.ndim != 2 or answer.shape[0] != len(inputs):
        got = tuple(answer.shape) if isinstance(answer, torch.Tensor) else type(answer).__name__
        raise ConfigError(f"model file {path}: returned {got} for {shape}; a model must return "
                          f"one tensor [points, outputs] with one row per input row")
    if n_out is not None and answer.shape[1] != n_out:
        raise ConfigError(f"model file {path}: returns {answer.shape[1]} outputs per point, "
                          f"expected {n_out}; deploy a model with {n_out} outputs")
    bad_rows = (~torch.isfinite(answer.float())).any(dim=1).nonzero().flatten().tolist()
    if bad_rows:
        raise ConfigError(f"model file {path}: non-finite outputs (NaN or Inf) for "
                          f"{len(bad_rows)} of {len(inputs)} probe rows of {shape}, e.g. input "
                          f"{inputs[bad_rows[0]].tolist()[:4]}; a model must answer finite values")
    return int(answer.shape[1])


def _last_line(exc: Exception) -> str:
    """The gist of an error: TorchScript puts its traceback first and the error last."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def inspect_model(path: Union[str, Path], n_in: Optional[int] = None,
                  blob: Optional[bytes] = None, n_out: Optional[int] = None):
    """(format, blob, n_in, n_out) of a model file that passed the probe (``probe``);
    ConfigError naming the file otherwise. ``n_out``, when given, is the expected output width."""
    path = Path(path)
    if blob is None:
        blob = model_file.read(path).blob
    module, fmt = _load_module(path, blob)
    width = n_in or _first_input_width(module)
    if not width:
        raise ConfigError(f"model file {path}: cannot tell its number of inputs; pass --inputs N")
    return fmt, blob, int(width), probe(module, path, int(width), n_out)


# Metadata of a model file that describe the file or its old registry entry, not the model.
_FILE_KEYS = ("name", "version", "time", "export", "file", "export_file", "origin", "format",
              "sha256")


def deploy(client: Client, ns: str, name: str, path: Union[str, Path],
           n_in: Optional[int] = None, origin: Optional[str] = None,
           n_out: Optional[int] = None, tf_names=None, features: Optional[str] = None) -> int:
    """Publishes the model file as the next version of ``name``; returns the version. Nothing
    is stored unless the model passes the probe (``inspect_model``). ONNX, TensorFlow and
    TensorFlow Lite files are published by nekrs_ml.models.backend_formats (``tf_names``: the
    (inputs, outputs) operation names of a frozen graph). ``features`` (nekrs_ml.models.features;
    default: the metadata's, else dimensional) is stored in the meta."""
    other = backend_formats.file_format(path)
    if other is not None:
        return backend_formats.deploy(client, ns, name, path, other, n_in, origin, n_out, tf_names,
                                      features)
    registry.check_name(name)
    found = model_file.read(path)
    saved = found.meta or {}
    primary = found.export_blob if found.export_blob is not None else found.blob
    fmt, blob, width, n_out = inspect_model(path, n_in or saved.get("n_in"), primary, n_out)
    check_saved_shape(path, saved, width, n_out)
    meta = {key: value for key, value in saved.items() if key not in _FILE_KEYS}
    meta.update({"n_in": width, "n_out": n_out, "dtype": saved.get("dtype", "float32"),
                 "features": deploy_features(features, saved, path),
                 "format": fmt, "origin": origin or f"deploy:{Path(path).name}",
                 "sha256": model_file.sha256(blob)})
    if saved:
        meta["source"] = {key: saved.get(key) for key in ("name", "version", "origin", "time")}
    weights = None
    if fmt == "export":
        program = aot.load_program(blob, f"model file {path}")
        weights = aot.weights_blob(program, width, n_out)
        meta["graph"] = aot.graph_id(program, width, n_out)
    return registry.publish(client, ns, name, blob, meta, weights_blob=weights)


def check_saved_shape(path, saved: dict, n_in: int, n_out: int) -> None:
    """The metadata beside a model file must describe that model."""
    for key, actual in (("n_in", n_in), ("n_out", n_out)):
        if key in saved and int(saved[key]) != actual:
            raise ConfigError(f"model file {path}: its metadata {model_file.metadata_path(path)} "
                              f"says {key} = {saved[key]}, the model has {actual}; export the "
                              "model again or remove the metadata file")

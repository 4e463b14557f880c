"""Model files of the backends other than Torch, as `nekrs-ml deploy` and ``deployModel`` take
them: an ONNX model (``.onnx``), a TensorFlow SavedModel (a directory with ``saved_model.pb``) or
frozen graph (``.pb``, a GraphDef with its weights as constants), and a TensorFlow Lite model
(``.tflite``). Each is loaded by its framework and run once on 64 realistic rows before anything
is stored, as a Torch model is (nekrs_ml.models.deploy.probe); a file that fails is refused with
the reason.

A version's registry record says ``backend`` (torch, onnx, tf, tflite) and ``format`` (export,
torchscript, onnx, tf-savedmodel, tf-graph, tflite); a frozen graph's also ``inputs`` and
``outputs``, the operation names RedisAI's TF backend takes. A SavedModel is stored as one tar
archive of its directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np

from ..errors import ConfigError

SUFFIXES = {".onnx": "onnx", ".tflite": "tflite", ".pb": "tf-graph"}
PROBE_ROWS = 64


def file_format(path: Union[str, Path]) -> Optional[str]:
    """The non-Torch format of a model file or directory, or None for anything else (Torch's
    files, which nekrs_ml.models.deploy reads)."""
    path = Path(path)
    if path.is_dir():  # any other directory: model_file.read says what to deploy instead
        return "tf-savedmodel" if (path / "saved_model.pb").is_file() else None
    if path.name == "saved_model.pb":
        raise ConfigError(f"model file {path} is the graph of a SavedModel: deploy its directory "
                          f"{path.parent}")
    return SUFFIXES.get(path.suffix.lower())


def probe_rows(width: int, seed: int = 0) -> np.ndarray:
    """Inputs of the range a wall model sees, as the Torch probe makes them: 61 rows uniform in
    [-2, 2], two of magnitude up to 50, one of zeros."""
    rng = np.random.default_rng(seed)
    typical = rng.uniform(-2.0, 2.0, (PROBE_ROWS - 3, width))
    large = rng.uniform(-1.0, 1.0, (2, width)) * 50.0
    return np.concatenate([typical, large, np.zeros((1, width))]).astype(np.float32)


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1]}" if lines else type(exc).__name__


def open_backend(path, fmt: str, blob: bytes, names: Optional[Tuple[List[str], List[str]]] = None):
    """The loaded backend of a model file; ConfigError naming the file when its framework
    refuses it."""
    from . import backends

    meta = {"format": fmt}
    if fmt == "tf-graph":
        try:
            inputs, outputs = names if names else backends.graph_names(blob)
        except ConfigError as exc:
            raise ConfigError(f"model file {path}: {exc}") from None
        if len(inputs) != 1 or len(outputs) != 1:
            raise ConfigError(f"model file {path}: a frozen graph served from the registry takes "
                              f"one input and returns one output; it has inputs {inputs} and "
                              f"outputs {outputs} (pass --tf-inputs NAME --tf-outputs NAME)")
        meta.update(inputs=list(inputs), outputs=list(outputs))
    try:
        return backends.load(blob, meta, "cpu"), meta
    except ConfigError as exc:
        if "needs" in str(exc) and "not installed" in str(exc):
            raise ConfigError(f"model file {path}: {exc}") from None
        raise ConfigError(f"model file {path} is not a valid {fmt} model: {exc}") from None
    except Exception as exc:  # the framework's own refusal of a bad file
        raise ConfigError(f"model file {path} is not a valid {fmt} model "
                          f"({_last_line(exc)[:400]})") from None


def probe(backend, path, width: int, n_out: Optional[int] = None) -> int:
    """Runs the model on ``probe_rows``; returns its number of outputs, or ConfigError naming
    the file and what is wrong (an exception, a wrong shape, non-finite values)."""
    inputs = probe_rows(width)
    shape = f"float32[{PROBE_ROWS}, {width}] (values in [-50, 50])"
    try:
        answer = np.asarray(backend.evaluate(inputs))
    except Exception as exc:
        raise ConfigError(f"model file {path}: a forward pass on {shape} failed "
                          f"({_last_line(exc)[:400]}); models take [points, inputs] float32 and "
                          "return one tensor [points, outputs]") from None
    if answer.ndim != 2 or answer.shape[0] != PROBE_ROWS:
        raise ConfigError(f"model file {path}: returned {tuple(answer.shape)} for {shape}; a model "
                          "must return one tensor [points, outputs] with one row per input row "
                          "(export it with a dynamic first dimension)")
    if n_out is not None and answer.shape[1] != n_out:
        raise ConfigError(f"model file {path}: returns {answer.shape[1]} outputs per point, "
                          f"expected {n_out}; deploy a model with {n_out} outputs")
    bad_rows = np.flatnonzero(~np.isfinite(answer.astype(np.float64)).all(axis=1))
    if len(bad_rows):
        raise ConfigError(f"model file {path}: non-finite outputs (NaN or Inf) for "
                          f"{len(bad_rows)} of {PROBE_ROWS} probe rows of {shape}, e.g. input "
                          f"{inputs[bad_rows[0]].tolist()[:4]}; a model must answer finite values")
    return int(answer.shape[1])


def read(path: Union[str, Path], fmt: str):
    """(blob, metadata beside the file or None) of a non-Torch model file or SavedModel."""
    from . import model_file
    from . import backends

    if fmt == "tf-savedmodel":
        return backends.pack_savedmodel(path), None
    found = model_file.read(path)
    return found.blob, found.meta


def inspect(path: Union[str, Path], fmt: str, blob: bytes, n_in: Optional[int] = None,
            n_out: Optional[int] = None, names=None):
    """(record fields, n_in, n_out) of a model that passed the probe; ConfigError otherwise."""
    backend, meta = open_backend(path, fmt, blob, names)
    width = n_in or backend.input_width
    if not width:
        raise ConfigError(f"model file {path}: cannot tell its number of inputs (its first "
                          "input has no fixed second dimension); pass --inputs N")
    if backend.input_width and int(width) != backend.input_width:
        raise ConfigError(f"model file {path}: takes {backend.input_width} inputs per point, not "
                          f"{width}; deploy it with --inputs {backend.input_width}")
    return meta, int(width), probe(backend, path, int(width), n_out)


# Metadata beside a model file that describe the file or its old registry entry, not the model.
_FILE_KEYS = ("name", "version", "time", "export", "file", "export_file", "origin", "format",
              "backend", "sha256", "inputs", "outputs")


def deploy(client, ns: str, name: str, path: Union[str, Path], fmt: str,
           n_in: Optional[int] = None, origin: Optional[str] = None,
           n_out: Optional[int] = None, names=None, features: Optional[str] = None) -> int:
    """Publishes a non-Torch model file as the next version of ``name``; nothing is stored
    unless it passes the probe."""
    from . import model_file, registry
    from . import backends
    from .features import deploy_features

    registry.check_name(name)
    blob, saved = read(path, fmt)
    saved = saved or {}
    meta_fields, width, n_out = inspect(path, fmt, blob, n_in or saved.get("n_in"),
                                        n_out, names)
    for key, actual in (("n_in", width), ("n_out", n_out)):
        if key in saved and int(saved[key]) != actual:
            raise ConfigError(f"model file {path}: its metadata {model_file.metadata_path(path)} "
                              f"says {key} = {saved[key]}, the model has {actual}; export the "
                              "model again or remove the metadata file")
    meta = {key: value for key, value in saved.items() if key not in _FILE_KEYS}
    meta.update(meta_fields)
    meta.update({"n_in": width, "n_out": n_out, "dtype": "float32",
                 "backend": backends.BACKEND_OF_FORMAT[fmt],
                 "features": deploy_features(features, saved, path),
                 "origin": origin or f"deploy:{Path(path).name}",
                 "sha256": model_file.sha256(blob)})
    if saved:
        meta["source"] = {key: saved.get(key) for key in ("name", "version", "origin", "time")}
    return registry.publish(client, ns, name, blob, meta)


def refuse_inprocess(meta: dict, setting: str = "inferenceBackend = inprocess") -> None:
    """The in-process path evaluates torch.export versions only (AOTInductor packages)."""
    from . import backends

    backend = backends.backend_of(meta)
    if backend != "torch" or meta.get("format") not in (None, "export"):
        raise ConfigError(
            f"model {meta.get('name')!r} v{meta.get('version')} is a {meta.get('format')} model "
            f"({backend}): {setting} runs torch.export models only (compiled to AOTInductor "
            "packages); serve it with inferenceBackend = worker, or deploy a torch.export (.pt2) "
            "form of the model")


def refuse_inprocess_file(path: Path, what: str) -> None:
    """A model file of another backend is refused before anything starts."""
    fmt = file_format(path) if path.exists() else None
    if fmt is not None:
        raise ConfigError(f"{what} is an ONNX, TensorFlow or TFLite model ({fmt}): "
                          "inferenceBackend = inprocess evaluates "
                          "torch.export (.pt2) models only; set inferenceBackend = worker to "
                          "serve it from the model workers, or deploy a .pt2 form of the model")

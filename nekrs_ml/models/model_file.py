"""A model version as files, to carry a trained model from one run (and its database) to another.

``NAME.pt`` is the deployable model exactly as the registry stores it (a TorchScript archive, or
a torch.export program for versions deployed in that form), ``NAME.json`` beside it its metadata
(the registry's: name, version, n_in, n_out, dtype, normalisation, epoch, val_loss, time, origin,
...), and ``NAME.pt2`` the torch.export form when the registry holds one. The trainer writes the
final version into its run directory; ``nekrs-ml models export`` writes any version of a live
database; ``nekrs-ml deploy`` and ``deployModel`` read them back (nekrs_ml.models.deploy).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

from .. import rundir
from ..client import Client
from ..errors import ConfigError, DiskFullError
from . import registry

EXPORT_SUFFIX = ".pt2"


@dataclass(frozen=True)
class ModelFile:
    path: Path
    blob: bytes
    meta: Optional[dict]  # None for a model file without metadata beside it
    export_blob: Optional[bytes]


def metadata_path(path: Union[str, Path]) -> Path:
    return Path(path).with_suffix(".json")


def export_path(path: Union[str, Path]) -> Path:
    path = Path(path)
    if path.suffix == EXPORT_SUFFIX:  # the model itself is a .pt2: keep the names apart
        return path.with_name(path.stem + ".export" + EXPORT_SUFFIX)
    return path.with_suffix(EXPORT_SUFFIX)


def sha256(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _write_atomically(path: Path, data: bytes) -> None:
    """A reader (or a killed writer) never sees a torn file; a link planted at the name (or at
    a temporary name) is never written through."""
    rundir.write_file(path, data)


def save(path: Union[str, Path], blob: bytes, meta: dict,
         export_blob: Optional[bytes] = None) -> dict:
    """Writes the model, its torch.export form (if given) and the metadata (last, so a complete
    metadata file means complete model files). Returns the metadata as written."""
    path = Path(path).absolute()
    if metadata_path(path) == path:
        raise ConfigError(f"model file {path}: a .json name is the metadata's; name the model "
                          "NAME.pt")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, blob)
        export_file = None
        if export_blob is not None:
            export_file = export_path(path)
            _write_atomically(export_file, export_blob)
        record = dict(meta, file=path.name, sha256=sha256(blob),
                      export_file=export_file.name if export_file else None)
        _write_atomically(metadata_path(path), (json.dumps(record, indent=2) + "\n").encode())
    except DiskFullError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot write the model file {path}: {exc.strerror}") from None
    return record


def read(path: Union[str, Path]) -> ModelFile:
    """The model file with its metadata and torch.export form when they are beside it."""
    path = Path(path)
    if not path.is_file():
        hint = (f"; is it the run directory of a training run? its model is "
                f"{path / 'MODEL_NAME.pt'} (named in trainer.json)") if path.is_dir() else ""
        raise ConfigError(f"model file {path} does not exist{hint}" if not path.exists() else
                          f"model file {path} is not a file{hint}")
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"model file {path}: cannot be read ({exc.strerror})") from None
    meta = _read_metadata(path, blob)
    export_blob = None
    if meta and meta.get("export_file"):
        export_file = path.with_name(meta["export_file"])
        try:
            export_blob = export_file.read_bytes()
        except OSError as exc:
            raise ConfigError(f"{metadata_path(path)} names the torch.export form {export_file}, "
                              f"which cannot be read ({exc.strerror}); export the model again "
                              "or remove export_file from the metadata") from None
    return ModelFile(path, blob, meta, export_blob)


def _read_metadata(path: Path, blob: bytes) -> Optional[dict]:
    """NAME.json beside NAME.pt when it is the metadata of this very model file."""
    meta_file = metadata_path(path)
    if meta_file == path or not meta_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model metadata {meta_file}: cannot be read ({exc}); remove it to "
                          f"deploy {path.name} without metadata") from None
    if not isinstance(meta, dict) or "sha256" not in meta:
        return None  # some other JSON file: model metadata always carry the model's sha256
    if meta["sha256"] != sha256(blob):
        raise ConfigError(f"model metadata {meta_file} belongs to another model file (its sha256 "
                          f"differs from {path.name}'s); export the model again or remove it")
    return meta


def export_version(client: Client, ns: str, name: str, version: Optional[int],
                   path: Union[str, Path]) -> dict:
    """Writes ``version`` (default: the current one) of registry model ``name`` to ``path``
    with its metadata and torch.export form; returns the metadata as written."""
    blob, meta = registry.load(client, ns, name, version)
    export_blob = None
    if meta.get("export"):
        export_blob = registry.load_export(client, ns, name, int(meta["version"]))
    return save(path, blob, meta, export_blob)

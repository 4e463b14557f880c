"""What a training run leaves in its run directory besides the history: the final model version
as a deployable file (nekrs_ml.models.model_file) and ``trainer.json``, the summary that names it.

``trainer.json``: state, reason, model_name, model_version, model_file (absolute path of
``<modelName>.pt``, or ``<modelName>.onnx`` with ``exportFormat = onnx``; null when nothing was
published or it could not be written), model_metadata (its ``.json``), model_export_file (its ``.pt2``, or null), model_file_error
(null, or why there is no file), best_epoch, best_val_loss, epochs, snapshots, samples_seen,
time.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from .. import rundir
from ..models import model_file
from ..client import Client
from ..errors import DiskFullError, NekrsMLError

SUMMARY_FILE = "trainer.json"


def model_path(run_dir: Path, model_name: str, suffix: str = ".pt") -> Path:
    return Path(run_dir).absolute() / f"{model_name}{suffix}"


def save_model(client: Client, ns: str, model_name: str, version: Optional[int],
               run_dir: Path, suffix: str = ".pt") -> dict:
    """Exports ``version`` from the registry into the run directory (NAME.pt, or NAME.onnx for
    exportFormat = onnx); the summary's model fields."""
    fields = {"model_name": model_name, "model_version": version, "model_file": None,
              "model_metadata": None, "model_export_file": None, "model_file_error": None}
    if version is None:
        fields["model_file_error"] = "no model version was published"
        return fields
    path = model_path(run_dir, model_name, suffix)
    try:
        meta = model_file.export_version(client, ns, model_name, version, path)
    except DiskFullError:  # the run directory's disk is full: the run failed, and says so
        raise
    except NekrsMLError as exc:  # the training itself succeeded: say why, do not fail the run
        fields["model_file_error"] = str(exc)
        return fields
    fields.update(model_file=str(path), model_metadata=str(model_file.metadata_path(path)),
                  model_export_file=str(path.with_name(meta["export_file"]))
                  if meta.get("export_file") else None)
    return fields


def write_summary(run_dir: Path, record: dict) -> Path:
    path = Path(run_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    return rundir.write_file(path, json.dumps(dict(record, time=time.time()), indent=2) + "\n")

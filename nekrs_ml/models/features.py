"""What a model's inputs and outputs mean: the ``features`` scheme of a model (its meta field).

``dimensional`` (the default): the model maps the solver's velocity samples ``[u.t1, u.t2, u.n]``
to the wall shear stress ``[tau.t1, tau.t2]``, both in the solver's units.

``wall_units``: the model maps wall-scaled inputs ``x * h / nu`` to wall-scaled targets
``tau * h^2 / nu^2`` (h: the sampling height, nu: the kinematic viscosity of the run that
evaluates it). Both are free of the flow's Reynolds number, so one model serves runs of several
Re_tau. The scaling is applied outside the model, by whoever feeds it (the solver, the trainer,
the report): never by the model, never by the model worker. The run's h and nu come from the
solver's case record, ``keys.solver_case(ns)`` (docs/protocol.md).
"""

from __future__ import annotations

import json
import time
from typing import Optional

import numpy as np

from .. import keys
from ..errors import ConfigError, NekrsMLError

DIMENSIONAL = "dimensional"
WALL_UNITS = "wall_units"
SCHEMES = (DIMENSIONAL, WALL_UNITS)
CASE_POLL = 0.2  # s between two looks for the solver's case record


def check_features(features: str, where: str = "features") -> str:
    if features not in SCHEMES:
        raise ConfigError(f"{where} = {features!r}: must be one of {', '.join(SCHEMES)}")
    return features


def features_of(meta: Optional[dict]) -> str:
    """The scheme of a model version (a record without the field is dimensional)."""
    return check_features((meta or {}).get("features") or DIMENSIONAL,
                          f"model meta field 'features' of {(meta or {}).get('name', 'a model')!r}")


def parse_case(text, key: str) -> dict:
    """The solver's case record, checked: positive kinematic_viscosity and sample_height."""
    try:
        case = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise NekrsMLError(f"{key!r} is not a JSON object ({exc}); the solver writes "
                           '{"kinematic_viscosity": nu, "sample_height": h, ...}') from None
    if not isinstance(case, dict):
        raise NekrsMLError(f"{key!r} holds {case!r}, not a JSON object")
    for field in ("kinematic_viscosity", "sample_height"):
        value = case.get(field)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 \
                or not np.isfinite(value):
            raise NekrsMLError(f"{key!r}: {field} = {value!r}; wall-unit features need a "
                               "positive, finite number")
    return case


def read_case(client, ns: str, timeout: float = 0.0) -> Optional[dict]:
    """The case record of the solver of namespace ``ns``; None when it is not there within
    ``timeout`` seconds (0: one look)."""
    key = keys.solver_case(ns)
    deadline = time.monotonic() + timeout
    while True:
        text = client.get_string(key)
        if text is not None:
            return parse_case(text, key)
        if time.monotonic() >= deadline:
            return None
        time.sleep(CASE_POLL)


def deploy_features(option: Optional[str], saved: Optional[dict], path) -> str:
    """The features of a model file being deployed: ``--features`` where given, else its
    metadata's, else dimensional; an option that contradicts the metadata is refused."""
    recorded = (saved or {}).get("features")
    if option is not None:
        check_features(option, "--features")
        if recorded is not None and recorded != option:
            raise ConfigError(f"model file {path}: --features {option}, but its metadata says "
                              f"features = {recorded}; drop --features or deploy the right file")
        return option
    return check_features(recorded or DIMENSIONAL, f"model file {path}: metadata features")


def _scales(features: str, case: Optional[dict]):
    """(input factor h/nu, target factor h^2/nu^2); (1, 1) for dimensional models."""
    if check_features(features) == DIMENSIONAL:
        return 1.0, 1.0
    if not case:
        raise NekrsMLError("a wall-units model needs the solver's case record (kinematic "
                           "viscosity, sample height); none was given")
    ratio = float(case["sample_height"]) / float(case["kinematic_viscosity"])
    return ratio, ratio * ratio


def to_model_inputs(x: np.ndarray, features: str, case: Optional[dict]) -> np.ndarray:
    """Solver inputs (velocity samples) -> what the model takes."""
    factor, _ = _scales(features, case)
    return x if factor == 1.0 else np.asarray(x) * factor


def to_model_targets(tau: np.ndarray, features: str, case: Optional[dict]) -> np.ndarray:
    """Solver targets (wall shear stress) -> what the model answers."""
    _, factor = _scales(features, case)
    return tau if factor == 1.0 else np.asarray(tau) * factor


def from_model_outputs(y: np.ndarray, features: str, case: Optional[dict]) -> np.ndarray:
    """What the model answers -> wall shear stress in the solver's units."""
    _, factor = _scales(features, case)
    return y if factor == 1.0 else np.asarray(y) / factor


def relative_errors(predicted: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The a-priori error per point, |tau_pred - tau| / |tau| (vector norms over the stress
    components); points where the true stress is zero have none."""
    norm = np.linalg.norm(true, axis=1)
    keep = norm > 0
    return np.linalg.norm(predicted - true, axis=1)[keep] / norm[keep]


def error_summary(errors: np.ndarray) -> Optional[dict]:
    """{"median", "p95", "samples"} of relative errors; None when there are none."""
    if not errors.size:
        return None
    return {"median": float(np.median(errors)), "p95": float(np.percentile(errors, 95)),
            "samples": int(errors.size)}

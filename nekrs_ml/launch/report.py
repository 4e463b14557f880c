"""What goes into the run's report: the model's a-priori test on the held-out snapshots, the
model's outcome, the flow statistics of the solver's summary, and the PNG plots (loss vs time,
predicted vs true wall shear stress); run_report.py gathers them and writes report.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import keys
from ..models import registry
from ..serve.loading import load_module


def stored_samples(client, pairs) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(inputs as float32, targets as float64) of each (inputs key, targets key) pair that
    exists and has rows; a missing one (a rank without wall points, a snapshot dropped or never
    written) is skipped."""
    from ..errors import KeyNotFoundError

    samples = []
    for x_key, y_key in pairs:
        try:
            x, y = client.get_tensor(x_key), client.get_tensor(y_key)
        except KeyNotFoundError:
            continue
        if x.shape[0]:
            samples.append((np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.float64)))
    return samples


def concatenated(samples: List[Tuple[np.ndarray, np.ndarray]]):
    """All inputs [n, n_in] and all targets [n, n_out] of ``samples``; (None, None) if none."""
    if not samples:
        return None, None
    return (np.concatenate([x for x, _ in samples]), np.concatenate([y for _, y in samples]))


def held_out_snapshots(client, ns: str, ranks: int):
    """The held-out snapshot of every solver rank (written at the end of a training run, never
    announced, so the trainer never saw it): inputs [n, n_in], targets [n, n_out]."""
    return concatenated(stored_samples(
        client, [(keys.holdout_inputs(ns, rank), keys.holdout_targets(ns, rank))
                 for rank in range(ranks)]))


def evaluate_model(client, ns: str, name: str, ranks: int,
                   model_ns: Optional[str] = None) -> Optional[Dict]:
    """A-priori test: relative error of the last published model's wall shear stress against the
    solver's held-out resolved stress, per point |tau_pred - tau| / |tau| (vector norms). The
    held-out snapshots (and, for a wall-units model, the case record that scales them) are read
    from the solver namespace ``ns``, the model from ``model_ns`` (default: ``ns``)."""
    from ..models.features import WALL_UNITS, features_of, read_case

    model_ns = model_ns or ns
    version = registry.latest_version(client, model_ns, name)
    if version is None:
        return None
    inputs, true = held_out_snapshots(client, ns, ranks)
    blob, meta = registry.load(client, model_ns, name, version)
    if inputs is None:
        return {"version": version, "meta": meta}
    wall_units = features_of(meta) == WALL_UNITS
    case = read_case(client, ns) if wall_units else None
    if wall_units and case is None:
        raise ValueError(f"{name} v{version} is a wall-units model, but the solver's case "
                         f"record {keys.solver_case(ns)!r} (kinematic viscosity, sample height) "
                         "is missing")
    result = _evaluate(name, version, blob, meta, inputs, true, case)
    return dict(result, meta=meta)


def evaluate_samples(client, model_ns: str, name: str, inputs, targets,
                     case: Optional[Dict]) -> Dict:
    """The a-priori test of the current version of model ``name`` (registry namespace
    ``model_ns``) on given samples: inputs [n, n_in] and targets [n, n_out] in the solver's
    units, scaled with ``case`` (the solver's case record) when the model is in wall units.
    Returns {"median", "p95", "samples", "version"}."""
    version = registry.latest_version(client, model_ns, name)
    if version is None:
        raise ValueError(f"model {name!r} has no published version in namespace {model_ns!r}")
    blob, meta = registry.load(client, model_ns, name, version)
    result = _evaluate(name, version, blob, meta, np.asarray(inputs, dtype=np.float32),
                       np.asarray(targets, dtype=np.float64), case)
    return {key: result[key] for key in ("median", "p95", "samples", "version")}


def _evaluate(name: str, version: int, blob: bytes, meta: Dict, inputs: np.ndarray,
              true: np.ndarray, case: Optional[Dict]) -> Dict:
    """Predicted stress (physical units) and the relative error per point of one version
    (its registry blob and meta)."""
    import torch

    from ..models.features import (error_summary, features_of, from_model_outputs,
                                   relative_errors, to_model_inputs)

    scheme = features_of(meta)
    model = load_module(blob, meta, torch.device("cpu"))
    scaled = np.asarray(to_model_inputs(inputs, scheme, case), dtype=np.float32)
    with torch.inference_mode():
        answer = model(torch.from_numpy(scaled)).numpy().astype(np.float64)
    predicted = from_model_outputs(answer, scheme, case)
    if predicted.shape != true.shape:
        raise ValueError(f"{name} v{version} answers {predicted.shape} for held-out targets "
                         f"{true.shape}")
    summary = error_summary(relative_errors(predicted, true)) or \
        {"median": None, "p95": None, "samples": 0}
    return {"version": version, "true": true, "predicted": predicted, **summary}


def applied_share(inference: Optional[Dict]) -> Optional[float]:
    """The share of the solver's inference calls (waiting ones included) whose predictions it
    used, or None for a run without inference."""
    if not inference:
        return None
    total = (inference.get("calls") or 0) + (inference.get("waiting_calls") or 0)
    return (inference.get("predicted_calls") or 0) / total if total else 0.0


def model_outcome(status: str, workflow: str, inference: Optional[Dict]) -> Tuple[str, str]:
    """("no_model", why) when a run that was to apply predictions (infer, or train+infer with
    applyPredictions) ended well otherwise but its solver applied none; else (status, "")."""
    if status != "ok" or workflow not in ("infer", "train+infer") or not inference:
        return status, ""
    if not inference.get("applied", True) or inference.get("predicted_calls"):
        return status, ""
    calls, waiting = inference.get("calls") or 0, inference.get("waiting_calls") or 0
    failures = {cause: count for cause, count in (inference.get("failures") or {}).items() if count}
    if waiting and not calls:
        why = (f"every one of its {waiting:.0f} inference calls waited for a model and used the "
               f"wall law ({inference.get('waiting_for') or 'no published version'})")
    else:
        causes = ", ".join(f"{cause} {count:.0f}" for cause, count in failures.items())
        why = (f"none of its {calls + waiting:.0f} inference calls gave usable predictions "
               f"(failures: {causes or 'none counted'}; the wall law was applied instead)")
    return "no_model", f"the solver never applied the model: {why}"


def model_use_text(inference: Optional[Dict]) -> str:
    """The last line's words on the model the solver used: "model v34 applied on 61 % of steps,
    wall law before" (or at every step, or predicted and not applied)."""
    share = applied_share(inference)
    if share is None:
        return ""
    version = inference.get("final_version")
    if not inference.get("predicted_calls") or version is None:
        return "no model applied (wall law at every step)"
    versions = inference.get("versions") or [version]
    which = f"model v{version}" if len(versions) == 1 else f"models v{versions[0]}-v{version}"
    if not inference.get("applied", True):
        return f"{which} predicted on {share:.0%} of steps, not applied (applyPredictions = false)"
    if share >= 0.9995:
        return f"{which} applied at every step"
    before = ", wall law before" if inference.get("waiting_calls") else ", wall law otherwise"
    return f"{which} applied on {share:.0%} of steps{before}"


def flow_statistics(summary: Optional[Dict]) -> Optional[Dict]:
    """u_tau, Re_tau and U_b of the run from its summary's wall statistics and momentum balance
    (NekRS runs; None when the solver gave no geometry or no balance): u_tau = sqrt(tau_w) of the
    area-weighted wall shear stress along x (applied in inference runs, resolved otherwise), the
    half-height delta = V / A, Re_tau = u_tau delta / nu, U_b the bulk velocity at the end."""
    if not summary:
        return None
    stress = summary.get("wall_stress") or {}
    balance = stress.get("momentum_balance") or {}
    tau, nu = balance.get("tau_w_measured"), summary.get("kinematic_viscosity")
    volume, area = balance.get("volume"), stress.get("area")
    if tau is None or not nu or not volume or not area:
        return None
    half_height = volume / area
    u_tau = float(np.sqrt(abs(tau)))
    return {"u_tau": u_tau, "Re_tau": u_tau * half_height / nu, "U_b": balance["bulk_velocity"][1],
            "tau_w": tau, "half_height": half_height,
            "tau_w_from": "applied" if stress.get("applied") else "resolved",
            "tau_w_implied": balance.get("tau_w_implied"),
            "time": balance.get("time"),
            "statistically_meaningful": False,
            "caveat": "the wall shear stress of the momentum-balance window, not a time average "
                      "of flow-statistics records (set statsInterval): no uncertainty"}


def strict_json(value):
    """The value with NaN and infinities replaced by None: report.json is strict JSON."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    if isinstance(value, np.generic):
        return strict_json(value.item())
    return value


def read_history(path: Path) -> List[Dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a line being written when the trainer was killed
    return rows


def _save(fig, path: Path) -> None:
    """The figure as a PNG, written whole or not at all, never through a link."""
    import io

    from ..rundir import write_file

    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100, format="png")
    write_file(path, buffer.getvalue())


def plot(run_dir: Path, history: List[Dict], evaluation: Optional[Dict]) -> List[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    rows = [r for r in history if r.get("train_loss") is not None]
    if rows:
        t0 = rows[0]["time"]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.semilogy([r["time"] - t0 for r in rows], [r["train_loss"] for r in rows], label="train")
        val = [r for r in rows if r.get("val_loss") is not None]
        ax.semilogy([r["time"] - t0 for r in val], [r["val_loss"] for r in val], label="validation")
        ax.set_xlabel("time since first epoch [s]")
        ax.set_ylabel("loss (MSE, normalised)")
        ax.legend()
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        _save(fig, run_dir / "loss.png")
        plt.close(fig)
        written.append("loss.png")
    if evaluation and "true" in evaluation:
        fig, ax = plt.subplots(figsize=(5, 5))
        true, predicted = evaluation["true"][:, 0], evaluation["predicted"][:, 0]
        ax.plot(true, predicted, ".", ms=2, alpha=0.4)
        lo, hi = float(true.min()), float(true.max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="exact")
        ax.set_xlabel("resolved tau . t1 (held out)")
        ax.set_ylabel(f"predicted tau . t1 (model v{evaluation['version']})")
        ax.set_title(f"median rel. error {evaluation['median']:.3%}, p95 {evaluation['p95']:.3%}")
        ax.legend()
        fig.tight_layout()
        _save(fig, run_dir / "tau_w.png")
        plt.close(fig)
        written.append("tau_w.png")
    return written

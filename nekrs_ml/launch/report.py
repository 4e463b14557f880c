"""The run report: report.json and PNG plots (loss vs time, predicted vs true wall shear stress)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from .. import _core, registry


def held_out_velocities(cfg, count: int = 20000) -> np.ndarray:
    """Velocities at h from a sampler the solver never used (its own seed), over the sampled range."""
    rp, ml = cfg["reproducer"], cfg["nekrs_ml"]
    sampler = _core.ChannelWallSampler(count, rp["reTau"], rp["viscosity"], ml["sampleHeight"],
                                       rp["fluctuation"], rp["correlation"], rp["seed"] + 7919,
                                       1 << 20)
    u, tau = np.empty((count, 1)), np.empty((count, 1))
    for _ in range(50):  # let the AR(1) fluctuation reach its stationary spread
        sampler.advance()
    sampler.fill(u, tau)
    return u


def evaluate_model(client, ns: str, cfg) -> Optional[Dict]:
    """Relative error of the last published model's tau_w against the Reichardt solution."""
    import torch

    name = cfg["nekrs_ml"]["modelName"]
    version = registry.latest_version(client, ns, name)
    if version is None:
        return None
    blob, meta = registry.load(client, ns, name, version)
    model = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    u = held_out_velocities(cfg)
    with torch.no_grad():
        predicted = model(torch.from_numpy(u.astype(np.float32))).numpy().astype(np.float64)
    true = _core.reichardt_wall_shear_stress(u[:, 0], cfg["nekrs_ml"]["sampleHeight"],
                                             cfg["reproducer"]["viscosity"])
    rel = np.abs(predicted[:, 0] - true) / np.abs(true)
    return {"version": version, "meta": meta, "u": u[:, 0], "true": true, "predicted": predicted[:, 0],
            "median": float(np.median(rel)), "p95": float(np.percentile(rel, 95))}


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
        fig.savefig(run_dir / "loss.png", dpi=100)
        plt.close(fig)
        written.append("loss.png")
    if evaluation:
        fig, ax = plt.subplots(figsize=(5, 5))
        ax.plot(evaluation["true"], evaluation["predicted"], ".", ms=2, alpha=0.4)
        lo, hi = float(evaluation["true"].min()), float(evaluation["true"].max())
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="exact")
        ax.set_xlabel("Reichardt tau_w")
        ax.set_ylabel(f"predicted tau_w (model v{evaluation['version']})")
        ax.set_title(f"median rel. error {evaluation['median']:.3%}, p95 {evaluation['p95']:.3%}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(run_dir / "tau_w.png", dpi=100)
        plt.close(fig)
        written.append("tau_w.png")
    return written

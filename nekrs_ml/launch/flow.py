"""The flow statistics of a run: the records the solver streams every statsInterval steps
(docs/protocol.md, "Flow statistics") averaged in time into the channel's wall-parallel mean
velocity and Reynolds-stress profiles, the friction velocity with its statistical uncertainty
and the bulk velocity; compared with DNS and drawn as profile.png."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .. import keys

KARMAN = 0.41
LOG_LAW_CONSTANT = 5.2
LOG_LAYER = (100.0, 500.0)  # y+ range of the comparison with DNS
DNS_SOURCE = "Lee & Moser (2015), Re_tau = 1000"
BATCHES = 10  # batch means for the uncertainty of the time-averaged wall shear stress
SERIES_POINTS = 500  # at most this many points of the wall-stress time series in report.json
MEANINGFUL_RECORDS = 2 * BATCHES  # fewer records: u_tau is reported as not statistically meaningful
MOMENTS = 8   # per plane: w, w u, w v, w w, w uu, w vv, w ww, w uv


def dns_profile() -> Tuple[np.ndarray, np.ndarray]:
    """y+ and U+ of the channel DNS of Lee & Moser (2015) at Re_tau = 1000 (package data)."""
    text = resources.files("nekrs_ml").joinpath("data/lee_moser_re1000_mean.csv").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    rows = np.loadtxt(lines[1:], delimiter=",")  # after the header y_plus,U_plus
    return rows[:, 0], rows[:, 1]


def log_law(y_plus: np.ndarray) -> np.ndarray:
    return np.log(y_plus) / KARMAN + LOG_LAW_CONSTANT


def mean_and_uncertainty(values: Sequence[float]) -> Tuple[float, Optional[float]]:
    """The mean of a time series and the standard error of it from BATCHES batch means
    (consecutive records are correlated; None with fewer than 2 records per batch)."""
    data = np.asarray(values, dtype=float)
    mean = float(data.mean())
    batches = min(BATCHES, data.size // 2)
    if batches < 2:
        return mean, None
    means = [chunk.mean() for chunk in np.array_split(data, batches)]
    return mean, float(np.std(means, ddof=1) / np.sqrt(batches))


class FlowStatistics:
    """Time sums of the streamed records; the same planes in every record."""

    def __init__(self) -> None:
        self.y: Optional[np.ndarray] = None
        self.moments: Optional[np.ndarray] = None
        self.records = 0
        self.rejected = 0  # records whose planes differ from the first one's, or malformed
        self.steps: List[int] = []
        self.times: List[float] = []
        self.tau_applied: List[float] = []
        self.tau_resolved: List[float] = []
        self.bulk_velocity: List[float] = []
        self.viscosity: Optional[float] = None  # from the records (the run summary may be lost)

    def add(self, record: Dict) -> None:
        try:
            y = np.asarray(record["y"], dtype=float)
            moments = np.asarray(record["moments"], dtype=float).reshape(y.size, MOMENTS)
            step, time = int(record["step"]), float(record["time"])
        except (KeyError, TypeError, ValueError):
            self.rejected += 1
            return
        if self.y is None:
            self.y, self.moments = y, np.zeros_like(moments)
        elif y.shape != self.y.shape or not np.allclose(y, self.y, rtol=0, atol=1e-9):
            self.rejected += 1
            return
        if not np.all(np.isfinite(moments)):
            self.rejected += 1  # a non-finite velocity field: counted, never averaged in
            return
        self.moments += moments
        self.records += 1
        self.steps.append(step)
        self.times.append(time)
        self.tau_applied.append(_number(record.get("tau_w_applied")))
        self.tau_resolved.append(_number(record.get("tau_w_resolved")))
        nu = _number(record.get("kinematic_viscosity"))
        if nu > 0:
            self.viscosity = nu
        volume = moments[:, 0].sum()
        self.bulk_velocity.append(moments[:, 1].sum() / volume if volume > 0 else np.nan)

    def drain(self, client, ns: str, batch: int = 100) -> int:
        """Pops and adds every record waiting in the database; returns how many."""
        taken = 0
        while True:
            items = client.pop_many(keys.flow_stats(ns), batch)
            for item in items:
                try:
                    self.add(json.loads(item))
                except ValueError:
                    self.rejected += 1
            taken += len(items)
            if len(items) < batch:
                return taken

    def result(self, nu: Optional[float]) -> Optional[Dict]:
        """The time averages over all records (None without records); nu: the run summary's
        kinematic viscosity, else the records'."""
        if not self.records:
            return None
        nu = nu or self.viscosity
        out: Dict = {"records": self.records, "rejected_records": self.rejected,
                     "steps": [self.steps[0], self.steps[-1]],
                     "time": [self.times[0], self.times[-1]]}
        bulk = [u for u in self.bulk_velocity if np.isfinite(u)]
        out["U_b"] = float(np.mean(bulk)) if bulk else None
        applied = [t for t in self.tau_applied if np.isfinite(t)]
        resolved = [t for t in self.tau_resolved if np.isfinite(t)]
        series, source = (applied, "applied") if applied else (resolved, "resolved")
        out["series"] = self.series(source)
        u_tau = None
        if series:
            tau, tau_error = mean_and_uncertainty(series)
            out.update(tau_w=tau, tau_w_uncertainty=tau_error, tau_w_from=source)
            if resolved and source == "applied":
                out["tau_w_resolved"] = float(np.mean(resolved))
            if tau > 0:
                u_tau = float(np.sqrt(tau))
                out["u_tau"] = u_tau
                out["u_tau_uncertainty"] = (tau_error / (2 * u_tau)
                                            if tau_error is not None else None)
        meaningful = self.records >= MEANINGFUL_RECORDS and out.get("u_tau_uncertainty") is not None
        out["statistically_meaningful"] = meaningful
        out["caveat"] = None if meaningful else (
            f"{self.records} flow-statistics record(s) from step {self.steps[0]} to "
            f"{self.steps[-1]}: too few for a time average with an uncertainty (at least "
            f"{MEANINGFUL_RECORDS}); a short run shows its start-up transient, not the flow")
        profile = self.profile(u_tau, nu)
        if profile is not None:
            out["half_height"] = profile.pop("half_height")
            if u_tau and nu:
                out["Re_tau"] = u_tau * out["half_height"] / nu
            out["profile"] = profile
            out["dns_log_layer"] = compare_with_dns(profile)
        return out

    def series(self, source: str) -> Dict:
        """The time series of the records (every k-th when there are more than SERIES_POINTS):
        time, the wall shear stress averaged (applied or resolved) and the bulk velocity, to see
        how steady the averaging window was."""
        tau = self.tau_applied if source == "applied" else self.tau_resolved
        stride = max(1, -(-self.records // SERIES_POINTS))
        return {"time": self.times[::stride], "tau_w": [_or_none(t) for t in tau[::stride]],
                "U_b": [_or_none(u) for u in self.bulk_velocity[::stride]]}

    def profile(self, u_tau: Optional[float], nu: Optional[float]) -> Optional[Dict]:
        """The profiles against the distance to the nearer wall: the two halves of the channel
        folded onto each other (v pointing away from the nearer wall)."""
        if self.y is None or self.y.size < 2:
            return None
        y, moments = self.y, self.moments.copy()
        low, high = y[0], y[-1]
        half_height = (high - low) / 2
        distance = np.minimum(y - low, high - y)
        upper = (y - low) > (high - y)
        moments[upper, 2] *= -1  # w v
        moments[upper, 7] *= -1  # w uv
        planes, inverse = np.unique(np.round(distance / half_height, 9), return_inverse=True)
        folded = np.zeros((planes.size, MOMENTS))
        np.add.at(folded, inverse, moments)
        keep = folded[:, 0] > 0
        folded, distance = folded[keep], planes[keep] * half_height
        mean = folded[:, 1:4] / folded[:, :1]
        second = folded[:, 4:7] / folded[:, :1]
        uu, vv, ww = (second - mean ** 2).T
        uv = folded[:, 7] / folded[:, 0] - mean[:, 0] * mean[:, 1]
        profile = {"half_height": float(half_height), "y": distance.tolist(),
                   "U": mean[:, 0].tolist(), "uu": uu.tolist(), "vv": vv.tolist(),
                   "ww": ww.tolist(), "uv": uv.tolist()}
        if u_tau and nu:
            scale = u_tau ** 2
            profile.update(y_plus=(distance * u_tau / nu).tolist(),
                           U_plus=(mean[:, 0] / u_tau).tolist(),
                           uu_plus=(uu / scale).tolist(), vv_plus=(vv / scale).tolist(),
                           ww_plus=(ww / scale).tolist(), uv_plus=(uv / scale).tolist())
        return profile


def compare_with_dns(profile: Dict) -> Optional[Dict]:
    """U+ of the run against the DNS in the log layer (y+ 100-500): the mean and the largest
    relative difference at the run's planes there (DNS interpolated in log y+)."""
    if "y_plus" not in profile:
        return None
    y_plus, u_plus = np.asarray(profile["y_plus"]), np.asarray(profile["U_plus"])
    inside = (y_plus >= LOG_LAYER[0]) & (y_plus <= LOG_LAYER[1])
    if not inside.any():
        return {"source": DNS_SOURCE, "y_plus_range": list(LOG_LAYER), "planes": 0,
                "mean_relative_difference": None, "max_relative_difference": None}
    dns_y, dns_u = dns_profile()
    reference = np.interp(np.log(y_plus[inside]), np.log(dns_y), dns_u)
    difference = (u_plus[inside] - reference) / reference
    return {"source": DNS_SOURCE, "y_plus_range": list(LOG_LAYER), "planes": int(inside.sum()),
            "mean_relative_difference": float(difference.mean()),
            "max_relative_difference": float(difference[np.argmax(np.abs(difference))])}


def plot_profile(path: Path, flow: Dict, label: str = "this run",
                 baselines: Sequence[Tuple[str, Dict]] = ()) -> bool:
    """profile.png: U+ against y+ (log axis) of the run, the DNS, the log law and any
    baselines (label, flow block of another run). False when the run has no profile in +
    units."""
    profile = (flow or {}).get("profile") or {}
    if "y_plus" not in profile:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    dns_y, dns_u = dns_profile()
    ax.semilogx(dns_y, dns_u, "k-", lw=1.2, label=f"DNS, {DNS_SOURCE}")
    law_y = np.logspace(1, np.log10(max(1000.0, max(profile["y_plus"]))), 50)
    ax.semilogx(law_y, log_law(law_y), "k:", lw=1,
                label=f"log law (1/{KARMAN}) ln y+ + {LOG_LAW_CONSTANT}")
    for name, other in baselines:
        other_profile = (other or {}).get("profile") or {}
        if "y_plus" in other_profile:
            ax.semilogx(_positive(other_profile["y_plus"]), _at_positive(other_profile),
                        "s--", ms=3, lw=1, label=_curve_label(name, other))
    ax.semilogx(_positive(profile["y_plus"]), _at_positive(profile), "o-", ms=3, lw=1.2,
                label=_curve_label(label, flow))
    ax.set_xlabel("y+")
    ax.set_ylabel("U+")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    import io

    from ..rundir import write_file

    buffer = io.BytesIO()  # written whole or not at all, never through a link
    fig.savefig(buffer, dpi=100, format=Path(path).suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    write_file(path, buffer.getvalue())
    return True


def _curve_label(name: str, flow: Dict) -> str:
    u_tau = flow.get("u_tau")
    return f"{name} (u_tau {u_tau:.4g})" if u_tau else name


def _positive(values: Sequence[float]) -> List[float]:
    return [v for v in values if v > 0]  # the wall itself has no place on a log axis


def _at_positive(profile: Dict) -> List[float]:
    return [u for y, u in zip(profile["y_plus"], profile["U_plus"]) if y > 0]


def _or_none(value: float) -> Optional[float]:
    return float(value) if np.isfinite(value) else None


def _number(value) -> float:
    try:
        return float(value) if value is not None else float("nan")
    except (TypeError, ValueError):
        return float("nan")


def read_flow(run_dir: Path) -> Dict:
    """The flow block of a run's report.json, with a profile in + units; ConfigError naming
    the file and the fix otherwise."""
    from ..errors import ConfigError

    path = run_dir / "report.json"
    try:
        flow = json.loads(path.read_text()).get("flow")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it ({exc.strerror}): give the directory of a "
                          "`nekrs-ml run`") from None
    except ValueError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not ((flow or {}).get("profile") or {}).get("y_plus"):
        raise ConfigError(f"{path}: the run has no velocity profile: set statsInterval (and "
                          "statsStart past the transient) in [NEKRS_ML] and run again")
    return flow

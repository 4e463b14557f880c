"""The last line of a run: its outcome in one line on stdout (the failure's message on stderr),
from report.json's data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Dict


def summarise(data: Dict, run_dir: Path) -> None:
    from .report import model_use_text  # numpy and the model's code: only once the run is done

    if data.get("ensemble"):
        print(ensemble_line(data) + f"; report {run_dir / 'report.json'}", flush=True)
        if data["status"] != "ok" and data.get("message"):
            print(f"nekrs-ml run: {data['message']}", file=sys.stderr)
        return

    err = data.get("tau_w_rel_error")
    line = f"nekrs-ml run: {data['status']}"
    inference = data.get("inference")
    trained = (data.get("trainer") or {}).get("model_version") or (
        data.get("model_version") if err else None)
    if trained:
        line += f"; trained model v{trained}"
    if err:
        line += f" (a-priori tau_w relative error median {err['median']:.3%}, p95 {err['p95']:.3%})"
    if inference:
        line += f"; {model_use_text(inference)}"
    if inference and inference.get("calls"):
        line += f"; inference {inference['calls']:.0f} calls"
        if inference.get("latency_ms_p50") is not None:
            line += f", p50 {inference['latency_ms_p50']:.2f} ms"
        final = inference.get("tau_w_rel_error_final") or {}
        if final.get("median") is not None:
            line += f", v{inference['final_version']} error median {final['median']:.3%}"
        if inference.get("fallbacks"):
            line += f", {inference['fallbacks']:.0f} fallback steps"
    snapshots = data.get("snapshots") or {}
    if snapshots.get("dropped"):
        line += f"; {snapshots['dropped']:.0f} of {snapshots.get('written') or 0:.0f} snapshots dropped"
        drops = data.get("drops") or {}
        if drops.get("dropped_while_training"):
            line += (f" ({drops['fraction']:.0%} of those streamed while the trainer trained; "
                     f"maxDropFraction {drops['max_fraction']:g})")
        elif drops:  # by design: the trainer was starting, or had finished
            line += " (none while the trainer trained)"
    restarts = sum(r["restarts"] for r in (data.get("worker_restarts") or {}).values())
    if restarts:
        line += f"; {restarts} model worker restart(s)"
    flow = data.get("flow") or {}
    if flow.get("u_tau"):
        line += f"; u_tau {flow['u_tau']:.4g}"
        if flow.get("u_tau_uncertainty") and flow.get("statistically_meaningful", True):
            line += f" ± {flow['u_tau_uncertainty']:.2g}"
        elif flow.get("statistically_meaningful") is False:
            line += " (not statistically meaningful: see flow.caveat)"
        if flow.get("Re_tau"):
            line += f", Re_tau {flow['Re_tau']:.0f}"
        if flow.get("U_b") is not None:
            line += f", U_b {flow['U_b']:.4g}"
    balance = (data.get("wall_stress") or {}).get("momentum_balance") or {}
    if balance.get("tau_w_measured") is not None and balance.get("tau_w_implied"):
        line += (f"; wall shear stress {balance['tau_w_measured']:.3e} against "
                 f"{balance['tau_w_implied']:.3e} from the momentum balance")
    timing = data.get("timing") or {}
    if timing.get("coupling_fraction") is not None:
        line += (f"; coupling {timing['coupling_seconds_per_step'] * 1e3:.3g} ms per step "
                 f"({timing['coupling_fraction']:.1%} of the step time)")
    print(line + f"; report {run_dir / 'report.json'}", flush=True)
    if data["status"] != "ok" and data.get("message"):
        print(f"nekrs-ml run: {data['message']}", file=sys.stderr)


def _error_text(error) -> str:
    if not error:
        return "untested"
    return f"{error['median']:.2%}/{error['p95']:.2%}"


def ensemble_line(data: Dict) -> str:
    """The last line of an ensemble run: members, models, and every model's median/p95 a-priori
    error on every member (held-out ones marked)."""
    ensemble = data["ensemble"]
    members, models = ensemble["members"], ensemble["models"]
    finished = sum(1 for block in members.values() if block["status"] == "finished")
    line = (f"nekrs-ml run: {data['status']}; ensemble of {len(members)} members "
            f"({finished} finished")
    failed = [name for name, block in members.items() if block["status"] != "finished"]
    if failed:
        line += ", not finished: " + ", ".join(f"{n} {members[n]['status']}" for n in failed)
    line += f"), {len(models)} model(s)"
    for model, block in models.items():
        line += (f"; {model} v{block.get('version') or '-'} ({block.get('features') or '-'}, "
                 f"{block.get('state') or 'no status'}) median/p95 error")
        parts = []
        for name, member in members.items():
            error = (member.get("tau_w_rel_error") or {}).get(model)
            parts.append(f"{name}{' (held out)' if member['held_out'] else ''} {_error_text(error)}")
        line += " " + ", ".join(parts)
        if block.get("dropped"):
            line += f", missed {block['dropped']} snapshot(s)"
    shares = [block["applied_share"] for block in members.values()
              if block.get("applied_share") is not None]
    if shares:
        line += f"; members applied predictions on {min(shares):.0%}-{max(shares):.0%} of calls"
    return line

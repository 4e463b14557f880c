"""The report of an ensemble run: one block per member (its status, steps, snapshots, inference,
flow and the a-priori error of every model on its held-out snapshot), one per model (its trainer's
outcome, features, per-member errors and the snapshots it missed), and every model tested on the
held-out members, whose streams no trainer read (docs/ensembles.md, "report.json")."""

from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import numpy as np

from .. import keys
from ..errors import NekrsMLError
from .flow import plot_profile
from .run_report import read_json, release_reserve, solver_flow, stored_summary

TRAINER_PART = "trainer."  # the launcher's parts["trainer.<model>"]

HELD_OUT_SNAPSHOTS = 50  # at most this many retained snapshots per rank of a held-out member


def retained_samples(client, ns: str, ranks: int,
                     limit: int = HELD_OUT_SNAPSHOTS) -> Tuple[Optional[np.ndarray], Optional[np.ndarray]]:
    """A member's samples still in the database: its ranks' held-out snapshot and the newest
    announced snapshots nobody consumed (a held-out member's stream has no reader)."""
    from .report import concatenated, stored_samples

    pairs = []
    for rank in range(ranks):
        pairs.append((keys.holdout_inputs(ns, rank), keys.holdout_targets(ns, rank)))
        for entry in client.list_range(keys.snapshot_index(ns, rank), -limit, -1):
            seq = int(entry.split()[0])
            pairs.append((keys.snapshot_inputs(ns, rank, seq), keys.snapshot_targets(ns, rank, seq)))
    return concatenated([(x, y) for x, y in stored_samples(client, pairs)
                         if x.shape[0] == y.shape[0]])


def _error_block(result: Optional[Dict]) -> Optional[Dict]:
    if not result or "median" not in result:
        return None
    return {key: result.get(key) for key in ("median", "p95", "samples", "version")}


class EnsembleReporting:
    """gather_report of an EnsembleRun (nekrs_ml.launch.ensemble)."""

    def ensemble_placement(self) -> Optional[Dict]:
        """report.json's `placement` on several hosts: a single run's, with the solver ranks
        those of every member together (`members`: each one's)."""
        if self.placement is None:
            return None
        solver: Dict[str, int] = {}
        for state in self.members.values():
            for host, count in (state.hosts or {}).items():
                solver[host] = solver.get(host, 0) + count
        return {**self.placement.as_dict(), "solver_ranks": solver,
                "members": {name: state.hosts for name, state in self.members.items()}}

    def member_summary(self, state) -> Optional[Dict]:
        return stored_summary(self.client, state.ns, state.dir / "solver.json")

    def gather_report(self, status: str, exit_codes: Dict[str, Optional[int]], message: str) -> Dict:
        from . import report

        release_reserve(self.run_dir)
        models = [model.name for model in self.ensemble.models]
        members: Dict[str, Dict] = {}
        for state in self.members.values():
            if state.status == "running":
                state.status = "stopped"  # the run ended before this member did
            summary = self.member_summary(state)
            flow = solver_flow(self.client, state.ns, state.flow_stats, summary,
                               lambda text, name=state.name: self.warn(f"{name}: {text}"))
            plots = []
            try:
                if flow and plot_profile(state.dir / "profile.png", flow, label=state.name):
                    plots.append(str((state.dir / "profile.png").relative_to(self.run_dir)))
            except Exception as exc:  # the report must be written even when a plot fails
                self.warn(f"{state.name}: profile.png was not drawn: {exc}")
            errors = {}
            if self.client is not None:
                for model in models:
                    errors[model] = self.member_error(state, model)
            inference = (summary or {}).get("inference")
            members[state.name] = {
                "status": state.status,
                "held_out": state.member.held_out,
                "namespace": state.ns,
                "case": str(state.par),
                "log": str(state.dir / "solver.log"),
                "exit_code": state.part.returncode if state.part is not None else None,
                "start_delay_s": state.member.start_delay_s,
                "steps": (summary or {}).get("steps", state.step),
                "total_steps": state.total_steps,
                "snapshots": ({"written": summary.get("snapshots_written"),
                               "dropped": summary.get("snapshots_dropped")} if summary else None),
                "inference": inference,
                "applied_share": report.applied_share(inference),
                "tau_w_rel_error": errors,
                "flow": flow,
                "plots": plots,
                "hosts": state.hosts,
            }
        model_blocks = {model: self.model_block(model) for model in models}
        held_out = {name: block["tau_w_rel_error"] for name, block in members.items()
                    if block["held_out"]}
        inferred = self.settings.model_name.lower()
        if status == "ok" and self.settings.inferring:
            unused = [name for name, block in members.items() if block["status"] == "finished"
                      and not ((block["inference"] or {}).get("predicted_calls"))]
            if unused:
                status = "no_model"
                message = (f"member(s) {', '.join(unused)} applied no prediction of {inferred} "
                           "(see members.<name>.inference in report.json)")
                self.warn(message)
        for model, block in model_blocks.items():
            if block.get("dropped"):
                self.warn(f"model {model} missed {block['dropped']} snapshot(s) of the stream "
                          "(it read more slowly than the members wrote; maxSnapshots bounds what "
                          "waits for it)")
        inference_block = model_blocks.get(inferred) or {}
        return {
            **self.report_head(status, message),
            "model_version": inference_block.get("version"),
            "tau_w_rel_error": None,  # per member and model: members.<name>.tau_w_rel_error
            "ensemble": {
                "member_failure": self.ensemble.member_failure,
                "members": members,
                "models": model_blocks,
                "held_out": held_out,
            },
            "exit_codes": exit_codes,
            "placement": self.ensemble_placement(),
            "warnings": self.warnings,
            "plots": [plot for block in members.values() for plot in block["plots"]],
            "wall_seconds": time.time() - self.started,
        }

    def member_error(self, state, model: str) -> Optional[Dict]:
        """The a-priori error of a model's last version on a member's held-out data (a training
        member's held-out snapshot; a held-out member's retained snapshots too)."""
        from . import report

        try:
            if not state.member.held_out:
                return _error_block(report.evaluate_model(
                    self.client, state.ns, model, state.settings.solver_ranks, model_ns=self.ns))
            from ..models.features import read_case

            inputs, targets = retained_samples(self.client, state.ns, state.settings.solver_ranks)
            if inputs is None:
                return None
            return _error_block(report.evaluate_samples(
                self.client, self.ns, model, inputs, targets, read_case(self.client, state.ns)))
        except Exception as exc:  # the report must be written even when evaluation fails
            self.warn(f"{model} could not be tested on member {state.name}: {exc}")
            return None

    def model_block(self, model: str) -> Dict:
        directory = self.run_dir / "models" / model
        from . import report

        trainer = read_json(directory / "trainer.json") or {}
        history = report.read_history(directory / "trainer_history.jsonl")
        status = self.trainer_statuses.get(model) or (history[-1] if history else {})
        meta = {}
        version = None
        if self.client is not None:
            try:
                from ..models import registry

                version = registry.latest_version(self.client, self.ns, model)
                if version is not None:
                    meta = registry.load(self.client, self.ns, model, version)[1]
            except (NekrsMLError, ValueError):
                pass
        part = self.parts.get(TRAINER_PART + model)
        return {
            "state": status.get("state"),
            "version": version,
            "features": meta.get("features", "dimensional") if meta else None,
            "epochs": status.get("epoch"),
            "val_loss": status.get("val_loss"),
            "dropped": status.get("dropped"),
            "members": status.get("members"),
            "trained_model": trainer.get("model_file"),
            "log": str(directory / "trainer.log"),
            "exit_code": part.returncode if part is not None else None,
        }

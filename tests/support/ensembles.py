"""Ensemble members for the trainer's tests: wall samples of a channel flow at a given Re_tau
(Reichardt's law of the wall, from the C++ core), and a stand-in member solver that streams
them into its own namespace with the solver's protocol, case record included."""

from __future__ import annotations

import json
import threading
import time

import numpy as np

import nekrs_ml
from nekrs_ml import _core, keys

HEIGHT = 0.1  # sampling height in outer units (channel half-height 1, mean u_tau 1)


def member_case(re_tau: float) -> dict:
    """The case record a member's solver writes (keys.solver_case)."""
    return {"kinematic_viscosity": 1.0 / re_tau, "sample_height": HEIGHT, "inputs": 3,
            "outputs": 2, "ranks": 1}


def wall_samples(re_tau: float, points: int, rng: np.random.Generator):
    """(inputs [n, 3] = [u.t1, u.t2, u.n], targets [n, 2] = [tau.t1, tau.t2]) in outer units:
    a local friction velocity that fluctuates by ~30 % about 1, the velocity of Reichardt's law
    at height h along a direction within ~20 degrees of t1 (the stress along it), a small
    wall-normal component."""
    nu = 1.0 / re_tau
    u_tau = np.exp(0.3 * rng.standard_normal(points))
    speed = _core.reichardt_uplus(HEIGHT * u_tau / nu) * u_tau
    angle = 0.3 * rng.standard_normal(points)
    direction = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    inputs = np.concatenate([speed[:, None] * direction,
                             0.05 * speed[:, None] * rng.standard_normal((points, 1))], axis=1)
    return inputs, (u_tau ** 2)[:, None] * direction


class MemberSolver(threading.Thread):
    """One member's solver, rank 0 only: SADD, the case record (unless ``case`` is False),
    then a snapshot every ``interval`` s until halted; the oldest beyond ``keep`` are dropped
    (the retention limit)."""

    def __init__(self, client_args: dict, ns: str, re_tau: float, points=200, interval=0.05,
                 keep=50, seed=0, case=True):
        super().__init__(daemon=True)
        self.client = nekrs_ml.Client(**client_args)
        self.ns, self.re_tau, self.points, self.interval, self.keep = ns, re_tau, points, \
            interval, keep
        self.case = case
        self.rng = np.random.default_rng(seed)
        self.written = 0
        self.error = None
        self.halted = threading.Event()

    def run(self) -> None:
        try:
            members = keys.solver_members(self.ns)
            self.client.command(["SADD", members, "0"], key=members)
            if self.case:
                self.client.set_string(keys.solver_case(self.ns),
                                       json.dumps(member_case(self.re_tau)))
            seq = 0
            while not self.halted.is_set():
                write_snapshot(self.client, self.ns, 0, seq,
                               *wall_samples(self.re_tau, self.points, self.rng), keep=self.keep)
                seq += 1
                self.written += 1
                time.sleep(self.interval)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            self.error = exc


def write_snapshot(client, ns: str, rank: int, seq: int, inputs, targets, keep=None) -> None:
    """Both tensors, then the announcement; beyond ``keep`` announced the oldest is dropped
    (pop the entry, delete the tensors), as the solver's retention limit does."""
    client.put_tensor(keys.snapshot_inputs(ns, rank, seq), np.ascontiguousarray(inputs))
    client.put_tensor(keys.snapshot_targets(ns, rank, seq), np.ascontiguousarray(targets))
    index = keys.snapshot_index(ns, rank)
    client.list_push(index, f"{seq} {seq * 10} {seq * 0.01:.6f}")
    if keep is not None and client.list_length(index) > keep:
        oldest = client.command(["LPOP", index], key=index)
        if oldest is not None:
            old = int(oldest.split()[0])
            client.delete(keys.snapshot_inputs(ns, rank, old))
            client.delete(keys.snapshot_targets(ns, rank, old))

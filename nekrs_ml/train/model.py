"""The wall model network and its deployable form: a torch.export program (exported once per
architecture; a new version swaps its weights into that program).

Two feature schemes (nekrs_ml.models.features): a ``dimensional`` model is an MLP between
normalised inputs and targets (NormalisedModel); a ``wall_units`` model (WallUnitsModel) takes
wall-scaled samples ``u h / nu`` and answers wall-scaled stress ``tau h^2 / nu^2`` through a
log-magnitude transform: the MLP sees ``log|u_par|`` and the velocity direction and predicts
``log|tau|`` and a correction of the stress direction to the velocity direction. In wall units
the law of the wall is one curve for every Re_tau and it is close to a straight line in log-log
axes, so a model trained at a few Re_tau extrapolates to a higher one; the ``*_features``
functions below are the same map in numpy, for what the trainer stores."""

from __future__ import annotations

import copy
import io
from typing import Sequence

import numpy as np
import torch
from torch import nn


def build_mlp(n_in: int, hidden: Sequence[int], n_out: int) -> nn.Sequential:
    """n_in -> hidden... -> n_out with SiLU: smooth, so a smooth monotone map like
    u -> tau_w is fitted without the kinks of ReLU or the saturation of Tanh."""
    layers, width = [], n_in
    for size in hidden:
        layers += [nn.Linear(width, int(size)), nn.SiLU()]
        width = int(size)
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


class NormalisedModel(nn.Module):
    """Physical inputs in, physical targets out: the normalisation is part of the model, so
    the inference side needs nothing but the exported program."""

    def __init__(self, mlp: nn.Module, input_mean: np.ndarray, input_std: np.ndarray,
                 target_mean: np.ndarray, target_std: np.ndarray):
        super().__init__()
        self.mlp = mlp
        for name, value in (("input_mean", input_mean), ("input_std", input_std),
                            ("target_mean", target_mean), ("target_std", target_std)):
            self.register_buffer(name, torch.as_tensor(np.asarray(value), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[batch, n_in] -> [batch, n_out], float32."""
        scaled = (x.to(torch.float32) - self.input_mean) / self.input_std
        return self.mlp(scaled) * self.target_std + self.target_mean


# --- wall units: the log-magnitude transform ------------------------------------------------
WALL_UNIT_INPUTS, WALL_UNIT_TARGETS = 3, 2  # [u.t1, u.t2, u.n] -> [tau.t1, tau.t2]
WALL_UNIT_FEATURES = 4  # log|u_par|, u.t1/|u_par|, u.t2/|u_par|, u.n/|u_par|
WALL_UNIT_OUTPUTS = 3  # log|tau|, the stress direction minus the velocity direction (t1, t2)
SPEED_FLOOR = 1e-6  # a zero velocity has a finite logarithm and no direction
LOG_CEILING = 80.0  # exp() of more overflows float32: a wild prediction stays finite
# a direction feature may be constant (all samples along t1): its normalisation must not
# divide float32 rounding noise by ~0
DIRECTION_STD_FLOOR = 0.05


def wall_unit_input_features(x: np.ndarray) -> np.ndarray:
    """[n, 3] wall-scaled samples -> [n, 4] the MLP's features (float64)."""
    x = np.asarray(x, dtype=np.float64)
    speed = np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2 + SPEED_FLOOR ** 2)
    return np.stack([np.log(speed), x[:, 0] / speed, x[:, 1] / speed, x[:, 2] / speed], axis=1)


def wall_unit_target_features(tau: np.ndarray, x: np.ndarray) -> np.ndarray:
    """[n, 2] wall-scaled stress (and its samples [n, 3]) -> [n, 3] what the MLP predicts."""
    tau, x = np.asarray(tau, dtype=np.float64), np.asarray(x, dtype=np.float64)
    magnitude = np.sqrt(tau[:, 0] ** 2 + tau[:, 1] ** 2 + SPEED_FLOOR ** 2)
    speed = np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2 + SPEED_FLOOR ** 2)
    return np.stack([np.log(magnitude), tau[:, 0] / magnitude - x[:, 0] / speed,
                     tau[:, 1] / magnitude - x[:, 1] / speed], axis=1)


def wall_unit_inputs(features: np.ndarray) -> np.ndarray:
    """The inverse of wall_unit_input_features: [n, 4] -> [n, 3] wall-scaled samples."""
    speed = np.exp(np.asarray(features, dtype=np.float64)[:, :1])
    return speed * features[:, 1:4]


def wall_unit_targets(target_features: np.ndarray, input_features: np.ndarray) -> np.ndarray:
    """The inverse of wall_unit_target_features: [n, 3] (with the inputs' [n, 4]) -> [n, 2]."""
    y = np.asarray(target_features, dtype=np.float64)
    direction = np.asarray(input_features, dtype=np.float64)[:, 1:3] + y[:, 1:3]
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-300)
    return np.exp(np.minimum(y[:, :1], LOG_CEILING)) * direction


class WallUnitsModel(NormalisedModel):
    """Wall-scaled samples [n, 3] in, wall-scaled stress [n, 2] out (float32); the feature map,
    the normalisation and the inverse map are part of the exported program (the normalisation
    is NormalisedModel's, applied to the features rather than to the samples)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        u1, u2, un = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        speed = torch.sqrt(u1 * u1 + u2 * u2 + SPEED_FLOOR ** 2)
        d1, d2 = u1 / speed, u2 / speed
        features = torch.cat([torch.log(speed), d1, d2, un / speed], dim=1)
        out = self.mlp((features - self.input_mean) / self.input_std) * self.target_std \
            + self.target_mean
        magnitude = torch.exp(torch.clamp(out[:, 0:1], max=LOG_CEILING))
        t1, t2 = d1 + out[:, 1:2], d2 + out[:, 2:3]
        norm = torch.sqrt(t1 * t1 + t2 * t2 + 1e-12)
        return torch.cat([magnitude * t1 / norm, magnitude * t2 / norm], dim=1)


def deployable(mlp: nn.Module, input_mean, input_std, target_mean, target_std,
               wall_units: bool = False) -> nn.Module:
    cpu_mlp = copy.deepcopy(mlp).to(device="cpu", dtype=torch.float32).eval()
    kind = WallUnitsModel if wall_units else NormalisedModel
    return kind(cpu_mlp, input_mean, input_std, target_mean, target_std).eval()


def export_program(model: nn.Module):
    """The ExportedProgram of a deployable model, with a dynamic number of points."""
    width = WALL_UNIT_INPUTS if isinstance(model, WallUnitsModel) else int(model.input_mean.numel())
    example = torch.zeros(8, width, dtype=torch.float32)
    return torch.export.export(model, (example,),
                               dynamic_shapes=({0: torch.export.Dim("points")},))


def program_bytes(program) -> bytes:
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()


class Exporter:
    """Exports the wall model once per architecture (seconds) and afterwards only swaps each new
    version's weights into that program (milliseconds), so publishing does not stall training."""

    def __init__(self):
        self.program = None
        self.layout = None  # (name, shape) of every weight of self.program

    def program_for(self, model: NormalisedModel):
        state = model.state_dict()
        layout = tuple((name, tuple(value.shape)) for name, value in state.items())
        if self.program is None or layout != self.layout:
            self.program, self.layout = export_program(model), layout
            return self.program
        for name, value in state.items():
            fresh = value.detach().clone()
            if isinstance(self.program.state_dict[name], nn.Parameter):
                fresh = nn.Parameter(fresh, requires_grad=False)
            self.program.state_dict[name] = fresh
        return self.program

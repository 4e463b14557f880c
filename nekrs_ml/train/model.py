"""The wall model network and its deployable form: a torch.export program (exported once per
architecture; a new version swaps its weights into that program)."""

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


def deployable(mlp: nn.Module, input_mean, input_std, target_mean, target_std) -> NormalisedModel:
    cpu_mlp = copy.deepcopy(mlp).to(device="cpu", dtype=torch.float32).eval()
    return NormalisedModel(cpu_mlp, input_mean, input_std, target_mean, target_std).eval()


def export_program(model: nn.Module):
    """The ExportedProgram of a deployable model, with a dynamic number of points."""
    example = torch.zeros(8, int(model.input_mean.numel()), dtype=torch.float32)
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

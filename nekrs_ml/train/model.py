"""The wall model network and its deployable TorchScript form."""

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
    the inference side needs nothing but the TorchScript file."""

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


def torchscript_bytes(mlp: nn.Module, input_mean, input_std, target_mean, target_std) -> bytes:
    """The scripted NormalisedModel (CPU, float32) serialised by torch.jit.save."""
    model = deployable(mlp, input_mean, input_std, target_mean, target_std)
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(model), buffer)
    return buffer.getvalue()


def export_program_bytes(mlp: nn.Module, input_mean, input_std, target_mean, target_std) -> bytes:
    """The same model as a torch.export program with a dynamic number of points."""
    model = deployable(mlp, input_mean, input_std, target_mean, target_std)
    example = torch.zeros(8, int(model.input_mean.numel()), dtype=torch.float32)
    program = torch.export.export(model, (example,),
                                  dynamic_shapes=({0: torch.export.Dim("points")},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue()

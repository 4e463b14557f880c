"""From a registry version to a callable that evaluates a batch on the worker's device.

``load_model(record, device)`` is the one place that knows how a stored model is run: an ONNX,
TensorFlow or TF Lite version by its framework (models/backends.py); a TorchScript archive is
loaded as it is; an exported program (torch.export) is moved to the device
by rewriting its graph and then traced to TorchScript with its activations in place (checked
against the exported module at load), which runs its graph without Python between the operators.
The worker only calls ``LoadedModel.evaluate``.
"""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..errors import NekrsMLError
from ..models import aot
from ..models import backends


def _torch():
    import torch

    return torch


def parse_device(text: str):
    """torch.device of "cpu", "cuda" or "cuda:N"; a missing CUDA device is an error here."""
    torch = _torch()
    device = torch.device(text)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NekrsMLError(f"workerDevice = {text}: this torch has no CUDA device; use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise NekrsMLError(f"workerDevice = {text}: only {torch.cuda.device_count()} CUDA "
                               "device(s) visible")
    elif device.type != "cpu":
        raise NekrsMLError(f"workerDevice = {text}: use cpu, cuda or cuda:N")
    return device


@dataclass
class ModelRecord:
    """A registry version as stored: its blob, its metadata and, when asked for and published,
    its torch.export form."""

    name: str
    version: int
    meta: dict
    blob: bytes
    export_blob: Optional[bytes] = None


@dataclass
class LoadedModel:
    name: str
    version: int
    meta: dict
    module: object            # torch.jit.ScriptModule (also an exported program, traced) or
                              # the module of an ExportedProgram
    n_in: int
    dtype: np.dtype
    device: object            # torch.device
    note: str = ""            # how it runs, for the worker's log (", traced" or why not)

    def evaluate(self, batch: np.ndarray) -> np.ndarray:
        """Predictions [points, outputs] of ``batch`` [points, n_in], as ``dtype``."""
        if isinstance(self.module, backends.Backend):  # ONNX Runtime, TensorFlow, TF Lite
            return self.module.evaluate_rows([batch], self.dtype)
        torch = _torch()
        # frombuffer views (decoded requests) are read-only; torch wants writeable memory
        writeable = batch if batch.flags.writeable else np.array(batch, copy=True)
        tensor = torch.from_numpy(writeable)
        with torch.inference_mode():
            result = self.module(tensor.to(self.device, non_blocking=True))
        result = result.detach().to("cpu")
        if result.ndim != 2 or result.shape[0] != batch.shape[0]:
            raise NekrsMLError(f"the model returned shape {tuple(result.shape)} for inputs "
                               f"{tuple(batch.shape)}; it must return [points, outputs]")
        return result.numpy().astype(self.dtype, copy=False)


def load_model(record: ModelRecord, device, prefer_export: bool = False) -> LoadedModel:
    """The model of ``record`` ready to evaluate batches on ``device``."""
    n_in, dtype = int(record.meta["n_in"]), np.dtype(record.meta.get("dtype", "float32"))
    if backends.backend_of(record.meta) != "torch":
        module = backends.load(record.blob, record.meta, str(device), _torch().get_num_threads())
        note = f" by {module.backend}" + (f" on {module.placement}"
                                          if module.placement != str(device) else "")
        return LoadedModel(record.name, int(record.version), record.meta, module, n_in, dtype,
                           device, note)
    module = load_module(record.blob, record.meta, device, prefer_export, record.export_blob)
    note = ""
    if not isinstance(module, _torch().jit.ScriptModule):
        traced, why = as_torchscript(module, n_in, dtype, device)
        module, note = (traced, ", traced") if traced is not None else (module, f", {why}")
    return LoadedModel(record.name, int(record.version), record.meta, module, n_in, dtype,
                       device, note)


def load_module(blob: bytes, meta: dict, device, prefer_export: bool = False,
                export_blob: Optional[bytes] = None):
    """The callable model of a registry version on ``device``."""
    torch = _torch()
    if meta.get("format") == "export" or (prefer_export and export_blob is not None):
        from torch.export.passes import move_to_device_pass

        program = aot.load_program(export_blob if export_blob is not None else blob,
                                   f"model {meta.get('name')!r} v{meta.get('version')}")
        # an exported program is moved by rewriting its graph (module().to() keeps the
        # devices recorded in the graph)
        return move_to_device_pass(program, device).module()
    module = torch.jit.load(io.BytesIO(blob), map_location=device)
    module.eval()
    return module


# Activations evaluated in place when their input is a fresh result used by nothing else: each
# out-of-place activation allocates (and page-faults) a [points, width] buffer, about a fifth of
# a CPU forward pass of the 3-64-64-2 MLP over 25,000 points.
IN_PLACE_ACTIVATIONS = ("relu", "silu", "gelu", "tanh", "sigmoid", "elu", "leaky_relu",
                        "hardtanh", "mish")
FRESH_RESULTS = ("linear", "addmm", "mm", "convolution", "add", "sub", "mul")


def activations_in_place(module) -> int:
    """Rewrites the graph of an exported program's module (torch.fx) so that activations
    overwrite their input where that input is a fresh result (FRESH_RESULTS) with no other use;
    returns how many were rewritten."""
    torch = _torch()
    graph = getattr(module, "graph", None)
    if graph is None:
        return 0
    rewritten = 0
    for node in graph.nodes:
        if node.op != "call_function" or not node.args:
            continue
        name = _aten_name(node.target)
        source = node.args[0]
        if (name in IN_PLACE_ACTIVATIONS and hasattr(torch.ops.aten, name + "_")
                and getattr(source, "op", None) == "call_function"
                and _aten_name(source.target) in FRESH_RESULTS and len(source.users) == 1):
            overload = node.target._overloadname
            node.target = getattr(getattr(torch.ops.aten, name + "_"), overload)
            rewritten += 1
    if rewritten:
        module.recompile()
    return rewritten


def untraceable(module) -> str:
    """Why tracing would not keep the graph of an exported program's module ("" if it would): a
    higher-order operator (cond, while_loop, map: the tracer records the branch it takes) or a
    tensor read as a Python number (the tracer records the number)."""
    torch = _torch()
    for node in getattr(getattr(module, "graph", None), "nodes", ()):
        if node.op != "call_function":
            continue
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            return f"the graph has control flow ({node.target.name()})"
        if _aten_name(node.target) in ("_local_scalar_dense", "item"):
            return "the graph reads a tensor as a number"
    return ""


def _aten_name(target) -> str:
    """"silu" for torch.ops.aten.silu.default; "" for anything else."""
    schema = getattr(target, "_schema", None)
    name = getattr(schema, "name", "")
    return name[len("aten::"):] if name.startswith("aten::") else ""


# Inputs wider than this (an image model's rows are images: ResNet-50's are 150,528 values) are
# traced and checked on a few rows: hundreds would cost minutes of a CPU, beyond the load's
# heartbeat (LOADING_TTL).
WIDE_INPUT = 4096


def as_torchscript(module, n_in: int, dtype: np.dtype, device):
    """An exported program's module as TorchScript (traced), or None with the reason.

    The exported module runs its graph in Python, one operator call at a time (about 0.25 ms of
    a 1.3 ms forward of the 1-20-1 MLP over 25,000 points on a CPU core); the traced graph runs
    in libtorch, as RedisAI's TorchScript models do. An exported graph has no Python control
    flow, so tracing keeps it; the traced module is used only if it answers batches of several
    sizes as the exported one does."""
    import warnings

    torch = _torch()
    why = untraceable(module)
    if why:
        return None, why
    tensor_dtype = torch.from_numpy(np.zeros(1, dtype)).dtype
    generator = torch.Generator().manual_seed(0)

    def batch(rows):
        return torch.rand(rows, n_in, generator=generator).to(tensor_dtype).to(device)

    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on constants and shapes
            rewritten = copy.deepcopy(module)
            activations_in_place(rewritten)
            trace_rows, check_rows = ((64, (1, 37, 200)) if n_in <= WIDE_INPUT
                                      else (2, (1, 3, 5)))
            traced = torch.jit.trace(rewritten, (batch(trace_rows),), check_trace=False)
            for rows in check_rows:
                inputs = batch(rows)
                expected, got = module(inputs), traced(inputs)
                if got.shape != expected.shape or not torch.allclose(got, expected, rtol=1e-5,
                                                                       atol=1e-6, equal_nan=True):
                    return None, f"the traced module answers {rows} rows differently"
    except Exception as exc:  # an exported graph tracing cannot follow (e.g. torch.cond)
        return None, f"tracing failed: {type(exc).__name__}: {str(exc)[:200]}"
    return traced, ""

"""In-process inference artefacts: the weights of a version and the AOTInductor package of a graph.

A torch.export version of a model is stored twice for the in-process backend (libnekrsml_torch):
- its **weights** (``NS:{m:NAME}:vV:weights``): every parameter and buffer, float32, in the small
  binary format of docs/protocol.md, tagged with the version's **graph id**;
- once per graph, device kind and torch version, the **AOTInductor package**
  (``NS:{m:NAME}:package:GRAPH:DEVICE:TORCH``), compiled with every weight kept swappable.

The graph id hashes what a compiled package depends on: the exported graph, the names, shapes and
dtypes of the weights and the input/output widths, not the weight values. A new version of the
same graph therefore reuses the package and ships only its weights; the solver swaps them in.
Compiling takes tens of seconds, so it runs beside the solver and the trainer (``nekrs-ml
compile``, started by the trainer when the run uses the in-process backend); a version reaches
in-process users once the package of its graph exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import socket
import tempfile
import time
import warnings
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from .. import keys
from ..client import Client
from ..errors import ConfigError, KeyNotFoundError, NekrsMLError
from . import registry

WEIGHTS_MAGIC = b"NKMLW1\n"
DEVICE_KINDS = ("cpu", "cuda")
METADATA_PREFIX = "nekrs_ml."  # keys of our entries in the package's AOTInductor metadata


def _torch():
    import torch

    return torch


def torch_version() -> str:
    """The torch release (without a local build tag such as +cpu): part of a package's key."""
    return _torch().__version__.split("+", 1)[0]


def device_kind(device: str) -> str:
    """"cpu" or "cuda" of a device name (cpu, cuda, cuda:N)."""
    kind = str(device).split(":", 1)[0]
    if kind not in DEVICE_KINDS:
        raise ConfigError(f"device {device!r}: use cpu, cuda or cuda:N")
    return kind


@contextlib.contextmanager
def quiet_torch():
    """Silences warnings torch raises about its own internals (not about the user's model),
    which would otherwise land in every launcher and trainer log."""
    with warnings.catch_warnings():
        # inductor imports torch.utils.mkldnn, which still uses TorchScript
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script_method.*deprecated",
                                category=DeprecationWarning)
        # loading a saved program goes through torch's pytree internals
        warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*", category=FutureWarning)
        yield


# What a torch.export archive (torch.export.save, archive format "pt2") may hold, relative to
# its top folder: torch reads every one of these without unpickling anything but plain tensors.
_SAFE_ENTRIES = re.compile(
    r"archive_format|archive_version|byteorder|version|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|extra/.+"
    r"|data/weights/[\w.-]+_weights_config\.json|data/weights/weight_\d+"
    r"|data/constants/[\w.-]+_constants_config\.json|data/constants/tensor_\d+"
    r"|data/sample_inputs/[\w.-]+\.pt")


class UnsafeModelError(ConfigError):
    """A model file that torch would unpickle (or load native code from) to read it."""


def check_program_archive(blob: bytes, what: str = "model file") -> None:
    """Refuses, before torch reads anything, a saved torch.export program whose loading would
    run code: pickled weights or constants (``use_pickle`` in its payload configs: torch loads
    them with ``weights_only=False``), custom or opaque objects (pickle), legacy weight files,
    compiled AOTInductor code (a shared library), the pre-2.8 zip format, or sample inputs that
    are not plain tensors (torch falls back to ``weights_only=False`` for them). What remains is
    JSON and raw tensor bytes."""
    def refuse(reason: str):
        raise UnsafeModelError(
            f"{what}: {reason}; nekrs_ml never loads a model whose reading would unpickle "
            "Python objects or load compiled code (it could run anything). Save the program "
            "again with torch.export.save from plain tensor weights (parameters and buffers), "
            "e.g. as the trainer does, and deploy that file")

    try:
        archive = zipfile.ZipFile(io.BytesIO(blob))
        names = archive.namelist()
    except (zipfile.BadZipFile, ValueError, OSError):
        raise ConfigError(f"{what}: not a zip archive (a saved torch.export program is one)") \
            from None
    folders = {name.split("/", 1)[0] for name in names}
    if len(folders) != 1 or any("/" not in name for name in names):
        refuse("not a torch.export archive of this torch (one top folder holding "
               "archive_format); the pre-2.8 format reads pickles")
    folder = folders.pop() + "/"
    entries = [name[len(folder):] for name in names if not name.endswith("/")]
    if "archive_format" not in entries:
        refuse("no archive_format entry: not a torch.export archive of this torch")
    unexpected = [name for name in entries if not _SAFE_ENTRIES.fullmatch(name)]
    if unexpected:
        kind = ("compiled AOTInductor code" if any(n.startswith("data/aotinductor/")
                                                   for n in unexpected) else "entries")
        refuse(f"it holds {kind} torch would load as code or pickles: {unexpected[:3]}")
    for name in entries:
        if not name.endswith("_config.json"):
            continue
        try:
            config = json.loads(archive.read(folder + name)).get("config", {})
        except (ValueError, AttributeError):
            refuse(f"{name} is not a payload configuration")
        for key, payload in (config.items() if isinstance(config, dict) else ()):
            path_name = str((payload or {}).get("path_name", ""))
            if (payload or {}).get("use_pickle"):
                refuse(f"{name} marks {key!r} use_pickle (torch unpickles it with "
                       "weights_only=False)")
            if not re.fullmatch(r"weight_\d+|tensor_\d+", path_name):
                refuse(f"{name}: {key!r} is stored as {path_name!r}, not as plain tensor bytes")
    torch = _torch()
    for name in entries:
        if name.startswith("data/sample_inputs/"):
            try:
                with quiet_torch():
                    torch.load(io.BytesIO(archive.read(folder + name)), weights_only=True)
            except Exception as exc:  # noqa: BLE001 - UnpicklingError and its relatives
                first = next((line for line in str(exc).splitlines() if line.strip()), "")
                refuse(f"its sample inputs {name} are not plain tensors ({first[:200]})")


def load_program(blob: bytes, what: str = "model file"):
    """The ExportedProgram of a saved torch.export blob, read without unpickling anything
    (``check_program_archive`` first: UnsafeModelError otherwise)."""
    check_program_archive(blob, what)
    with quiet_torch():
        return _torch().export.load(io.BytesIO(blob))


def program_weights(program) -> Dict[str, "object"]:
    """Every parameter and buffer of an exported program by its fully qualified name."""
    named = dict(program.state_dict)
    named.update(getattr(program, "constants", {}) or {})
    return {name: value for name, value in named.items() if hasattr(value, "shape")}


def graph_id(program, n_in: int, n_out: int) -> str:
    """16 hex digits naming what a compiled package depends on (not the weight values)."""
    digest = hashlib.sha256()
    digest.update(str(program.graph_module.code).encode())
    for name, value in sorted(program_weights(program).items()):
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype};".encode())
    digest.update(f"in={int(n_in)};out={int(n_out)}".encode())
    return digest.hexdigest()[:16]


# --- weights --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Weights:
    graph: str
    n_in: int
    n_out: int
    tensors: Dict[str, np.ndarray]  # float32, C-contiguous


def weights_blob(program, n_in: int, n_out: int) -> bytes:
    """The version's weights in the wire format of docs/protocol.md ("Model weights")."""
    graph = graph_id(program, n_in, n_out)
    lines = [f"graph {graph}", f"n_in {int(n_in)}", f"n_out {int(n_out)}"]
    payload: List[bytes] = []
    for name, value in sorted(program_weights(program).items()):
        array = np.ascontiguousarray(value.detach().to("cpu").float().numpy(), dtype="<f4")
        if any(c.isspace() for c in name):
            raise ConfigError(f"weight name {name!r} contains a space; rename the module attribute")
        shape = ",".join(str(d) for d in array.shape) or "-"
        lines.append(f"tensor {name} float32 {shape} {array.nbytes}")
        payload.append(array.tobytes())
    header = ("\n".join(lines) + "\ndata\n").encode()
    return WEIGHTS_MAGIC + header + b"".join(payload)


def parse_weights(blob: bytes) -> Weights:
    """The inverse of ``weights_blob``; ConfigError for anything malformed."""
    if not blob.startswith(WEIGHTS_MAGIC):
        raise ConfigError("model weights: not in the nekrs_ml weights format (no NKMLW1 header)")
    end = blob.find(b"\ndata\n")
    if end < 0:
        raise ConfigError("model weights: header without a 'data' line")
    fields = {"graph": None, "n_in": None, "n_out": None}
    specs: List[Tuple[str, Tuple[int, ...], int]] = []
    for line in blob[len(WEIGHTS_MAGIC):end].decode(errors="replace").splitlines():
        parts = line.split()
        try:
            if parts and parts[0] in fields and len(parts) == 2:
                fields[parts[0]] = parts[1] if parts[0] == "graph" else int(parts[1])
            elif parts and parts[0] == "tensor" and len(parts) == 5 and parts[2] == "float32":
                shape = () if parts[3] == "-" else tuple(int(d) for d in parts[3].split(","))
                specs.append((parts[1], shape, int(parts[4])))
            else:
                raise ValueError(line)
        except ValueError:
            raise ConfigError(f"model weights: unexpected header line {line!r}") from None
    if None in fields.values():
        raise ConfigError("model weights: the header lacks graph, n_in or n_out")
    offset, tensors = end + len(b"\ndata\n"), {}
    for name, shape, nbytes in specs:
        if nbytes != 4 * int(np.prod(shape, dtype=np.int64)) or offset + nbytes > len(blob):
            raise ConfigError(f"model weights: tensor {name} {shape} does not match its size")
        tensors[name] = np.frombuffer(blob, dtype="<f4", count=nbytes // 4,
                                      offset=offset).reshape(shape)
        offset += nbytes
    if offset != len(blob):
        raise ConfigError(f"model weights: {len(blob) - offset} bytes after the last tensor")
    return Weights(fields["graph"], int(fields["n_in"]), int(fields["n_out"]), tensors)


# --- packages -------------------------------------------------------------------------------------


def compile_package(program_blob: bytes, n_in: int, n_out: int, device: str = "cpu") -> bytes:
    """The AOTInductor package (.pt2 bytes) of a saved torch.export program for ``device``,
    with every weight swappable and our metadata (graph, torch version, widths) inside."""
    torch = _torch()
    from torch.export.passes import move_to_device_pass

    kind = device_kind(device)
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"compiling for {device}: this torch has no CUDA device (CUDA packages "
                          "are compiled on a machine with the CUDA toolkit and a GPU)")
    program = load_program(program_blob)
    graph = graph_id(program, n_in, n_out)
    if kind == "cuda":
        program = move_to_device_pass(program, torch.device(device))
    metadata = {f"{METADATA_PREFIX}graph": graph, f"{METADATA_PREFIX}torch": torch_version(),
                f"{METADATA_PREFIX}n_in": str(int(n_in)), f"{METADATA_PREFIX}n_out": str(int(n_out))}
    with tempfile.TemporaryDirectory(prefix="nekrs_ml-aoti-") as scratch, quiet_torch():
        path = os.path.join(scratch, "model.pt2")
        torch._inductor.aoti_compile_and_package(
            program, package_path=path,
            inductor_configs={"always_keep_tensor_constants": True,
                              "aot_inductor.metadata": metadata})
        with open(path, "rb") as package:
            return package.read()


def version_graph(client: Client, ns: str, name: str, version: int) -> Weights:
    """The weights (and so the graph) of a published version; KeyNotFoundError when the version
    has no in-process form (a TorchScript version)."""
    blob = client.get_string(keys.model_weights(ns, name, version))
    if blob is None:
        raise KeyNotFoundError(
            f"model {name!r} v{version} has no weights for in-process inference (only torch.export "
            "versions have them; deploy a torch.export program, e.g. the trainer's NAME.pt)")
    return parse_weights(blob)


def package_exists(client: Client, ns: str, name: str, graph: str, device: str) -> bool:
    key = keys.model_package(ns, name, graph, device_kind(device), torch_version())
    return client.exists(key)


def ensure_package(client: Client, ns: str, name: str, version: Optional[int] = None,
                   device: str = "cpu", log=None) -> Tuple[str, bool]:
    """Compiles and stores the package of ``version``'s graph (default: the current version)
    unless it exists; returns (graph id, compiled now)."""
    if version is None:
        version = registry.latest_version(client, ns, name)
        if version is None:
            raise KeyNotFoundError(f"model {name!r} has no published version in namespace {ns!r}")
    weights = version_graph(client, ns, name, int(version))
    if package_exists(client, ns, name, weights.graph, device):
        return weights.graph, False
    blob, meta = registry.load(client, ns, name, int(version))
    if meta.get("format") != "export":
        raise ConfigError(f"model {name!r} v{version} is {meta.get('format')}: only torch.export "
                          "versions compile to AOTInductor packages")
    if log:
        log(f"compiling {name} v{version} (graph {weights.graph}) for {device_kind(device)} "
            f"with torch {torch_version()}")
    kind, release = device_kind(device), torch_version()
    state = keys.package_state(ns, name, weights.graph, kind, release)
    # what in-process users wait for, and why a compilation ended without a package
    client.set_string(state, json.dumps({"state": "compiling", "started": time.time(),
                                         "host": socket.gethostname(), "pid": os.getpid(),
                                         "version": int(version)}))
    try:
        package = compile_package(blob, weights.n_in, weights.n_out, device)
        client.set_string(keys.model_package(ns, name, weights.graph, kind, release), package)
    except BaseException as exc:
        stopped = isinstance(exc, (KeyboardInterrupt, SystemExit))
        reason = (f"stopped ({type(exc).__name__})" if stopped
                  else f"{type(exc).__name__}: {exc}".splitlines()[0][:500])
        try:
            client.set_string(state, json.dumps({"state": "stopped" if stopped else "failed",
                                                 "reason": reason, "at": time.time(),
                                                 "host": socket.gethostname()}))
        except NekrsMLError:
            pass  # the database is gone too: the original failure is what matters
        raise
    client.delete(state)
    return weights.graph, True


def packages(client: Client, ns: str, name: str) -> List[Dict[str, str]]:
    """The stored packages of model ``name``: [{"graph", "device", "torch"}], sorted."""
    prefix = keys.model_package(ns, name, "", "", "")[:-2]  # "...:package:"
    pattern = registry.glob_escape(prefix) + "*"
    found = []
    for key in client.redis.scan_iter(match=pattern, count=1000):
        text = key.decode() if isinstance(key, bytes) else key
        graph, device, release = text[len(prefix):].split(":", 2)
        found.append({"graph": graph, "device": device, "torch": release})
    return sorted(found, key=lambda p: (p["graph"], p["device"], p["torch"]))

"""Model evaluation by the frameworks other than Torch: ONNX Runtime (``onnx``), TensorFlow (a
SavedModel, ``tf-savedmodel``, or a frozen graph, ``tf-graph``) and TensorFlow Lite (``tflite``).

Each backend is built from the bytes the registry (or a RedisAI model record) holds and answers
``run(inputs) -> outputs`` (lists of numpy arrays, in the model's input and output order) and
``evaluate(batch) -> array`` for the registry's one-input, one-output models. They run on the
worker's device where the framework's GPU build is installed (onnxruntime-gpu's CUDA provider,
TensorFlow with a GPU), else on the CPU, and say so in ``placement``.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
import tempfile
import threading
from typing import List, Optional, Sequence

import numpy as np

from ..errors import ConfigError, NekrsMLError

# The registry's formats and the backend that evaluates each.
BACKEND_OF_FORMAT = {"export": "torch", "torchscript": "torch", "onnx": "onnx",
                     "tf-savedmodel": "tf", "tf-graph": "tf", "tflite": "tflite"}
# The packages each backend needs, as the error that names a missing one says.
PACKAGES = {"onnx": "onnxruntime", "tf": "tensorflow-cpu", "tflite": "ai-edge-litert"}
INSTALL_HINT = "pip install 'nekrs_ml[backends]'"


def backend_of(meta: dict) -> str:
    """"torch", "onnx", "tf" or "tflite" for a registry record (older records: torch)."""
    return meta.get("backend") or BACKEND_OF_FORMAT.get(meta.get("format", "torchscript"), "torch")


def _missing(backend: str, what: str) -> ConfigError:
    return ConfigError(f"{what} needs {PACKAGES[backend]}, which is not installed here; install it "
                       f"({INSTALL_HINT}) where the model workers and `nekrs-ml deploy` run")


def _cuda_index(device: str) -> Optional[int]:
    """N of "cuda:N" (0 for "cuda"); None for the CPU."""
    text = str(device)
    if not text.startswith("cuda"):
        return None
    return int(text.split(":", 1)[1]) if ":" in text else 0


class Backend:
    """A model of one of the non-Torch frameworks, loaded."""

    backend = ""
    input_names: List[str]
    output_names: List[str]
    input_width: Optional[int] = None  # features per point of the first input, where fixed
    placement = "cpu"                  # where it runs, and why there when not on the asked device

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        raise NotImplementedError

    def _check_count(self, inputs: Sequence[np.ndarray]) -> None:
        if len(inputs) != len(self.input_names):
            raise ValueError(f"the {self.backend} model takes {len(self.input_names)} input(s) "
                             f"({', '.join(self.input_names)}), got {len(inputs)}")

    def evaluate(self, batch: np.ndarray) -> np.ndarray:
        """The one output of a one-input model for ``batch`` [points, inputs]."""
        outputs = self.run([batch])
        if len(outputs) != 1:
            raise NekrsMLError(f"the {self.backend} model returned {len(outputs)} outputs; a "
                               "model must return one tensor [points, outputs]")
        return outputs[0]

    def evaluate_rows(self, arrays: List[np.ndarray], dtype: np.dtype) -> np.ndarray:
        """One forward pass over the requests' rows, checked as the Torch path checks them."""
        batch = arrays[0] if len(arrays) == 1 else np.concatenate(arrays)
        result = np.asarray(self.evaluate(batch))
        if result.ndim != 2 or result.shape[0] != batch.shape[0]:
            raise NekrsMLError(f"the model returned shape {tuple(result.shape)} for inputs "
                               f"{tuple(batch.shape)}; it must return [points, outputs]")
        return result.astype(dtype, copy=False)


# --- ONNX Runtime ------------------------------------------------------------------------------
class OnnxBackend(Backend):
    backend = "onnx"

    def __init__(self, blob: bytes, device: str = "cpu", threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise _missing("onnx", "an ONNX model") from None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        options.log_severity_level = 3  # errors only: its warnings would fill the worker's log
        providers: list = ["CPUExecutionProvider"]
        index = _cuda_index(device)
        if index is not None:
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
                self.placement = f"cuda:{index}"
            else:
                self.placement = "cpu (this onnxruntime has no CUDA provider: install onnxruntime-gpu)"
        self.session = ort.InferenceSession(bytes(blob), sess_options=options, providers=providers)
        if index is not None and "CUDAExecutionProvider" not in self.session.get_providers():
            self.placement = "cpu (onnxruntime could not start its CUDA provider)"
        inputs = self.session.get_inputs()
        self.input_names = [i.name for i in inputs]
        self.output_names = [o.name for o in self.session.get_outputs()]
        shape = inputs[0].shape if inputs else []
        if len(shape) == 2 and isinstance(shape[1], int):
            self.input_width = shape[1]

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        self._check_count(inputs)
        feed = {name: np.ascontiguousarray(array) for name, array in zip(self.input_names, inputs)}
        return list(self.session.run(None, feed))


# --- TensorFlow Lite ---------------------------------------------------------------------------
def _tflite_interpreter():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter
    except ImportError:
        pass
    try:
        tf = _tensorflow()
    except ConfigError:
        raise _missing("tflite", "a TensorFlow Lite model") from None
    return tf.lite.Interpreter


class TFLiteBackend(Backend):
    backend = "tflite"

    def __init__(self, blob: bytes, device: str = "cpu", threads: int = 0):
        Interpreter = _tflite_interpreter()
        self.blob = bytes(blob)  # the interpreter reads the model from this memory
        self.interpreter = Interpreter(model_content=self.blob, num_threads=int(threads) or None)
        self.interpreter.allocate_tensors()
        self.inputs = self.interpreter.get_input_details()
        self.outputs = self.interpreter.get_output_details()
        self.input_names = [d["name"] for d in self.inputs]
        self.output_names = [d["name"] for d in self.outputs]
        self.shapes = [tuple(int(n) for n in d["shape"]) for d in self.inputs]
        signature = self.inputs[0].get("shape_signature", self.inputs[0]["shape"]) if self.inputs else []
        if len(signature) == 2 and int(signature[1]) > 0:
            self.input_width = int(signature[1])
        if _cuda_index(device) is not None:
            self.placement = "cpu (TensorFlow Lite has no CUDA delegate in Python)"
        self.lock = threading.Lock()  # one interpreter, one evaluation at a time

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        self._check_count(inputs)
        interpreter = self.interpreter
        with self.lock:
            shapes = [tuple(array.shape) for array in inputs]
            if shapes != self.shapes[:len(shapes)]:  # a batch of another size: resize, once
                for detail, shape in zip(self.inputs, shapes):
                    interpreter.resize_tensor_input(detail["index"], list(shape), strict=False)
                # remembered only once allocated: a failed resize is tried again next call
                self.shapes[:len(shapes)] = [None] * len(shapes)
                interpreter.allocate_tensors()
                self.shapes[:len(shapes)] = shapes
            for detail, array in zip(self.inputs, inputs):
                if array.dtype != detail["dtype"]:
                    raise ValueError(f"input {detail['name']!r} takes {np.dtype(detail['dtype'])}, "
                                     f"got {array.dtype}")
                interpreter.set_tensor(detail["index"], np.ascontiguousarray(array))
            interpreter.invoke()
            return [interpreter.get_tensor(d["index"]).copy() for d in self.outputs]


# --- TensorFlow --------------------------------------------------------------------------------
def _tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # its start-up notes are not errors
    try:
        import tensorflow as tf
    except ImportError:
        raise _missing("tf", "a TensorFlow model") from None
    return tf


def _tf_device(tf, device: str):
    """(TF device name, placement)."""
    index = _cuda_index(device)
    if index is None:
        return "/CPU:0", "cpu"
    if len(tf.config.list_physical_devices("GPU")) > index:
        return f"/GPU:{index}", f"cuda:{index}"
    return "/CPU:0", "cpu (this TensorFlow sees no GPU)"


def _limit_tf_threads(tf, threads: int) -> None:
    if threads:
        try:  # only possible before TensorFlow's first operation in this process
            tf.config.threading.set_intra_op_parallelism_threads(int(threads))
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:
            pass


def unpack_savedmodel(blob: bytes, into: str) -> str:
    """Extracts a SavedModel archive (``pack_savedmodel``) into ``into``; returns the directory.
    Only plain files and folders under it are extracted."""
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as archive:
        for member in archive.getmembers():
            if not (member.isfile() or member.isdir()) or member.name.startswith(("/", "..")) \
                    or ".." in member.name.split("/"):
                raise ConfigError(f"SavedModel archive: refusing the entry {member.name!r}")
        try:
            archive.extractall(into, filter="data")
        except TypeError:  # a Python without extraction filters: the entries were checked above
            archive.extractall(into)
    return into


def pack_savedmodel(directory) -> bytes:
    """A SavedModel directory as one uncompressed tar archive, the same bytes for the same
    files (sorted names, no times or owners), so its sha256 names the model."""
    from pathlib import Path

    root = Path(directory)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:", format=tarfile.PAX_FORMAT) as archive:
        for path in sorted(root.rglob("*")):
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                raise ConfigError(f"SavedModel {root}: {path} is neither a file nor a folder")
            info = tarfile.TarInfo(path.relative_to(root).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                archive.addfile(info)
            else:
                data = path.read_bytes()
                info.size, info.mode = len(data), 0o644
                archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


class TFSavedModelBackend(Backend):
    backend = "tf"
    SIGNATURE = "serving_default"

    def __init__(self, blob: bytes, device: str = "cpu", threads: int = 0):
        tf = _tensorflow()
        _limit_tf_threads(tf, threads)
        self.tf = tf
        self.device, self.placement = _tf_device(tf, device)
        with tempfile.TemporaryDirectory(prefix="nkml-savedmodel-") as tmp:
            with tf.device(self.device):
                loaded = tf.saved_model.load(unpack_savedmodel(blob, tmp))
        self.loaded = loaded  # the signature's variables live as long as this object
        if self.SIGNATURE not in loaded.signatures:
            raise ConfigError(f"the SavedModel has no {self.SIGNATURE!r} signature (it has: "
                              f"{', '.join(loaded.signatures) or 'none'}); save it with "
                              "model.export(DIR) (Keras) or tf.saved_model.save with signatures")
        self.function = loaded.signatures[self.SIGNATURE]
        specs = self.function.structured_input_signature[1]
        self.input_names = list(specs)
        self.output_names = sorted(self.function.structured_outputs)
        first = specs[self.input_names[0]].shape if self.input_names else None
        if first is not None and first.rank == 2 and first[1] is not None:
            self.input_width = int(first[1])

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        self._check_count(inputs)
        tf = self.tf
        with tf.device(self.device):
            result = self.function(**{name: tf.constant(array)
                                      for name, array in zip(self.input_names, inputs)})
        return [result[name].numpy() for name in self.output_names]


def _tensor_name(name: str) -> str:
    """RedisAI takes TF operation names ("x"); a graph's tensors are "x:0"."""
    return name if re.search(r":\d+$", name) else name + ":0"


def graph_names(blob: bytes):
    """(inputs, outputs) of a frozen graph guessed as RedisAI users name them: its placeholders,
    and the operations whose results no other operation takes."""
    tf = _tensorflow()
    graph_def = _parse_graph(tf, blob)
    used = {inp.split(":")[0].lstrip("^") for node in graph_def.node for inp in node.input}
    inputs = [n.name for n in graph_def.node if n.op == "Placeholder"]
    outputs = [n.name for n in graph_def.node if n.name not in used
               and n.op not in ("Placeholder", "Const", "NoOp", "Assert")]
    return inputs, outputs


def _parse_graph(tf, blob: bytes):
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(bytes(blob))
    except Exception as exc:
        raise ConfigError(f"not a TensorFlow GraphDef ({type(exc).__name__}: {exc})") from None
    if not graph_def.node:
        raise ConfigError("not a TensorFlow frozen graph (a GraphDef without operations)")
    return graph_def


class TFGraphBackend(Backend):
    """A frozen graph (a GraphDef with its weights as constants), as RedisAI's TF backend runs
    it: the inputs fed to and the outputs read from the named operations."""

    backend = "tf"

    def __init__(self, blob: bytes, inputs: Sequence[str], outputs: Sequence[str],
                 device: str = "cpu", threads: int = 0):
        tf = _tensorflow()
        _limit_tf_threads(tf, threads)
        self.tf = tf
        self.device, self.placement = _tf_device(tf, device)
        graph_def = _parse_graph(tf, blob)
        if not inputs or not outputs:
            raise ConfigError("a TensorFlow graph needs the names of its inputs and outputs")
        self.input_names, self.output_names = list(inputs), list(outputs)

        def imported():
            tf.compat.v1.import_graph_def(graph_def, name="")

        with tf.device(self.device):
            wrapped = tf.compat.v1.wrap_function(imported, [])
        graph = wrapped.graph
        try:
            feeds = [graph.get_tensor_by_name(_tensor_name(n)) for n in self.input_names]
            fetches = [graph.get_tensor_by_name(_tensor_name(n)) for n in self.output_names]
        except (KeyError, ValueError) as exc:
            ops = [op.name for op in graph.get_operations()]
            raise ConfigError(f"the TensorFlow graph has no such tensor ({exc}); its operations "
                              f"include {', '.join(ops[:12])}") from None
        self.function = wrapped.prune(feeds, fetches)
        shape = feeds[0].shape
        if shape.rank == 2 and shape[1] is not None:
            self.input_width = int(shape[1])

    def run(self, inputs: Sequence[np.ndarray]) -> List[np.ndarray]:
        self._check_count(inputs)
        tf = self.tf
        with tf.device(self.device):
            result = self.function(*[tf.constant(array) for array in inputs])
        return [tensor.numpy() for tensor in result]


# --- building one ------------------------------------------------------------------------------
def load(blob: bytes, meta: dict, device: str = "cpu", threads: int = 0) -> Backend:
    """The backend of a registry version whose format is not Torch's."""
    fmt = meta.get("format")
    if fmt == "onnx":
        return OnnxBackend(blob, device, threads)
    if fmt == "tflite":
        return TFLiteBackend(blob, device, threads)
    if fmt == "tf-savedmodel":
        return TFSavedModelBackend(blob, device, threads)
    if fmt == "tf-graph":
        return TFGraphBackend(blob, meta.get("inputs") or [], meta.get("outputs") or [],
                              device, threads)
    raise ConfigError(f"model format {fmt!r} is not one of the backends' "
                      f"({', '.join(f for f, b in BACKEND_OF_FORMAT.items() if b != 'torch')})")


REDISAI_BACKENDS = ("TF", "TFLITE", "ONNX")


def for_redisai(backend: str, blob: bytes, inputs: Sequence[str], outputs: Sequence[str],
                device: str = "cpu", threads: int = 0) -> Backend:
    """A model stored by AI.MODELSTORE with backend TF (a frozen graph with INPUTS and OUTPUTS),
    TFLITE or ONNX."""
    name = backend.upper()
    if name == "ONNX":
        return OnnxBackend(blob, device, threads)
    if name == "TFLITE":
        return TFLiteBackend(blob, device, threads)
    if name == "TF":
        return TFGraphBackend(blob, inputs, outputs, device, threads)
    raise ConfigError(f"backend {backend!r}: the model workers run TORCH, "
                      f"{', '.join(REDISAI_BACKENDS)}")

"""A SmartRedis program as written for RedisAI, run by tests/integration/test_smartredis.py with SmartRedis
0.6.1 in its own virtual environment (numpy < 2, no nekrs_ml). It prints one JSON object.

    python smartredis_program.py SCENARIO ADDRESS CLUSTER WORKDIR
"""

import json
import sys
import time
from pathlib import Path

import numpy as np
from smartredis import Client, Dataset
from smartredis.error import RedisReplyError

DTYPES = ("float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16")

SCRIPT = """
def double(x):
    return 2.0 * x

def split(tensors: List[Tensor], keys: List[str], args: List[str]):
    x = tensors[0]
    return x[:, 0:1], x.sum(dim=1, keepdim=True)
"""


def scale_and_shift(a, b):  # set_function sends this function's source
    return a * 3.0 + b


def workflow(client: Client, workdir: Path) -> dict:
    out = {}
    rng = np.random.default_rng(7)
    # tensors of every dtype, round trip
    same = {}
    for name in DTYPES:
        if name.startswith("float"):
            array = rng.standard_normal((3, 4, 2)).astype(name)
        else:
            info = np.iinfo(name)
            array = rng.integers(info.min, info.max, size=(5, 3), dtype=name, endpoint=True)
        client.put_tensor(f"t_{name}", array)
        back = client.get_tensor(f"t_{name}")
        same[name] = bool(back.dtype == array.dtype and back.shape == array.shape
                          and np.array_equal(back, array))
    out["dtypes"] = same
    # a tensor written by nekrs_ml's client, and one for it to read
    theirs = client.get_tensor("from_nekrs_ml")
    out["from_nekrs_ml"] = theirs.tolist()
    client.put_tensor("from_smartredis", np.arange(6, dtype=np.float64).reshape(2, 3))
    # a TorchScript model
    x = np.load(workdir / "x.npy")
    client.set_model_from_file("mlp", str(workdir / "mlp.pt"), "TORCH", device="CPU")
    out["model_exists"] = bool(client.model_exists("mlp"))
    out["model_bytes_equal"] = bytes(client.get_model("mlp")) == (workdir / "mlp.pt").read_bytes()
    client.put_tensor("x", x)
    client.run_model("mlp", inputs=["x"], outputs=["y"])
    np.save(workdir / "y.npy", client.get_tensor("y"))
    # a model with two inputs and two outputs
    client.set_model_from_file("two", str(workdir / "two.pt"), "TORCH", device="CPU")
    client.put_tensor("a", x[:, :2].copy())
    client.put_tensor("b", x[:, 2:].copy())
    client.run_model("two", inputs=["a", "b"], outputs=["p", "q"])
    np.save(workdir / "p.npy", client.get_tensor("p"))
    np.save(workdir / "q.npy", client.get_tensor("q"))
    # scripts: source text, an entry point with the RedisAI 1.2 signature, a Python function
    client.set_script("scr", SCRIPT)
    out["script_source_equal"] = client.get_script("scr") == SCRIPT
    client.run_script("scr", "double", ["x"], ["x2"])
    out["double_ok"] = bool(np.allclose(client.get_tensor("x2"), 2.0 * x))
    client.run_script("scr", "split", ["x"], ["first", "total"])
    out["split_ok"] = bool(np.allclose(client.get_tensor("first"), x[:, 0:1])
                           and np.allclose(client.get_tensor("total"), x.sum(axis=1, keepdims=True)))
    client.set_function("fn", scale_and_shift)
    client.run_script("fn", "scale_and_shift", ["a", "a"], ["c"])
    out["function_ok"] = bool(np.allclose(client.get_tensor("c"), 4.0 * x[:, :2]))
    # polling
    out["poll_tensor_present"] = bool(client.poll_tensor("x", 10, 5))
    out["poll_tensor_absent"] = bool(client.poll_tensor("nothing_here", 10, 3))
    out["poll_key"] = bool(client.poll_key("x", 10, 5))
    # datasets
    dataset = Dataset("ds")
    dataset.add_tensor("field", x)
    dataset.add_meta_scalar("step", np.int64(42))
    dataset.add_meta_string("case", "channel")
    client.put_dataset(dataset)
    got = client.get_dataset("ds")
    out["dataset_ok"] = bool(np.array_equal(got.get_tensor("field"), x)
                             and int(got.get_meta_scalars("step")[0]) == 42
                             and got.get_meta_strings("case") == ["channel"])
    out["dataset_exists"] = bool(client.dataset_exists("ds"))
    # errors come back as errors
    try:
        client.run_model("no_such_model", inputs=["x"], outputs=["y"])
        out["missing_model_error"] = ""
    except RedisReplyError as exc:
        out["missing_model_error"] = str(exc)
    try:
        client.run_model("mlp", inputs=["t_int8"], outputs=["y"])  # a dtype the model refuses
        out["model_error"] = ""
    except RedisReplyError as exc:
        out["model_error"] = str(exc)
    client.delete_model("mlp")
    out["model_exists_after_delete"] = bool(client.model_exists("mlp"))
    client.delete_script("scr")
    return out


def run_and_time(client: Client, workdir: Path) -> dict:
    """One model execution that fails or succeeds; how long it took."""
    client.set_model_from_file("slow", str(workdir / "slow.pt"), "TORCH", device="CPU")
    client.put_tensor("sx", np.ones((4, 3), dtype=np.float32))
    (workdir / "ready").write_text("1")
    start = time.monotonic()
    try:
        client.run_model("slow", inputs=["sx"], outputs=["sy"])
        error = ""
    except RedisReplyError as exc:
        error = str(exc)
    return {"error": error, "seconds": time.monotonic() - start}


def one_model(client: Client, workdir: Path) -> dict:
    """The model of the workflow, once: stored, run, its outputs saved to y.npy."""
    client.set_model_from_file("mlp", str(workdir / "mlp.pt"), "TORCH", device="CPU")
    client.put_tensor("x", np.load(workdir / "x.npy"))
    client.run_model("mlp", inputs=["x"], outputs=["y"])
    np.save(workdir / "y.npy", client.get_tensor("y"))
    return {"ok": True}


def main() -> None:
    scenario, address, cluster, workdir = sys.argv[1:5]
    client = Client(cluster=cluster == "cluster", address=address)
    scenarios = {"workflow": workflow, "slow": run_and_time, "model": one_model}
    result = scenarios[scenario](client, Path(workdir))
    print(json.dumps(result))


if __name__ == "__main__":
    main()

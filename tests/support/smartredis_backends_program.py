"""A SmartRedis program as written for RedisAI that stores and runs an ONNX, a TF (frozen graph
with INPUTS/OUTPUTS) and a TFLite model; run by tests/integration/test_backends.py with SmartRedis 0.6.1 in
its own virtual environment. Prints one JSON object.

    python smartredis_backends_program.py ADDRESS CLUSTER WORKDIR BACKEND...
"""

import json
import sys
from pathlib import Path

import numpy as np
from smartredis import Client
from smartredis.error import RedisReplyError

FILES = {"ONNX": "model.onnx", "TF": "model.pb", "TFLITE": "model.tflite"}


def main() -> None:
    address, cluster, workdir = sys.argv[1:4]
    workdir = Path(workdir)
    client = Client(cluster=cluster == "cluster", address=address)
    client.put_tensor("x", np.load(workdir / "x.npy"))
    out = {}
    for backend in sys.argv[4:]:
        key = f"m_{backend.lower()}"
        names = dict(inputs=["x"], outputs=["y"]) if backend == "TF" else {}
        client.set_model_from_file(key, str(workdir / FILES[backend]), backend, device="CPU",
                                   **names)
        client.run_model(key, inputs=["x"], outputs=[f"y_{backend.lower()}"])
        np.save(workdir / f"y_{backend.lower()}.npy", client.get_tensor(f"y_{backend.lower()}"))
        out[backend] = bool(client.model_exists(key))
    if "TF" in sys.argv[4:]:
        try:  # a TF graph without INPUTS and OUTPUTS is refused, as RedisAI refuses it
            client.set_model_from_file("m_tf_bare", str(workdir / FILES["TF"]), "TF", device="CPU")
            out["tf_without_names"] = ""
        except RedisReplyError as exc:
            out["tf_without_names"] = str(exc)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

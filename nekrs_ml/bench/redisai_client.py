"""One rank of `bench inference`'s RedisAI path: a SmartRedis program's inference call.

Run by a Python that has `smartredis` (its own environment: SmartRedis 0.6 needs numpy < 2), not
by nekrs_ml's, so this file imports neither nekrs_ml nor torch:

    python redisai_client.py ADDRESS set-model KEY FILE
    python redisai_client.py ADDRESS measure RANK KEY N_IN N_OUT POINTS CALLS START_AT

`measure` does 5 warm-up calls, sleeps until START_AT (a time.time() shared by all ranks), then
times CALLS calls of put_tensor + run_model + get_tensor (each rank its own keys, as SmartRedis
programs name them) and prints {"seconds": [...], "wall": s} as one JSON line.
"""

import json
import sys


def main(argv):
    import numpy as np
    from smartredis import Client

    address, command = argv[0], argv[1]
    client = Client(address=address, cluster=False)
    if command == "set-model":
        key, path = argv[2], argv[3]
        client.set_model_from_file(key, path, "TORCH", "CPU")
        return
    rank, key = int(argv[2]), argv[3]
    n_in, n_out, points, calls = (int(v) for v in argv[4:8])
    start_at = float(argv[8])
    inputs = np.random.default_rng(rank).uniform(0.5, 1.5, (points, n_in)).astype(np.float32)
    in_key, out_key = f"bench_in_{rank}", f"bench_out_{rank}"

    def call():
        client.put_tensor(in_key, inputs)
        client.run_model(key, [in_key], [out_key])
        out = client.get_tensor(out_key)
        assert out.shape == (points, n_out), out.shape

    seconds, wall = _harness().time_calls(call, calls, start_at)
    print(json.dumps({"seconds": seconds, "wall": wall}), flush=True)


def _harness():
    """bench/harness.py, loaded by its path: this Python has no nekrs_ml to import it from."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "nekrs_ml_bench_harness", Path(__file__).with_name("harness.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":
    main(sys.argv[1:])

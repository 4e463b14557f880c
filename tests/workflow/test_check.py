"""`nekrs-ml check` on this machine: every row passes on the CPU (in-process and worker
predictions equal the bare forward, and the stand-in train+infer run applies its model), the
table is printed, and a device torch does not offer fails with the fix named."""

import json
import subprocess
import sys

from nekrs_ml.check import Row, table
from support.runs import our_processes


def check(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "nekrs_ml.cli", "check", *args],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def test_check_passes_on_this_machine_and_prints_its_table(tmp_path):
    done = check("--device", "cpu", "--json", "--keep", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {(row["check"], row["device"]): row for row in json.loads(done.stdout)["rows"]}
    expected = ["redis-server", "MPI launcher", "C++ compiler", "torch", "orchestrator"]
    expected += [(name, "cpu") for name in ("in-process library", "compile package", "bare forward",
                                            "in-process inference", "model worker",
                                            "train+infer run")]
    for name in expected:
        key = name if isinstance(name, tuple) else (name, "-")
        assert key in rows and rows[key]["ok"], rows.get(key)
    assert "predictions = forward" in rows[("in-process inference", "cpu")]["detail"]
    run = rows[("train+infer run", "cpu")]["values"]
    assert run["status"] == "ok" and run["applied_share"] > 0 and run["final_version"] >= 1
    assert "every check passed" in done.stderr
    assert not list(our_processes(run["run_dir"]))


def test_a_device_torch_does_not_offer_fails_with_the_fix():
    done = check("--device", "cuda:7", "--run-steps", "0", timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "torch" in done.stdout and "FAIL" in done.stdout
    assert "device(s) cuda:7 not offered by this torch" in done.stdout
    assert "fix: pip install torch" in done.stdout
    assert "1 check(s) failed: torch [-]" in done.stderr


def test_the_table_names_each_fix():
    text = table([Row("redis-server", detail="/usr/bin/redis-server 7.0.15", seconds=0.01),
                  Row("model worker", "cuda:0", ok=False, detail="the worker did not serve",
                      fix="see the worker log")])
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["check", "device", "result", "time"]
    assert "ok" in lines[1] and "FAIL" in lines[2] and lines[3].strip() == "fix: see the worker log"

"""The `nekrs-ml` process's exit: a Ctrl-C that arrives once the command is done (a second
Ctrl-C after an interrupted run) does not kill the process and lose its exit code."""

import os
import signal
import subprocess
import sys
import time

# The command is done when the marker line is printed; the atexit hook then holds the process
# in its exit, where the Ctrl-C lands.
PROGRAM = """
import atexit, sys, time
atexit.register(time.sleep, 3)
atexit.register(print, "exiting", flush=True)
sys.argv = ["nekrs-ml", "config", "--includes"]
from nekrs_ml.cli import entry
entry()
"""


def test_a_ctrl_c_while_the_process_exits_keeps_the_commands_exit_code():
    proc = subprocess.Popen([sys.executable, "-c", PROGRAM], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.strip() == "exiting":
                break
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, (proc.returncode, err)
    assert "KeyboardInterrupt" not in err, err

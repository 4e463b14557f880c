"""`python -m nekrs_ml.launch.srun_step srun ARGS...`: srun in a part's place, so that stopping
the part lets its tasks stop cleanly.

srun turns a SIGTERM or SIGHUP it receives into SIGKILL for every task of its step: a node agent
would get no time to write its host's counters and stop its servers. The launcher stops a part
with SIGTERM to the part's process group; this wrapper runs srun in a session of its own, with
`--disable-status`, and turns SIGTERM, SIGINT or SIGHUP into one SIGINT to srun, which srun
passes on to every task of the step (the parts stop on SIGINT as on SIGTERM). The tasks then
have Slurm's KillWait before srun kills them. When the wrapper dies, the kernel sends srun
SIGTERM (PR_SET_PDEATHSIG), so srun kills its tasks. The exit status is srun's (128 + N for a
signal N).
"""

import ctypes
import signal
import subprocess
import sys
from typing import List

PR_SET_PDEATHSIG = 1


def _term_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def main(argv: List[str]) -> int:
    if not argv:
        print("usage: python -m nekrs_ml.launch.srun_step srun [OPTIONS] PROGRAM...",
              file=sys.stderr)
        return 2
    srun = subprocess.Popen(argv, start_new_session=True, preexec_fn=_term_with_parent)
    forwarded = []

    def forward(signum, frame):
        if not forwarded and srun.poll() is None:  # a second SIGINT would make srun kill
            forwarded.append(signum)
            srun.send_signal(signal.SIGINT)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = srun.wait()
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

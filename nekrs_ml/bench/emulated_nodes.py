"""An emulated cluster for the multinode tests and `nekrs-ml bench scaling`: N Linux network
namespaces, each an emulated node with its own network stack (loopback included) and its own host
name, joined by a bridge on a /24 of the benchmarking range 198.18.0.0/15 that exists only inside
this test network.

- Node i is the namespace `<prefix>n<i>` with the address 198.18.<net>.<i> on its `eth0`; the
  bridge in the host namespace has .254 (mpiexec's own daemon reaches its remote daemons there).
- Every command on a node runs through `ip netns exec NODE unshare --uts`, with the node's name
  as host name; `ip netns exec` also gives it the node's /etc/netns/NODE/hosts, which names every
  node, so the nodes resolve each other by name.
- `rsh_agent` is an rsh stand-in for Open MPI (`plm_rsh_agent`) and MPICH's Hydra (`-launcher
  rsh -launcher-exec`): `AGENT [options] NODE COMMAND` runs COMMAND on NODE with a login's
  environment only, as ssh would. `node_file` lists the nodes, one per line, like PBS_NODEFILE.
- Every file system is shared, as on a cluster with a shared home. Unix sockets are file-system
  objects, so a rank could reach another node's socket here where it could not on a cluster.

stop() kills every process left in the namespaces and removes them, the bridge and the files,
also after a failed start. Creating namespaces needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN);
`why_unavailable()` says why they cannot be made here.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

NETWORK = "198.18"  # RFC 2544's benchmarking range: never routed anywhere
BRIDGE_HOST = 254

# The command starts with a login's environment, as over ssh: what the ranks need beyond it,
# the launcher must forward (Open MPI: -x).
RSH_AGENT = """#!/bin/sh
# rsh stand-in for mpiexec on the emulated cluster: AGENT [options] NODE COMMAND...
while [ "${1#-}" != "$1" ]; do shift; done
node=$1; shift
exec env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME="$HOME" \\
  USER="${USER:-root}" LOGNAME="${USER:-root}" SHELL=/bin/sh LANG=C.UTF-8 \\
  ip netns exec "$node" unshare --uts sh -c 'hostname "$0" && exec sh -c "$*"' "$node" "$@"
"""


def why_unavailable() -> Optional[str]:
    """None where namespaces can be made here, else the reason (for pytest.skip)."""
    if os.geteuid() != 0:
        return "the emulated cluster needs root (network namespaces)"
    for tool in ("ip", "unshare", "mpiexec"):
        if shutil.which(tool) is None:
            return f"the emulated cluster needs {tool}"
    name = f"nkprobe{secrets.token_hex(3)}"
    probe = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create a network namespace here: {probe.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


class EmulatedCluster:
    def __init__(self, nodes: int = 3):
        if not 1 <= nodes <= 200:
            raise ValueError("an emulated cluster has 1 to 200 nodes")
        tag = secrets.token_hex(2)
        self.prefix = f"nk{tag}"
        self.net = 1 + secrets.randbelow(250)
        self.bridge = f"{self.prefix}br"
        self.nodes = [f"{self.prefix}n{i}" for i in range(1, nodes + 1)]
        self.dir = Path(tempfile.mkdtemp(prefix=f"nkml-emu-{tag}-"))
        self.rsh_agent = self.dir / "rsh-agent"
        self.node_file = self.dir / "nodefile"
        self._made: List[str] = []  # namespaces made so far (teardown)

    # --- addresses ----------------------------------------------------------------------------
    @property
    def subnet(self) -> str:
        return f"{NETWORK}.{self.net}.0/24"

    def address(self, node: str) -> str:
        return f"{NETWORK}.{self.net}.{self.nodes.index(node) + 1}"

    # --- lifetime -----------------------------------------------------------------------------
    def start(self) -> "EmulatedCluster":
        try:
            self._ip("link", "add", self.bridge, "type", "bridge")
            self._ip("addr", "add", f"{NETWORK}.{self.net}.{BRIDGE_HOST}/24", "dev", self.bridge)
            self._ip("link", "set", self.bridge, "up")
            hosts = "127.0.0.1 localhost\n" + "".join(
                f"{self.address(node)} {node}\n" for node in self.nodes)
            for index, node in enumerate(self.nodes, start=1):
                self._ip("netns", "add", node)
                self._made.append(node)
                veth = f"{self.prefix}v{index}"
                self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", node)
                self._ip("link", "set", veth, "master", self.bridge, "up")
                self._ip("-n", node, "addr", "add", f"{self.address(node)}/24", "dev", "eth0")
                self._ip("-n", node, "link", "set", "eth0", "up")
                self._ip("-n", node, "link", "set", "lo", "up")
                etc = Path("/etc/netns", node)
                etc.mkdir(parents=True, exist_ok=True)
                (etc / "hosts").write_text(hosts)
            self.rsh_agent.write_text(RSH_AGENT)
            self.rsh_agent.chmod(0o755)
            self.node_file.write_text("".join(f"{node}\n" for node in self.nodes))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Kills what runs on the nodes, then removes the namespaces, bridge and files."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 5
            while pids and self.pids() and time.monotonic() < deadline:
                time.sleep(0.05)
        for node in self._made:
            subprocess.run(["ip", "netns", "del", node], capture_output=True)
            shutil.rmtree(Path("/etc/netns", node), ignore_errors=True)
        self._made = []
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    def pids(self) -> List[int]:
        found: List[int] = []
        for node in self._made:
            out = subprocess.run(["ip", "netns", "pids", node], capture_output=True, text=True)
            found += [int(p) for p in out.stdout.split()]
        return found

    def __enter__(self) -> "EmulatedCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- running things -----------------------------------------------------------------------
    def on_node(self, node: str, argv: Sequence[str]) -> List[str]:
        """argv that runs `argv` on `node` under its host name."""
        if node not in self.nodes:
            raise ValueError(f"{node} is not a node of this cluster ({', '.join(self.nodes)})")
        return ["ip", "netns", "exec", node, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', node, *argv]

    def run(self, node: str, argv: Sequence[str], timeout: float = 60,
            env: Optional[Dict[str, str]] = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.on_node(node, argv), capture_output=True, text=True,
                              timeout=timeout, env=env)

    def popen(self, node: str, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(self.on_node(node, argv), **kwargs)

    def mpi_env(self, base: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """Environment under which mpiexec (Open MPI) starts ranks on the nodes: the rsh agent,
        the test network for its daemons and the TCP transport, the node file as PBS's."""
        env = dict(os.environ if base is None else base)
        env.update({
            "OMPI_MCA_plm_rsh_agent": str(self.rsh_agent),
            "OMPI_MCA_oob_tcp_if_include": self.subnet,
            "OMPI_MCA_btl_tcp_if_include": self.subnet,
            "OMPI_MCA_btl": "self,vader,tcp",
            "OMPI_ALLOW_RUN_AS_ROOT": "1",
            "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "PBS_NODEFILE": str(self.node_file),
        })
        return env

    def _ip(self, *args: str) -> None:
        proc = subprocess.run(["ip", *args], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")

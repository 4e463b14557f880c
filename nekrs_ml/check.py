"""`nekrs-ml check`: qualifies a machine (a laptop, a new GPU node) in one command.

It finds what nekrs_ml needs (redis-server, an MPI launcher, the C++ compiler, torch and every
device torch offers), then on each device: loads the in-process library, compiles an AOTInductor
package of a wall model, evaluates it in-process and through a model worker beside the bare
torch forward (same predictions, times of each), and runs a short stand-in `train+infer` whose
solver must apply the model it trains. Every row says what passed, how long it took and, when
it failed, the fix. Nothing is left running: the servers, workers and runs it starts are its own.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

CASE = """[NEKRS_ML]
workflow = train+infer
solverRanks = 1
trainerRanks = 1
sampleInterval = 5
maxSnapshots = 40
whenFull = drop
modelName = wall_model
workers = 1
workerDevice = {device}
trainDevice = {device}
inferenceBackend = inprocess
inprocessDevice = {device}
deployModel = "{model_file}"
hiddenLayers = 16
batchSize = 256
stepsPerEpoch = 10
publishInterval = 2
patience = 1000
stopSolver = false

[REPRODUCER]
steps = {steps}
points = 500
stepCost = {step_cost}
reTau = 950
viscosity = 5.2631578947368424e-05
"""


@dataclass
class Row:
    check: str
    device: str = "-"
    ok: bool = True
    seconds: Optional[float] = None
    detail: str = ""
    fix: str = ""
    values: Dict = field(default_factory=dict)


class Checker:
    """Runs the checks in order; a failed check is a row, never an exception."""

    def __init__(self, devices: Optional[List[str]], run_steps: int, work_dir: Path,
                 echo: Callable[[Row], None]):
        self.requested_devices, self.run_steps, self.work_dir = devices, run_steps, work_dir
        self.rows: List[Row] = []
        self.echo = echo

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        self.echo(row)
        return row

    def attempt(self, name: str, device: str, body: Callable[[Row], None], fix: str) -> Row:
        row = Row(name, device)
        start = time.monotonic()
        try:
            body(row)
        except Exception as exc:  # the row says what failed; the next check still runs
            row.ok = False
            row.detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:400]
            row.fix = row.fix or fix
        row.seconds = time.monotonic() - start
        return self.add(row)

    # --- the machine ---------------------------------------------------------------------
    def tools(self) -> List[str]:
        self.attempt("redis-server", "-", self._redis,
                     "install redis-server >= 6 (Debian: apt-get install redis-server)")
        self.attempt("MPI launcher", "-", self._mpi,
                     "install an MPI (Debian: apt-get install openmpi-bin) or set "
                     "NEKRS_ML_MPIEXEC to your launcher (srun, mpiexec)")
        self.attempt("C++ compiler", "-", self._compiler,
                     "install a C++17 compiler (Debian: apt-get install g++) or set CXX")
        devices: List[str] = []

        def torch_devices(row: Row) -> None:
            import torch

            found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            other = _other_accelerators(torch)
            row.detail = (f"torch {torch.__version__}; devices: {', '.join(found)}"
                          + (f"; also {', '.join(other)} (not used by nekrs_ml yet)" if other else ""))
            row.values = {"torch": torch.__version__, "devices": found, "other": other}
            wanted = self.requested_devices or found
            missing = [d for d in wanted if d not in found]
            if missing:
                raise RuntimeError(f"device(s) {', '.join(missing)} not offered by this torch")
            devices.extend(wanted)

        self.attempt("torch", "-", torch_devices,
                     "pip install torch==2.13.0 (CPU) or the CUDA build of your site; "
                     "--device names one of the devices torch offers")
        return devices

    def _redis(self, row: Row) -> None:
        path = shutil.which("redis-server")
        if not path:
            raise FileNotFoundError("redis-server is not on PATH")
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
        version = re.search(r"v=(\d+\.\d+\.\d+)", out)
        row.detail = f"{path} {version.group(1) if version else out.strip()}"
        if version and int(version.group(1).split(".")[0]) < 6:
            raise RuntimeError(f"{row.detail}: version 6 or newer is needed")

    def _mpi(self, row: Row) -> None:
        from .errors import ConfigError
        from .launch.mpi import MpiLauncher

        try:
            launcher = MpiLauncher.from_environment()
        except ConfigError as exc:  # its message names the fix
            row.fix = str(exc)
            raise
        row.detail = (f"{shutil.which(launcher.words[0])} "
                      f"({launcher.flavor or 'kind unknown: one host only'})")

    def _compiler(self, row: Row) -> None:
        compiler = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
        if not compiler:
            raise FileNotFoundError("no C++ compiler: CXX is unset and neither c++ nor g++ is on PATH")
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout.splitlines()[:1]
        row.detail = f"{compiler}: {version[0] if version else '?'}"
        static = _links_runtime_statically(compiler, self.work_dir)
        row.values = {"compiler": compiler, "static_cxx_runtime": static}
        if static:
            row.detail += ("; links the C++ runtime statically (supported: nekrs_ml keeps it "
                           "inside its libraries; a NekRS udf must use the same compiler)")

    # --- one device --------------------------------------------------------------------------
    def device(self, device: str, server) -> None:
        from . import _core
        from .models import aot, registry
        from .client import Client
        from .train.model import Exporter, build_mlp, deployable, program_bytes
        import torch

        ns = f"check{uuid.uuid4().hex[:6]}"
        args = dict(addresses=server.info["addresses"], password=server.password, cluster=False)
        torch.manual_seed(0)
        model = deployable(build_mlp(3, [64, 64], 2), np.zeros(3), np.full(3, 0.5),
                           np.array([1e-3, 0.0]), np.array([2e-3, 1e-4]))
        program = Exporter().program_for(model)
        rows = 25000
        x = np.random.default_rng(0).uniform(-2, 2, (rows, 3)).astype(np.float32)
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        timings: Dict[str, float] = {}
        state: Dict = {}

        def library(row: Row) -> None:
            row.detail = _core.inprocess_library_path()
            if not Path(row.detail).is_file():
                raise FileNotFoundError(f"{row.detail} does not exist")
            native = _core.Client(**args)
            state["native"] = native
            state["backend"] = _core.InprocessBackend(native, ns, device=device)
            row.detail += f" (torch {state['backend'].torch_version})"

        if not self.attempt("in-process library", device, library,
                            "reinstall nekrs_ml after torch (pip install --no-build-isolation .), "
                            "with the torch of this Python").ok:
            return

        def compile_package(row: Row) -> None:
            with Client(**args) as client:
                registry.publish(client, ns, "m", program_bytes(program),
                                 {"n_in": 3, "n_out": 2, "format": "export"},
                                 weights_blob=aot.weights_blob(program, 3, 2))
                graph, _ = aot.ensure_package(client, ns, "m", device=device)
            row.detail = f"graph {graph}, torch {aot.torch_version()}"

        if not self.attempt("compile package", device, compile_package,
                            "run `nekrs-ml compile --model NAME --device DEVICE` by hand to see the "
                            "compiler's output (AOTInductor needs a working C++ compiler, and for "
                            "CUDA the CUDA toolkit)").ok:
            return

        def forward(row: Row) -> None:
            module = model.to(device)
            tensor = torch.from_numpy(x)

            def call():
                with torch.inference_mode():
                    module(tensor.to(device)).cpu()

            timings["forward"] = _p50(call)
            row.detail = f"p50 {timings['forward'] * 1e6:.0f} us for {rows} points"

        self.attempt("bare forward", device, forward, "the torch installation fails on this device")

        def inprocess(row: Row) -> None:
            backend = state["backend"]
            out = np.empty((rows, 2), np.float32)
            reply = backend.run("m", x, out)
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-7)
            timings["inprocess"] = _p50(lambda: backend.run("m", x, out))
            row.detail = (f"v{reply['version']}, predictions = forward; p50 "
                          f"{timings['inprocess'] * 1e6:.0f} us"
                          + _ratio(timings, "inprocess", "forward"))

        self.attempt("in-process inference", device, inprocess,
                     "rebuild nekrs_ml with the compiler torch was built with, or use "
                     "inferenceBackend = worker; the message above names the failing step")

        def worker(row: Row) -> None:
            log = self.work_dir / f"worker-{device.replace(':', '_')}.log"
            env = {**os.environ, **server.info["env"], "NEKRS_ML_NAMESPACE": ns}
            with open(log, "wb") as output:
                process = subprocess.Popen(
                    [sys.executable, "-m", "nekrs_ml.cli", "serve", "--device", device,
                     "--threads", "1"], env=env, stdout=output, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL)
            try:
                client = _core.InferenceClient(state["native"], ns, 0, 1, 120.0)
                out = np.empty((rows, 2), np.float32)
                deadline = time.monotonic() + 120
                while True:
                    try:
                        client.run("m", x, out)
                        break
                    except Exception:
                        if process.poll() is not None or time.monotonic() > deadline:
                            raise RuntimeError(f"the worker did not serve (see {log}): "
                                               + _tail(log)) from None
                        time.sleep(0.2)
                np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-7)
                timings["worker"] = _p50(lambda: client.run("m", x, out))
                row.detail = (f"predictions = forward; p50 {timings['worker'] * 1e6:.0f} us"
                              + _ratio(timings, "worker", "forward"))
            finally:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()

        self.attempt("model worker", device, worker,
                     "see the worker log named above; `nekrs-ml serve --device DEVICE` alone shows it")

        if self.run_steps > 0:
            self.attempt("train+infer run", device, lambda row: self._run(row, device),
                         "see report.json and the logs in the run directory named above")

    def _run(self, row: Row, device: str) -> None:
        run_dir = self.work_dir / f"run-{device.replace(':', '_')}"
        run_dir.mkdir(mode=0o700)
        # The run starts from a deployed model of the trainer's architecture (its package is
        # compiled before the solver starts); the trainer's versions then reach the solver as
        # weight swaps, or through a background compilation where their graph differs.
        model_file = run_dir / "seed_model.pt2"
        model_file.write_bytes(_seed_model_bytes())
        case = run_dir / "check.par"
        case.write_text(CASE.format(device=device, steps=self.run_steps, model_file=model_file,
                                    step_cost=RUN_SECONDS / self.run_steps))
        process = subprocess.run(
            [sys.executable, "-m", "nekrs_ml.cli", "run", str(case), "--solver", "reproducer",
             "--run-dir", str(run_dir)], capture_output=True, text=True, timeout=900,
            stdin=subprocess.DEVNULL)
        try:
            report = json.loads((run_dir / "report.json").read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"no report.json (exit {process.returncode}): "
                               + " ".join(process.stdout.splitlines()[-3:])) from None
        inference = report.get("inference") or {}
        share = (inference.get("predicted_calls") or 0) / max(
            1, (inference.get("calls") or 0) + (inference.get("waiting_calls") or 0))
        row.values = {"status": report.get("status"), "applied_share": share,
                      "final_version": inference.get("final_version"), "run_dir": str(run_dir)}
        versions = inference.get("versions") or []
        used = (f"v{versions[0]}" if len(versions) == 1 else
                f"{len(versions)} versions, v{versions[0]} to v{versions[-1]}") if versions else "no model"
        row.detail = (f"{report.get('status')}: {used} applied on {share:.0%} of the "
                      f"{self.run_steps} steps (v1 deployed, the later ones trained)")
        if report.get("status") != "ok" or process.returncode != 0:
            raise RuntimeError(f"{row.detail}; {run_dir}: {report.get('message') or ''}".strip())
        if not versions or max(versions) < 2:
            package = (inference.get("package") or {}).get("reason") or ""
            raise RuntimeError(f"{row.detail}; {run_dir}: the solver never applied a version the "
                               f"trainer published {package}".strip())


RUN_SECONDS = 45.0  # the stand-in solver's time in the check run: the trainer publishes before


def _seed_model_bytes() -> bytes:
    """A torch.export program of the check run's architecture (3 -> 16 -> 2, normalised)."""
    import torch

    from .train.model import Exporter, build_mlp, deployable, program_bytes

    torch.manual_seed(1)
    model = deployable(build_mlp(3, [16], 2), np.zeros(3), np.full(3, 0.5),
                       np.array([1e-3, 0.0]), np.array([2e-3, 1e-4]))
    return program_bytes(Exporter().program_for(model))


def _other_accelerators(torch) -> List[str]:
    """Accelerators torch reports beside CUDA (Intel XPU, Apple MPS): named in the table."""
    found = []
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and getattr(xpu, "is_available", lambda: False)():
        found += [f"xpu:{i}" for i in range(xpu.device_count())]
    mps = getattr(getattr(torch, "backends", None), "mps", None)
    if mps is not None and getattr(mps, "is_available", lambda: False)():
        found.append("mps")
    return found


def _links_runtime_statically(compiler: str, work_dir: Path) -> Optional[bool]:
    """Whether `compiler` links the C++ runtime statically into a shared library (no
    libstdc++.so / libc++.so among what it needs); None when that cannot be told."""
    source, library = work_dir / "probe.cpp", work_dir / "libprobe.so"
    source.write_text("#include <sstream>\nint probe(int c) { std::stringstream s; s << c; "
                      "return (int)s.str().size(); }\n")
    built = subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)],
                           capture_output=True, timeout=120)
    if built.returncode != 0 or not library.exists():
        return None
    data = library.read_bytes()
    return b"libstdc++.so" not in data and b"libc++.so" not in data


def _p50(call: Callable[[], object], repeats: int = 30) -> float:
    call()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _ratio(timings: Dict[str, float], path: str, baseline: str) -> str:
    if baseline not in timings:
        return ""
    return f" ({timings[path] / timings[baseline]:.2f} x the bare forward)"


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_checks(devices: Optional[List[str]] = None, run_steps: int = 200,
               echo: Callable[[Row], None] = lambda row: None,
               keep: Optional[Path] = None) -> List[Row]:
    """Every check, in order; the rows (failed ones say the fix)."""
    from .orchestrator import Orchestrator

    work = Path(tempfile.mkdtemp(prefix="nekrs_ml-check-", dir=keep))
    checker = Checker(devices, run_steps, work, echo)
    found = checker.tools()
    if not all(row.ok for row in checker.rows[:1]):  # no redis-server: nothing else can run
        return checker.rows
    server = None

    def start(row: Row) -> None:
        nonlocal server
        server = _Server(Orchestrator(str(work / "db"), mode="single", transport="tcp",
                                      maxmemory="1gb"))
        row.detail = ", ".join(server.info["addresses"])

    if checker.attempt("orchestrator", "-", start, "see the server log under the check's "
                       f"directory {work / 'db'}").ok:
        try:
            for device in found:
                checker.device(device, server)
        finally:
            server.stop()
    if keep is None and all(row.ok for row in checker.rows):
        shutil.rmtree(work, ignore_errors=True)
    return checker.rows


class _Server:
    def __init__(self, orchestrator):
        self.orchestrator = orchestrator
        self.info = orchestrator.start()
        self.password = orchestrator.password

    def stop(self) -> None:
        self.orchestrator.stop()


def table(rows: List[Row]) -> str:
    """The rows as a plain-text table (check, device, result, seconds, detail)."""
    lines = [f"{'check':22} {'device':8} {'result':6} {'time':>8}  detail"]
    for row in rows:
        seconds = f"{row.seconds:.1f} s" if row.seconds is not None else ""
        lines.append(f"{row.check:22} {row.device:8} {'ok' if row.ok else 'FAIL':6} "
                     f"{seconds:>8}  {row.detail}")
        if not row.ok and row.fix:
            lines.append(f"{'':22} {'':8} {'':6} {'':>8}  fix: {row.fix}")
    return "\n".join(lines)


def as_json(rows: List[Row]) -> str:
    return json.dumps({"ok": all(row.ok for row in rows), "rows": [asdict(row) for row in rows]},
                      indent=2, default=str)

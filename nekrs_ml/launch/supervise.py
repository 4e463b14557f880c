"""The supervision of a running run: the progress line, the parts watched until the solver is
done (a trainer that dies is reported, a model worker that dies restarted, a database that
fails ends the run), and which part, if any, failed."""

from __future__ import annotations

import json
import time
from typing import Dict, Optional

from .. import keys
from ..errors import NekrsMLError
from .drops import DropWatch
from .nekrs_case import nekrs_run_length
from .progress import Progress, Reading, nothing_read, read_progress
from .settings import ReproducerSettings
from .supervisor import Part

MAX_FAILED_POLLS = 3  # database polls failing in a row that make the orchestrator the failed part


class Supervision:
    """The supervision of a Run (nekrs_ml.launch.run), once its parts are started."""

    def supervise(self) -> str:
        """Returns "ok" or the name of the failing part."""
        if self.solver == "reproducer":
            total, end_time = ReproducerSettings.from_par(self.cfg).steps, None
        else:
            total, end_time = nekrs_run_length(self.par)
        progress = Progress(total, end_time)
        solver, trainer = self.parts["solver"], self.parts.get("trainer")
        workers = [part for name, part in self.parts.items() if name.startswith("worker")]
        trainer_reported = trainer_stopped_here = False
        solver_finished_at = None
        if trainer is not None:
            self.drops = DropWatch(self.client, self.ns, self.settings.solver_ranks,
                                   self.settings.max_drop_fraction, self.warn)
        trainer_state = None
        try:
            while True:
                step, sim_time, snapshots, status, inference = self.poll_progress()
                progress.show(step, sim_time, snapshots, status, inference)
                trainer_state = status.get("state", trainer_state)
                if self.drops is not None:
                    self.drops.poll(trainer.running, trainer_state)
                self.check_restarted_workers()
                if self.orchestrator_failed():
                    return "orchestrator"
                if trainer and not trainer.running and not trainer_reported and solver.running:
                    trainer_reported = True
                    if trainer.returncode != 0:
                        error = self.trainer_status().get("error")
                        self.warn(f"trainer exited with code {trainer.returncode} while the solver "
                                  f"runs; the solver continues (see {trainer.log_path})"
                                  + (f": {error}" if error else ""))
                for worker in list(workers):
                    if not worker.running and solver.running:
                        workers.remove(worker)
                        restarted = self.restart_worker(worker)
                        if restarted is not None:
                            workers.append(restarted)
                if not solver.running:
                    if solver.returncode != 0:
                        # ranks fail when the database dies under them: blame the cause
                        return "orchestrator" if self.orchestrator_failed() else "solver"
                    solver_finished_at = solver_finished_at or time.monotonic()
                    if trainer is None or not trainer.running:
                        break
                    if time.monotonic() - solver_finished_at > self.trainer_grace:
                        self.warn(f"trainer still running {self.trainer_grace:g} s after the solver "
                                  "finished; stopping it")
                        trainer.stop()
                        trainer_stopped_here = True
                        break
                time.sleep(0.5)
        finally:
            progress.show(*self.poll_progress())
            progress.done()
        if self.drops is not None:  # the last counts (the solver has finished)
            self.drops.poll(trainer.running, trainer_state, force=True)
        # mpiexec reports a rank stopped by our SIGTERM as a failure: that one is not
        if trainer is not None and trainer.returncode != 0 and not trainer_stopped_here:
            return "trainer"
        if (self.solver_summary() or {}).get("ended_early") == "inference_failures":
            return "inference"
        if self.drops is not None and self.drops.exceeded():
            return "data_dropped"
        return "ok"

    def restart_worker(self, worker: Part) -> Optional[Part]:
        """A model worker died while the solver runs: started again unless it already was
        maxWorkerRestarts times (the solver bridges on the fallback wall law meanwhile)."""
        record = self.worker_restarts.setdefault(
            worker.name, {"restarts": 0, "exit_codes": [], "serving_again_after_s": []})
        record["exit_codes"].append(worker.returncode)
        limit = self.settings.max_worker_restarts
        if record["restarts"] >= limit:
            self.warn(f"{worker.name} exited with code {worker.returncode} and is not restarted "
                      f"(maxWorkerRestarts = {limit} reached); the solver's next inference calls "
                      f"fail (see {worker.log_path})")
            return None
        record["restarts"] += 1
        index = int(worker.name[len("worker"):])
        try:  # its heartbeat outlives it by a few seconds: the new one's is what counts
            self.client.delete(keys.worker_heartbeat(self.ns, index))
        except NekrsMLError:
            pass
        restarted = worker.restarted()
        self.parts[worker.name] = restarted
        record["pending_since"] = time.monotonic()
        self.warn(f"{worker.name} exited with code {worker.returncode}; restarted it (restart "
                  f"{record['restarts']} of maxWorkerRestarts = {limit}); the solver uses the "
                  f"fallback wall law until it serves again (see {worker.log_path})")
        return restarted

    def check_restarted_workers(self) -> None:
        """Says when a restarted worker serves again (its heartbeat is back)."""
        for name, record in self.worker_restarts.items():
            since = record.get("pending_since")
            if since is None:
                continue
            try:
                serving = self.client.exists(keys.worker_heartbeat(self.ns, int(name[6:])))
            except NekrsMLError:
                continue
            if serving:
                took = time.monotonic() - since
                record["serving_again_after_s"].append(round(took, 2))
                del record["pending_since"]
                print(f"\nnekrs-ml run: {name} serves again, {took:.1f} s after its restart",
                      flush=True)

    def poll_progress(self) -> Reading:
        """The progress read from the database; nothing_read() when it does not answer (counted
        in failed_polls) or a record does not parse."""
        try:
            reading = read_progress(self.client, self.ns, self.settings.solver_ranks,
                                    self.settings.inferring, self.flow_stats)
        except NekrsMLError:
            self.failed_polls += 1
            return nothing_read()
        except ValueError:
            return nothing_read()
        self.failed_polls = 0
        return reading

    def orchestrator_failed(self) -> bool:
        """True (with the reason in orchestrator_problem) when a server of the run is gone or
        stopped, or the database did not answer MAX_FAILED_POLLS polls in a row."""
        try:
            dead = self.orchestrator.dead_servers()
        except NekrsMLError as exc:
            dead = [str(exc)]
        if self.nodes is not None and not self.nodes.running:
            self.orchestrator_problem = (
                f"the database failed: the node agents exited with code {self.nodes.returncode}; "
                f"last lines of {self.nodes.log_path}:\n{self.nodes.log_tail()}")
        elif dead:
            self.orchestrator_problem = (f"the database failed: redis-server {', '.join(dead)}; "
                                         f"see the server log in {self.run_dir / 'db'}")
        elif self.failed_polls >= MAX_FAILED_POLLS:
            self.orchestrator_problem = (f"the database did not answer {self.failed_polls} polls "
                                         f"in a row (timeout {self.settings.timeout_s:g} s each); see "
                                         f"the server log in {self.run_dir / 'db'}")
        return bool(self.orchestrator_problem)

    def trainer_status(self) -> Dict:
        """The trainer's last status record (its error when it failed), {} when none."""
        if self.client is None:
            return {}
        try:
            raw = self.client.get_string(keys.trainer_status(self.ns))
            status = json.loads(raw) if raw else {}
        except (NekrsMLError, ValueError):
            return {}
        return status if isinstance(status, dict) else {}

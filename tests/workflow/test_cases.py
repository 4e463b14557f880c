"""The shipped cases work as shipped: every `.par` under cases/ parses (and passes the checks
`nekrs-ml run` makes before starting anything), and every command of a case README runs, in its
short form (a stand-in run of 300 steps, about 15 s), in a copy of cases/; a command that needs
NekRS runs only with NEKRS_HOME, one that needs Nek5000's genbox only with genbox on the PATH,
and a skipped command says why."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nekrs_ml.config import load_par
from nekrs_ml.launch.ensemble_case import is_ensemble, load_ensemble
from nekrs_ml.launch.nekrs_case import check_end_condition, read_general
from nekrs_ml.launch.settings import LaunchSettings, ReproducerSettings
from nekrs_ml.orchestrator import Orchestrator

CASES = Path(__file__).resolve().parents[2] / "cases"
PARS = sorted(CASES.rglob("*.par"))
READMES = sorted(CASES.rglob("README.md"))
NEKRS_HOME = os.environ.get("NEKRS_HOME")
HAVE_NEKRS = bool(NEKRS_HOME) and Path(NEKRS_HOME or "/", "bin", "nekrs").is_file()
NEKRS_REASON = "needs NekRS: set NEKRS_HOME to a NekRS installation (with bin/nekrs)"


def test_the_cases_are_found():
    assert len(PARS) >= 7 and READMES, (PARS, READMES)


@pytest.mark.parametrize("par", PARS, ids=[str(p.relative_to(CASES)) for p in PARS])
def test_every_shipped_par_parses(par, tmp_path):
    case = load_par(par)  # ConfigError names the file, line and key
    LaunchSettings.from_case(case)
    if is_ensemble(par):  # every member's and model's .par is checked as `nekrs-ml run` writes it
        ensemble = load_ensemble(par)
        for member in ensemble.members:
            ReproducerSettings.from_par(ensemble.member_par(member, tmp_path / f"{member.name}.par"))
        for model in ensemble.models:
            ensemble.model_par(model, tmp_path / f"model-{model.name}.par")
    if read_general(par):  # a NekRS case: what `nekrs-ml run --solver nekrs` checks first
        check_end_condition(par)
    else:
        ReproducerSettings.from_par(case)


# --- the commands of the case READMEs ----------------------------------------------------------
def readme_commands(readme: Path):
    """The shell commands of a README: its indented code lines (continuations joined), in
    order, as (line number, command)."""
    commands, pending, start = [], "", 0
    for number, line in enumerate(readme.read_text().splitlines(), 1):
        if not line.startswith("    ") or not line.strip() or line.strip().startswith("#"):
            continue
        text = line.strip()
        if not pending:
            start = number
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        commands.append((start, pending + text))
        pending = ""
    return commands


def kind(command: str) -> str:
    """Which tier runs a README command (every command must have one)."""
    words = shlex.split(command, comments=True)
    if words[0] == "cd" or re.fullmatch(r"\w+=.*", command):
        return "shell"  # the directory we run in, shell variables for the next lines
    if words[0] == "sed":
        return "shell"
    if words[0] == "genbox":
        return "genbox"
    if words[:3] == ["nekrs-ml", "mesh", "channel"]:
        return "mesh"
    if words[:2] == ["nekrs-ml", "run"]:
        return "nekrs" if "--solver" in words and words[words.index("--solver") + 1] == "nekrs" \
            else "stand-in run"
    if words[:2] == ["nekrs-ml", "profile"]:
        return "nekrs"  # draws the profiles of the NekRS runs above
    return "unknown"


ALL_COMMANDS = [(readme, number, command) for readme in READMES
                for number, command in readme_commands(readme)]
IDS = [f"{readme.parent.name}:{number}" for readme, number, _ in ALL_COMMANDS]


def test_every_readme_command_has_a_tier():
    unknown = [f"{readme}:{number}: {command}" for readme, number, command in ALL_COMMANDS
               if kind(command) == "unknown"]
    assert not unknown, ("README commands no test runs; add them to kind() in "
                         f"tests/workflow/test_cases.py: {unknown}")
    assert {kind(command) for _, _, command in ALL_COMMANDS} >= {"mesh", "shell", "nekrs"}


@pytest.fixture
def case_copy(tmp_path):
    """A copy of cases/ (the READMEs name ../reproducer/...); no run's server outlives a test."""
    copy = tmp_path / "cases"
    shutil.copytree(CASES, copy, ignore=shutil.ignore_patterns(".cache", "runs", "*.re2"))
    try:
        yield copy
    finally:
        for db in copy.rglob("runs/*/db"):
            Orchestrator.stop_dir(db)


def run_shell(command: str, cwd: Path, env=None) -> subprocess.CompletedProcess:
    bin_dir = str(Path(sys.executable).parent)  # nekrs-ml of this installation first
    env = dict(env or os.environ, PATH=bin_dir + os.pathsep + os.environ.get("PATH", ""))
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.mark.parametrize("readme,number,command", ALL_COMMANDS, ids=IDS)
def test_readme_command(readme, number, command, case_copy):
    tier = kind(command)
    where = case_copy / readme.parent.relative_to(CASES)
    if tier == "nekrs" and not HAVE_NEKRS:
        pytest.skip(NEKRS_REASON)
    if tier == "genbox" and not shutil.which("genbox"):
        pytest.skip("needs Nek5000's genbox on the PATH (the README's alternative to "
                    "`nekrs-ml mesh channel`)")
    if tier == "shell" and shlex.split(command, comments=True)[0] == "cd":
        return  # the test runs in the case directory already
    # the shell lines of a block build on the ones before them (variables, generated files)
    lines = [c for r, n, c in ALL_COMMANDS if r == readme and n <= number and kind(c) == "shell"
             and not c.startswith("cd ")]
    script = command
    if tier == "shell":
        script = "\n".join(lines)
    elif tier == "stand-in run":
        shorten_stand_in_cases(case_copy)
    proc = run_shell(f"set -e\n{script}", where)
    assert proc.returncode == 0, f"{readme}:{number}: {command}\n{proc.stdout[-2000:]}{proc.stderr}"
    if tier == "mesh":
        output = Path(shlex.split(command, comments=True)[-1]).name
        if "--from-box" in command:
            output = Path(shlex.split(command, comments=True)[-1]).with_suffix(".re2").name
        assert (where / output).read_bytes().startswith(b"#v002"), output
    if tier == "shell" and command.startswith("sed"):
        made = where / shlex.split(command, comments=True)[-1]
        load_par(made)  # what the sed line writes is a case NekRS and nekrs_ml read
        check_end_condition(made)
    if tier == "stand-in run":
        run_dir = where / shlex.split(command, comments=True)[shlex.split(command, comments=True).index("--run-dir") + 1]
        assert (run_dir / "report.json").exists() and (run_dir / "wall_model.pt").exists()


def shorten_stand_in_cases(case_copy: Path) -> None:
    """The short form of a stand-in run: a few hundred steps."""
    for par in (case_copy / "reproducer").glob("*.par"):
        text = re.sub(r"(?m)^steps = \d+", "steps = 300", par.read_text())
        text = re.sub(r"(?m)^stepCost = .*", "stepCost = 0.005", text)
        par.write_text(text)

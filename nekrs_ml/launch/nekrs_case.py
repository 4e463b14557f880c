"""What the launcher reads of a NekRS case: its run length, and the checks made before `nekrs-ml
run --solver nekrs` starts anything (mistakes that NekRS itself reports late, or not at all)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import ConfigError

CACHE_DIR = ".cache"  # NekRS builds the case's udf and Nek5000 parts here, in the case folder


def read_general(par: Path) -> Dict[str, str]:
    """The [GENERAL] keys of a NekRS .par, lower-cased, with comments stripped."""
    section, values = "", {}
    for line in par.read_text().splitlines():
        line = re.split(r"[#;]", line, maxsplit=1)[0].strip()
        header = re.fullmatch(r"\[(.+)\]", line)
        if header:
            section = header.group(1).strip().lower()
        elif section == "general" and "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            values[key.lower()] = value
    return values


def nekrs_run_length(par: Path) -> Tuple[Optional[int], Optional[float]]:
    """(last step, end time) of a NekRS case from its [GENERAL] section: numSteps, or endTime
    (with a fixed dt also the step). A variable dt (targetCFL=...) leaves only the end time."""
    values = {key: value.lower() for key, value in read_general(par).items()}

    def number(key):
        try:
            return float(values[key])
        except (KeyError, ValueError):
            return None

    steps, end_time, dt = number("numsteps"), number("endtime"), number("dt")
    if values.get("stopat", "numsteps" if steps else "endtime") == "numsteps" and steps:
        return int(steps), None
    if end_time is not None and dt:
        return math.ceil(end_time / dt - 1e-9), end_time
    return None, end_time


def check_end_condition(par: Path) -> None:
    """NekRS needs the key its stopAt names; with stopAt = elapsedTime, NekRS 25 also needs
    endTime or numSteps, else it skips time stepping altogether (the run then ends at step 0
    and the trainer gets no data)."""
    general = read_general(par)
    stop_at = general.get("stopat", "").lower()
    has_steps, has_end_time = "numsteps" in general, "endtime" in general
    where = f"{par}: [GENERAL]"
    if stop_at == "elapsedtime":
        if not (has_steps or has_end_time):
            raise ConfigError(
                f"{where} stopAt = elapsedTime without endTime or numSteps: NekRS 25 then skips "
                "time stepping altogether; add endTime (or numSteps) as a bound beyond the "
                "wall-clock limit, e.g. endTime = 1e9, or use stopAt = endTime / numSteps")
        if "elapsedtime" not in general:
            raise ConfigError(f"{where} stopAt = elapsedTime but no elapsedTime (minutes); add it")
    elif stop_at == "endtime" and not has_end_time:
        raise ConfigError(f"{where} stopAt = endTime but no endTime; add endTime = <time>")
    elif stop_at == "numsteps" and not has_steps:
        raise ConfigError(f"{where} stopAt = numSteps but no numSteps; add numSteps = <steps>")
    elif not stop_at and not (has_steps or has_end_time):
        raise ConfigError(f"{where} has no end condition; add numSteps = <steps> or "
                          "stopAt = endTime with endTime = <time>")


def recorded_build_dir(cmake_cache: Path) -> Optional[str]:
    """The directory a CMakeCache.txt was created in (CMAKE_CACHEFILE_DIR), None if unreadable."""
    try:
        text = cmake_cache.read_text(errors="replace")
    except OSError:
        return None
    found = re.search(r"^CMAKE_CACHEFILE_DIR:INTERNAL=(.*)$", text, flags=re.MULTILINE)
    return found.group(1).strip() if found else None


def check_cache(case_dir: Path) -> None:
    """A case folder copied (or moved) with its .cache: the CMake build of the udf recorded in
    it belongs to the old folder, and NekRS's udf build then aborts without saying why."""
    cache = case_dir / CACHE_DIR
    if not cache.is_dir():
        return
    for cmake_cache in sorted(cache.glob("*/CMakeCache.txt")):
        recorded = recorded_build_dir(cmake_cache)
        if recorded is None:
            continue
        if Path(recorded).resolve() != cmake_cache.parent.resolve():
            raise ConfigError(
                f"{cmake_cache} was created in {recorded}: this case folder was copied or moved "
                f"with the build cache of another one, and NekRS's udf build would abort; remove "
                f"it (rm -rf {cache}) and run again (NekRS rebuilds it)")


def check_case(par: Path) -> None:
    """Every check of a NekRS case; ConfigError naming the file, the keys and the fix."""
    check_end_condition(par)
    check_cache(par.parent)

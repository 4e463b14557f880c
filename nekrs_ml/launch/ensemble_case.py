"""An ensemble case: one .par whose [ENSEMBLE] section names several solver runs (members) and,
optionally, several models trained from their one stream (docs/ensembles.md).

    [ENSEMBLE]
    members = re550, re950, re1400      # the members whose snapshots the trainers read
    heldOut = re2000                    # members no trainer reads: the models are tested on them
    models = wall_model, dimensional    # one trainer per model (default: [NEKRS_ML] modelName)
    memberFailure = continue            # or abort

    [MEMBER re550]                      # the member's overrides of the case's sections
    reproducer.reTau = 550
    startDelay = 0                      # seconds after the run's start
    # par = re550.par                   # its own case file instead (NekRS: its own mesh...)

    [MODEL dimensional]                 # the model's overrides of [NEKRS_ML]
    hiddenLayers = 32,32,32

Each member and each model gets a .par of its own, written into the run directory: the case with
the ensemble's sections left out and the overrides applied, read back through the one .par parser
(so a bad override is refused as a bad key in a case would be, naming the [MEMBER] or [MODEL] key).
"""

from __future__ import annotations

import configparser
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .. import rundir
from ..config import Config, load_par
from ..errors import ConfigError

ENSEMBLE = "ensemble"
MEMBER_PREFIX = "member "
MODEL_PREFIX = "model "
MEMBER_FAILURE = ("continue", "abort")
DEFAULT_MEMBER_FAILURE = "continue"
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

# [NEKRS_ML] keys that are the run's, not a member's or a model's: one database, one workflow
RUN_KEYS = {"workflow", "deployment", "transport", "shards", "dbnodes", "dbinterface",
            "maxmemory", "smartrediscompat", "smartredistcp", "namespace", "timeout",
            "workers", "workerdevice", "inferencebackend", "trainernodes", "trainerranks",
            "maxworkerrestarts", "deploymodel"}
# [NEKRS_ML] keys a model may set: the trainer's
MODEL_KEYS = {"hiddenlayers", "learningrate", "batchsize", "stepsperepoch", "replaybuffer",
              "validationfraction", "publishinterval", "patience", "minsnapshots",
              "minimprovement", "maxepochs", "stopsolver", "traindevice", "checkpointdir",
              "keepversions", "exportformat", "features", "membersampling"}


@dataclass(frozen=True)
class Member:
    name: str
    overrides: Tuple[Tuple[str, str, str], ...]  # (section, key, value) as written
    start_delay_s: float = 0.0
    held_out: bool = False
    par: Optional[Path] = None  # the member's own case file instead of the ensemble's (`par`)


@dataclass(frozen=True)
class Model:
    name: str
    overrides: Tuple[Tuple[str, str], ...]  # ([NEKRS_ML] key, value)


@dataclass
class EnsembleCase:
    """The ensemble sections of a case .par, checked; member_par / model_par write the .par of
    one member or one model."""

    par: Path
    members: List[Member]
    models: List[Model]
    member_failure: str
    base: Config
    _sections: Dict[str, Dict[str, str]] = field(repr=False, default_factory=dict)

    @property
    def training_members(self) -> List[Member]:
        return [member for member in self.members if not member.held_out]

    @property
    def held_out_members(self) -> List[Member]:
        return [member for member in self.members if member.held_out]

    def member_par(self, member: Member, path: Path) -> Config:
        """Writes the member's .par (the case without the ensemble's sections, its overrides
        applied) and returns it read back."""
        source = self._sections if member.par is None else _case_sections(_read(member.par))
        sections = {name: dict(values) for name, values in source.items()}
        if member.par is not None:  # the ensemble's [NEKRS_ML] holds for every member
            sections["nekrs_ml"] = {**sections.get("nekrs_ml", {}),
                                    **self._sections.get("nekrs_ml", {})}
        for section, key, value in member.overrides:
            sections.setdefault(section, {})[key] = value
        return self._write(sections, path, f"[MEMBER {member.name}]")

    def model_par(self, model: Model, path: Path) -> Config:
        """Writes the model's .par: the case with [NEKRS_ML] modelName and its overrides."""
        sections = {name: dict(values) for name, values in self._sections.items()}
        ml = sections.setdefault("nekrs_ml", {})
        ml["modelname"] = model.name
        for key, value in model.overrides:
            ml[key] = value
        return self._write(sections, path, f"[MODEL {model.name}]")

    def _write(self, sections: Dict[str, Dict[str, str]], path: Path, origin: str) -> Config:
        lines = [f"# written by `nekrs-ml run` from {self.par} ({origin})"]
        lines += [f"{key} = {value}" for key, value in sections.pop(TOP, {}).items()]
        for section, values in sections.items():
            lines.append(f"\n[{section.upper()}]")
            lines += [key if value is None else f"{key} = {value}" for key, value in values.items()]
        rundir.write_file(path, "\n".join(lines) + "\n")  # never through a planted link
        try:
            return load_par(path)
        except ConfigError as exc:
            raise ConfigError(f"{self.par.name}, {origin}: {exc}") from None


TOP = "__top__"  # NekRS takes keys before the first section (e.g. userSections = ...)


def is_ensemble(par: Path) -> bool:
    """Whether a case .par has an [ENSEMBLE] section; a file this reader cannot read is not
    one (the .par parser then says what is wrong with it)."""
    try:
        return ENSEMBLE in (section.lower() for section in _read(par).sections())
    except ConfigError:
        return False


def _read(par: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(inline_comment_prefixes=("#", ";"), strict=False,
                                       interpolation=None, allow_no_value=True)
    try:
        parser.read_string(f"[{TOP}]\n" + par.read_text(), source=str(par))
    except (configparser.Error, OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{par}: {exc}") from None
    return parser


def _names(par: Path, key: str, text: str) -> List[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    for name in names:
        if not NAME.match(name):
            raise ConfigError(f"{par.name}: [ENSEMBLE] {key}: {name!r} is not a member or model "
                              "name: 1-64 characters a-z, 0-9, _ or -, starting with a letter or "
                              "digit")
    if len(set(names)) != len(names):
        raise ConfigError(f"{par.name}: [ENSEMBLE] {key} names one twice: {text}")
    return names


def load_ensemble(par: Path) -> EnsembleCase:
    """The ensemble of a case .par; ConfigError names the section, key and fix."""
    parser = _read(par)
    sections = {name.lower(): {k.lower(): v for k, v in parser[name].items()}
                for name in parser.sections()}
    ensemble = sections.get(ENSEMBLE)
    if ensemble is None:
        raise ConfigError(f"{par.name}: no [ENSEMBLE] section")
    base = load_par(par)
    known = {"members", "heldout", "models", "memberfailure"}
    for key in ensemble:
        if key not in known:
            raise ConfigError(f"{par.name}: [ENSEMBLE] has no key {key!r}; its keys are members, "
                              "heldOut, models and memberFailure (docs/ensembles.md)")
    training = _names(par, "members", ensemble.get("members") or "")
    held_out = _names(par, "heldOut", ensemble.get("heldout") or "")
    if not training:
        raise ConfigError(f"{par.name}: [ENSEMBLE] members is empty: name at least one member "
                          "(members = a, b, c) and give each a [MEMBER a] section of overrides")
    if set(training) & set(held_out):
        raise ConfigError(f"{par.name}: [ENSEMBLE] {sorted(set(training) & set(held_out))} "
                          "both in members and heldOut: a held-out member is never trained on")
    failure = (ensemble.get("memberfailure") or DEFAULT_MEMBER_FAILURE).strip().lower()
    if failure not in MEMBER_FAILURE:
        raise ConfigError(f"{par.name}: [ENSEMBLE] memberFailure = {failure!r}: use continue (the "
                          "other members go on) or abort (the run stops)")
    ml = base["nekrs_ml"]
    if ml["workflow"] not in ("train", "train+infer"):
        raise ConfigError(f"{par.name}: an ensemble trains: [NEKRS_ML] workflow = "
                          f"{ml['workflow']}; use train or train+infer")
    if ml["whenFull"] == "wait":
        raise ConfigError(f"{par.name}: whenFull = wait in an ensemble would hold every member "
                          "back to its slowest model; use whenFull = drop (each model counts the "
                          "snapshots it missed)")
    if ml["deployModel"].lower() != "none":
        raise ConfigError(f"{par.name}: deployModel in an ensemble: its models come from its "
                          "trainers; leave deployModel = none")

    members = [_member(par, name, sections, held_out=name in held_out)
               for name in training + held_out]
    model_names = _names(par, "models", ensemble.get("models") or "") or [ml["modelName"].lower()]
    if ml["workflow"] == "train+infer" and ml["modelName"].lower() not in model_names:
        raise ConfigError(f"{par.name}: [NEKRS_ML] modelName = {ml['modelName']} is the model the "
                          f"members infer with, and [ENSEMBLE] models = {', '.join(model_names)} "
                          "does not train it: add it to models")
    models = [_model(par, name, sections) for name in model_names]
    for name in sections:
        kind, _, rest = name.partition(" ")
        if kind in ("member", "model") and rest.strip() not in (
                [m.name for m in members] if kind == "member" else model_names):
            raise ConfigError(f"{par.name}: section [{name.upper()}] names no {kind} of [ENSEMBLE]: "
                              f"add {rest.strip()!r} to {'members' if kind == 'member' else 'models'} "
                              "or remove the section")
    return EnsembleCase(par, members, models, failure, base, _case_sections(parser))


def _case_sections(parser: configparser.ConfigParser) -> Dict[str, Dict[str, str]]:
    """The sections of a case, without an ensemble's own."""
    sections = {name.lower(): {k.lower(): v for k, v in parser[name].items()}
                for name in parser.sections()}
    return {name: values for name, values in sections.items()
            if name != ENSEMBLE and not name.startswith((MEMBER_PREFIX, MODEL_PREFIX))}


def _member(par: Path, name: str, sections: Dict[str, Dict[str, str]], held_out: bool) -> Member:
    values = sections.get(MEMBER_PREFIX + name)
    if values is None:
        raise ConfigError(f"{par.name}: member {name!r} has no [MEMBER {name}] section: give it one "
                          "with its overrides (e.g. reproducer.reTau = 550), even an empty one")
    overrides, delay, own_par = [], 0.0, None
    for key, value in values.items():
        if value is None:
            raise ConfigError(f"{par.name}: [MEMBER {name}] {key} has no value: write {key} = VALUE")
        if key == "par":
            own_par = (par.parent / value.strip().strip('"')).absolute()
            if not own_par.is_file():
                raise ConfigError(f"{par.name}: [MEMBER {name}] par = {value}: {own_par} is not a "
                                  "file (a path relative to the ensemble's .par)")
            if is_ensemble(own_par):
                raise ConfigError(f"{par.name}: [MEMBER {name}] par = {value}: that file is an "
                                  "ensemble itself; name a single case")
            continue
        if key == "startdelay":
            try:
                delay = float(value)
            except ValueError:
                delay = -1.0
            if not 0 <= delay <= 86400:
                raise ConfigError(f"{par.name}: [MEMBER {name}] startDelay = {value}: seconds "
                                  "after the run's start, 0 to 86400")
            continue
        section, dot, option = key.partition(".")
        if not dot or not section or not option:
            raise ConfigError(f"{par.name}: [MEMBER {name}] {key}: a member's key is SECTION.KEY, "
                              "the case key it overrides (e.g. reproducer.reTau = 550), or "
                              "startDelay")
        if section == "nekrs_ml" and option in RUN_KEYS:
            raise ConfigError(f"{par.name}: [MEMBER {name}] {key}: {option} is the whole run's; "
                              "set it in [NEKRS_ML]")
        if section in (ENSEMBLE,) or section.startswith(("member", "model")):
            raise ConfigError(f"{par.name}: [MEMBER {name}] {key}: a member overrides the case's "
                              "own sections, not the ensemble's")
        overrides.append((section, option, value))
    return Member(name, tuple(overrides), delay, held_out, own_par)


def _model(par: Path, name: str, sections: Dict[str, Dict[str, str]]) -> Model:
    overrides = []
    for key, value in sections.get(MODEL_PREFIX + name, {}).items():
        if value is None:
            raise ConfigError(f"{par.name}: [MODEL {name}] {key} has no value: write {key} = VALUE")
        option = key[len("nekrs_ml."):] if key.startswith("nekrs_ml.") else key
        if option not in MODEL_KEYS:
            raise ConfigError(f"{par.name}: [MODEL {name}] {key}: a model sets its trainer's "
                              f"[NEKRS_ML] keys ({', '.join(sorted(MODEL_KEYS))})")
        overrides.append((option, value))
    return Model(name, tuple(overrides))

"""The ``[NEKRS_ML]`` and ``[REPRODUCER]`` sections of a NekRS case ``.par`` file.

The options are one table, ``config_schema.tsv`` (section, key, type, default, unit, choices,
description), compiled into libnekrsml. There is one .par parser, libnekrsml's
(``udf/src/config.cpp``, the one the NekRS plugin uses); this module reads case files through it
(``nekrs_ml._core``) and adds what only Python needs: the documentation and a command-line
check of a case.

Rules (those of NekRS's own .par reader): section and key names are case-insensitive and so are
values unless double-quoted, because NekRS lower-cases them; ``#`` or ``;`` at the start of a
line or after whitespace starts a comment. Only the sections of the schema are validated; the
NekRS sections (``[GENERAL]``, ``[VELOCITY]``, ...) are left alone.

Types: ``int``, ``float``, ``str``, ``bool`` (true/false), ``choice`` and ``intlist``
(comma-separated integers). The choices column holds allowed values ``a|b|c`` (an upper-case
``N`` in one stands for a number: ``cuda:N``), a bound ``>=N`` or ``>N``, a range ``lo..hi``
(inclusive) or ``>lo..hi`` (lo excluded), a format of a ``str`` option (``@memory``: a Redis
memory size; ``@name``: a name used inside the database keys), or ``-``.

``python -m nekrs_ml.config`` prints docs/configuration.md; ``python -m nekrs_ml.config
case.par`` validates a case file and prints its options.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from . import _core
from .errors import ConfigError

TYPES = ("int", "float", "str", "bool", "choice", "intlist")

Value = Union[int, float, bool, str, List[int]]


@dataclass(frozen=True)
class Option:
    """One row of the schema."""

    section: str
    key: str
    type: str
    default: str
    unit: str
    choices: str
    description: str


# --- the schema -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _load_schema() -> Tuple[Option, ...]:
    """The rows compiled into libnekrsml (checked there: types, choices, valid defaults)."""
    return tuple(Option(*row) for row in _core.config_schema())


def schema() -> List[Option]:
    """The rows of config_schema.tsv, in file order."""
    return list(_load_schema())


def sections() -> List[str]:
    """The validated sections, in schema order."""
    return list(dict.fromkeys(option.section for option in _load_schema()))


def _section(section: str) -> str:
    """The schema's spelling of a validated section name."""
    for name in sections():
        if name.lower() == section.lower():
            return name
    names = [f"[{name.upper()}]" for name in sections()]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise ConfigError(f"no section [{section.upper()}] in the schema; use {listed}")


# --- .par files -----------------------------------------------------------------------------
class Config:
    """The validated options of the schema's sections; every option not given has its default.

    ``cfg["nekrs_ml"]["sampleInterval"]`` or ``cfg.get("NEKRS_ML", "sampleinterval")``; keys are
    the schema's names, lookups are case-insensitive. Parsing and validation are libnekrsml's
    (nekrs_ml::Config), so the solver and the Python tools read a case alike.
    """

    def __init__(self, source: str = "", native=None):
        self._native = native if native is not None else _core.Config(source)

    @property
    def source(self) -> str:
        return self._native.source

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> "Config":
        return cls(native=_core.Config.from_text(text, source))

    def set(self, section: str, key: str, value_text: str) -> None:
        """Validates and sets one option (the text as NekRS's parser hands it over)."""
        self._native.set(section, key, value_text)

    def get(self, section: str, key: str) -> Value:
        return self._native.get(section, key)

    def __getitem__(self, section: str) -> Dict[str, Value]:
        """The options of one section as ``{key: value}`` (a copy)."""
        return self._native.as_dict()[_section(section)]

    def as_dict(self) -> Dict[str, Dict[str, Value]]:
        """``{section: {key: value}}`` in schema order."""
        return self._native.as_dict()

    def __repr__(self) -> str:
        return f"Config(source={self.source!r})"


def load_par(path) -> Config:
    """Reads and validates a case .par file; ConfigError names the file, line and key."""
    return Config(native=_core.Config.from_par_file(str(path)))


# --- documentation --------------------------------------------------------------------------
@dataclass(frozen=True)
class _Choices:
    """The choices column as the documentation shows it: allowed values, or a numeric bound or
    range (libnekrsml enforces them)."""

    alternatives: Tuple[str, ...] = ()
    low: str = ""
    low_inclusive: bool = True
    high: str = ""
    format: str = ""

    @classmethod
    def parse(cls, text: str) -> "_Choices":
        if text == "-":
            return cls()
        if text in _FORMATS:
            return cls(format=text)
        if ".." in text:
            low, high = text.split("..", 1)
            if low.startswith(">"):
                return cls(low=low[1:], low_inclusive=False, high=high)
            return cls(low=low, high=high)
        if text.startswith(">="):
            return cls(low=text[2:])
        if text.startswith(">"):
            return cls(low=text[1:], low_inclusive=False)
        return cls(alternatives=tuple(text.split("|")))

    def describe_range(self) -> str:
        if self.high and not self.low_inclusive:
            return f"> {self.low} and <= {self.high}"
        if self.high:
            return f"between {self.low} and {self.high}"
        return f"{'>=' if self.low_inclusive else '>'} {self.low}"



# The formats of str options, as the documentation describes them (libnekrsml checks them).
_FORMATS = {
    "@memory": "a Redis memory size, 1mb to 4096gb",
    "@name": "1-200 characters, no `{`, `}`, `:` or spaces",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _choices_cell(option: Option) -> str:
    choices = _Choices.parse(option.choices)
    if choices.format:
        return _cell(_FORMATS[choices.format])
    if choices.alternatives:
        return ", ".join(f"`{a}`" for a in choices.alternatives)
    if choices.low or choices.high:
        return _cell(choices.describe_range())
    return ""


def markdown() -> str:
    """docs/configuration.md: one table per section, in schema order (deterministic)."""
    lines = [
        "# Configuration",
        "",
        "<!-- Generated from nekrs_ml/config_schema.tsv by `python -m nekrs_ml.config`; "
        "do not edit. -->",
        "",
        "A case is configured in its NekRS `.par` file, in the sections below. Section and key "
        "names are case-insensitive, and so are values unless double-quoted (NekRS lower-cases "
        "them). `#` or `;` at the start of a line or after whitespace starts a comment. Options "
        "not given take their default; an unknown key or an invalid value is an error that "
        "names the file, line, key and the valid values. The solver and the Python tools read a "
        "case with the same parser (libnekrsml's `nekrs_ml::Config`).",
        "",
        "Types: `int`, `float`, `str`, `bool` (`true`/`false`), `choice` (one of the listed "
        "values) and `intlist` (comma-separated integers, e.g. `1, 2`).",
        "",
    ]
    for section in sections():
        lines += [f"## [{section.upper()}]", "",
                  "| Key | Type | Default | Unit | Choices | Description |",
                  "|---|---|---|---|---|---|"]
        for o in _load_schema():
            if o.section == section:
                unit = "" if o.unit == "-" else _cell(o.unit)
                lines.append(f"| `{o.key}` | {o.type} | `{_cell(o.default)}` | {unit} | "
                             f"{_choices_cell(o)} | {_cell(o.description)} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        sys.stdout.write(markdown())
        return 0
    try:
        config = load_par(args[0])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for section, values in config.as_dict().items():
        print(f"[{section.upper()}]")
        for key, value in values.items():
            print(f"  {key} = {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

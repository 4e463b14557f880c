"""The ``[NEKRS_ML]`` and ``[REPRODUCER]`` sections of a NekRS case ``.par`` file.

The options are one table, ``config_schema.tsv`` (section, key, type, default, unit, choices,
description), read here and compiled into libnekrsml (``udf/src/config.cpp``), which implements
the same rules; the tests check that both parse a file to the same values.

Rules (those of NekRS's own .par reader): section and key names are case-insensitive and so are
values unless double-quoted, because NekRS lower-cases them; ``#`` or ``;`` at the start of a
line or after whitespace starts a comment. Only the sections of the schema are validated; the
NekRS sections (``[GENERAL]``, ``[VELOCITY]``, ...) are left alone.

Types: ``int``, ``float``, ``str``, ``bool`` (true/false), ``choice`` and ``intlist``
(comma-separated integers). The choices column holds allowed values ``a|b|c`` (an upper-case
``N`` in one stands for a number: ``cuda:N``), a bound ``>=N`` or ``>N``, a range ``lo..hi``
(inclusive), or ``-``.

``python -m nekrs_ml.config`` prints docs/configuration.md; ``python -m nekrs_ml.config
case.par`` validates a case file and prints its options.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from .errors import ConfigError

SCHEMA_FILE = Path(__file__).with_name("config_schema.tsv")
SCHEMA_COLUMNS = ("section", "key", "type", "default", "unit", "choices", "description")
TYPES = ("int", "float", "str", "bool", "choice", "intlist")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1

_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")

Value = Union[int, float, bool, str, List[int]]

_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _lower(text: str) -> str:
    """ASCII lower-casing, as NekRS (and libnekrsml) does it."""
    return text.translate(_ASCII_LOWER)


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


# --- constraints ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Constraint:
    """The parsed choices column: allowed values, or a numeric bound or range.

    The bounds keep their schema spelling for messages, so both languages print the same."""

    alternatives: Tuple[str, ...] = ()
    low: str = ""
    low_inclusive: bool = True
    high: str = ""

    @classmethod
    def parse(cls, text: str) -> "_Constraint":
        if text == "-":
            return cls()
        if text.startswith(">="):
            return cls(low=text[2:])
        if text.startswith(">"):
            return cls(low=text[1:], low_inclusive=False)
        if ".." in text:
            low, high = text.split("..", 1)
            return cls(low=low, high=high)
        return cls(alternatives=tuple(text.split("|")))

    def is_numeric(self) -> bool:
        return bool(self.low or self.high)

    def in_range(self, value: float) -> bool:
        if self.low:
            low = float(self.low)
            if value < low or (value == low and not self.low_inclusive):
                return False
        return not self.high or value <= float(self.high)

    def describe_range(self) -> str:
        if self.high:
            return f"between {self.low} and {self.high}"
        return f"{'>=' if self.low_inclusive else '>'} {self.low}"

    def match(self, value: str) -> Optional[str]:
        """The alternative that the lower-cased ``value`` stands for, or None."""
        for alternative in self.alternatives:
            if "N" in alternative:
                prefix, suffix = alternative.split("N", 1)
                pattern = re.escape(prefix.lower()) + "[0-9]+" + re.escape(suffix.lower())
                if re.fullmatch(pattern, value):
                    return value
            elif value == alternative.lower():
                return alternative
        return None


def _or_list(items) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} or {items[-1]}"


# --- the schema -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _load_schema() -> Tuple[Option, ...]:
    rows = []
    seen = set()
    for number, line in enumerate(SCHEMA_FILE.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        where = f"{SCHEMA_FILE.name} line {number}"
        cells = line.split("\t")
        if len(cells) != len(SCHEMA_COLUMNS):
            raise ConfigError(f"{where}: expected {len(SCHEMA_COLUMNS)} tab-separated columns "
                              f"({', '.join(SCHEMA_COLUMNS)}), got {len(cells)}")
        option = Option(*cells)
        if option.type not in TYPES:
            raise ConfigError(f"{where}: type {option.type!r} is not one of {', '.join(TYPES)}")
        name = (option.section.lower(), option.key.lower())
        if name in seen:
            raise ConfigError(f"{where}: [{option.section}] {option.key} is listed twice")
        seen.add(name)
        constraint = _Constraint.parse(option.choices)
        if option.type in ("int", "float", "intlist"):
            fits = not constraint.alternatives
        else:  # str may list its values, choice and bool must
            fits = not constraint.is_numeric() and (
                option.type == "str" or bool(constraint.alternatives))
        if not fits:
            raise ConfigError(f"{where}: choices {option.choices!r} do not fit type {option.type}")
        _convert(option, option.default, where + ": default ")  # the defaults must be valid too
        rows.append(option)
    return tuple(rows)


def schema() -> List[Option]:
    """The rows of config_schema.tsv, in file order."""
    return list(_load_schema())


def sections() -> List[str]:
    """The validated sections, in schema order."""
    return list(dict.fromkeys(option.section for option in _load_schema()))


def _section(section: str, where: str = "") -> str:
    """The schema's spelling of a validated section name."""
    for name in sections():
        if _lower(name) == _lower(section):
            return name
    raise ConfigError(f"{where}no section [{section.upper()}] in the schema; "
                      f"use {_or_list(f'[{name.upper()}]' for name in sections())}")


def _find(section: str, key: str, where: str = "") -> Option:
    section = _section(section, where)
    key_l = _lower(key)
    candidates = [o for o in _load_schema() if o.section == section]
    for option in candidates:
        if _lower(option.key) == key_l:
            return option
    names = {_lower(o.key): o.key for o in candidates}
    close = difflib.get_close_matches(key_l, list(names), n=1, cutoff=0.6)
    hint = f"did you mean '{names[close[0]]}'? " if close else ""
    raise ConfigError(f"{where}[{section.upper()}] unknown key '{key}'; {hint}"
                      f"valid keys: {', '.join(names.values())}")


# --- values ---------------------------------------------------------------------------------
class _OutOfRange(Exception):
    """A number that is well-formed but does not fit a 64-bit integer or a finite double."""


def _parse_int(text: str) -> Optional[int]:
    """The integer ``text`` spells, or None if it is not one; beyond 64 bits is out of range."""
    if not _INT.fullmatch(text):
        return None
    value = int(text)
    if not INT64_MIN <= value <= INT64_MAX:
        raise _OutOfRange
    return value


def _parse_float(text: str) -> Optional[float]:
    """The number ``text`` spells (no inf or nan), or None; overflow is out of range."""
    if not _FLOAT.fullmatch(text):
        return None
    value = float(text)
    if not math.isfinite(value):
        raise _OutOfRange
    return value


def _convert_number(option: Option, text: str, name: str) -> Union[int, float, List[int]]:
    constraint = _Constraint.parse(option.choices)
    if option.type == "intlist":
        items = [_parse_int(item.strip(" \t")) for item in text.split(",")]
        if any(item is None for item in items):
            raise ConfigError(f"{name} = '{text}' is not a comma-separated list of integers")
        if not all(constraint.in_range(item) for item in items):
            raise ConfigError(f"{name} = {text}: every entry must be {constraint.describe_range()}")
        return items
    value = (_parse_int if option.type == "int" else _parse_float)(text)
    if value is None:
        kind = "an integer" if option.type == "int" else "a number"
        raise ConfigError(f"{name} = '{text}' is not {kind}")
    if not constraint.in_range(value):
        raise ConfigError(f"{name} = {text}: must be {constraint.describe_range()}")
    return value


def _convert(option: Option, text: str, where: str = "") -> Value:
    """The typed value of ``text`` for ``option``; ConfigError naming the key and the fix."""
    name = f"{where}[{option.section.upper()}] {option.key}"
    text = text.strip(" \t")
    if option.type in ("int", "float", "intlist"):
        try:
            return _convert_number(option, text, name)
        except _OutOfRange:
            raise ConfigError(f"{name} = '{text}' is out of range") from None
    constraint = _Constraint.parse(option.choices)
    if not constraint.alternatives:
        return text
    match = constraint.match(_lower(text))
    if match is None:
        raise ConfigError(
            f"{name} = '{text}' is not valid; use {_or_list(constraint.alternatives)}")
    return match == "true" if option.type == "bool" else match


# --- .par files -----------------------------------------------------------------------------
def _strip_comment(text: str) -> str:
    """``text`` up to a '#' or ';' at its start or after whitespace."""
    for index, char in enumerate(text):
        if char in "#;" and (index == 0 or text[index - 1] in " \t"):
            return text[:index]
    return text


def _split_value(raw: str, where: str) -> str:
    """The value of a ``key = value`` line: the quoted text as is, else lower-cased."""
    raw = raw.strip(" \t")
    if raw.startswith('"'):
        end = raw.find('"', 1)
        if end < 0:
            raise ConfigError(f"{where}the value {raw} has no closing '\"'")
        if _strip_comment(raw[end + 1:]).strip(" \t"):
            raise ConfigError(f"{where}unexpected text after the closing quote: {raw}")
        return raw[1:end]
    return _lower(_strip_comment(raw).strip(" \t"))


class Config:
    """The validated options of the schema's sections; every option not given has its default.

    ``cfg["nekrs_ml"]["sampleInterval"]`` or ``cfg.get("NEKRS_ML", "sampleinterval")``; keys are
    the schema's names, lookups are case-insensitive.
    """

    def __init__(self, source: str = ""):
        self.source = source
        self._values: Dict[Tuple[str, str], Value] = {
            (o.section, o.key): _convert(o, o.default) for o in _load_schema()}

    @classmethod
    def from_text(cls, text: str, source: str = "<text>") -> "Config":
        config = cls(source)
        section: Optional[str] = None  # lower-cased; validated sections only
        first_line: Dict[Tuple[str, str], int] = {}
        validated = [_lower(s) for s in sections()]
        for number, line in enumerate(text.split("\n"), 1):
            where = f"{source}:{number}: "
            line = line.strip(" \t\r")
            if not line or line[0] in "#;":
                continue
            if line.startswith("["):
                end = line.find("]")
                if end < 0 or _strip_comment(line[end + 1:]).strip(" \t"):
                    raise ConfigError(f"{where}section header {line} is not '[NAME]'")
                name = _lower(line[1:end].strip(" \t"))
                section = name if name in validated else None
                continue
            if section is None:
                continue
            key, equals, raw = line.partition("=")
            key = key.strip(" \t")
            if not equals or not key:
                raise ConfigError(f"{where}[{section.upper()}] expected 'key = value', got {line}")
            option = _find(section, key, where)
            name = (option.section, option.key)
            if name in first_line:
                raise ConfigError(f"{where}[{section.upper()}] {option.key} is given twice "
                                  f"(first on line {first_line[name]})")
            first_line[name] = number
            value = _split_value(raw, f"{where}[{section.upper()}] {option.key}: ")
            config._values[name] = _convert(option, value, where)
        return config

    def set(self, section: str, key: str, value_text: str) -> None:
        """Validates and sets one option (the text as NekRS's parser hands it over)."""
        where = f"{self.source}: " if self.source else ""
        option = _find(section, key, where)
        self._values[(option.section, option.key)] = _convert(option, value_text, where)

    def get(self, section: str, key: str) -> Value:
        option = _find(section, key)
        return self._values[(option.section, option.key)]

    def __getitem__(self, section: str) -> Dict[str, Value]:
        """The options of one section as ``{key: value}`` (a copy)."""
        wanted = _section(section)
        return {key: value for (sec, key), value in self._values.items() if sec == wanted}

    def as_dict(self) -> Dict[str, Dict[str, Value]]:
        """``{section: {key: value}}`` in schema order."""
        return {section: self[section] for section in sections()}

    def __repr__(self) -> str:
        return f"Config(source={self.source!r})"


def load_par(path) -> Config:
    """Reads and validates a case .par file; ConfigError names the file, line and key."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    return Config.from_text(text, source=str(path))


# --- documentation --------------------------------------------------------------------------
def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _choices_cell(option: Option) -> str:
    constraint = _Constraint.parse(option.choices)
    if constraint.alternatives:
        return ", ".join(f"`{a}`" for a in constraint.alternatives)
    if constraint.is_numeric():
        return _cell(constraint.describe_range())
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
        "names the file, line, key and the valid values. The solver (libnekrsml) and the Python "
        "tools read the same table and apply the same rules.",
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

"""The .par configuration: one parser, nekrs_ml::Config (C++), which nekrs_ml.config reads case
files through (nekrs_ml._core); values, errors and the generated documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from nekrs_ml import _core, config
from nekrs_ml.errors import ConfigError

CASE_PAR = """\
# A channel case: NekRS sections are left alone, ours are validated.
[GENERAL]
polynomialOrder = 7
stopAt = numSteps
numSteps = 1000   # comment
userSections = anything goes here
some line without an equals sign

[Nekrs_ML]
Workflow = TRAIN+INFER
deployment = cluster ; NekRS-style comment
shards = 4
maxMemory = 512MB
namespace = "ChanRe950"
sampleInterval = 5
wallBoundaryIds = 1, 2,3
snapshotDtype = float64
whenfull = Wait
waitTimeout = 2.5e1
hiddenLayers = 32,32,16
learningRate = .0005
validationFraction = 0.2
stopSolver = TRUE
trainDevice = CUDA:1
modelName = "WallModel"   # quoted: case kept

[VELOCITY]
viscosity = -19000

[reproducer]
points = 500
viscosity = 5.2631578947368424e-05
correlation = 1
seed = +7
"""


def parse(text: str, source: str = "case.par"):
    """{section: {key: value}} of .par text."""
    return config.Config.from_text(text, source).as_dict()


def error(text: str, source: str = "case.par") -> str:
    """The message of .par text that must be refused."""
    with pytest.raises(ConfigError) as refused:
        config.Config.from_text(text, source)
    return str(refused.value)


# --- schema and defaults --------------------------------------------------------------------
def test_schema_rows_are_complete():
    rows = config.schema()
    assert {row.section for row in rows} == {"nekrs_ml", "reproducer"}
    assert all(row.type in config.TYPES and row.description for row in rows)
    names = [(row.section, row.key.lower()) for row in rows]
    assert len(names) == len(set(names))


def test_defaults_fill_every_key():
    python = parse("")
    assert [(s, k) for s in python for k in python[s]] == \
        [(row.section, row.key) for row in config.schema()]
    nk = python["nekrs_ml"]
    assert nk["sampleInterval"] == 10 and isinstance(nk["sampleInterval"], int)
    assert nk["timeout"] == 30.0 and isinstance(nk["timeout"], float)
    assert nk["wallBoundaryIds"] == [1] and nk["hiddenLayers"] == [64, 64]
    assert nk["stopSolver"] is False and nk["whenFull"] == "drop"
    assert python["reproducer"]["viscosity"] == 1 / 19000


def test_config_api():
    cfg = config.Config.from_text(CASE_PAR, "case.par")
    assert cfg["nekrs_ml"]["sampleInterval"] == 5
    assert cfg["NEKRS_ML"] == cfg["nekrs_ml"]
    assert cfg.get("NEKRS_ML", "SAMPLEINTERVAL") == 5
    assert cfg.get("reproducer", "seed") == 7
    with pytest.raises(ConfigError, match=r"no section \[GENERAL\]"):
        cfg.get("general", "polynomialOrder")
    with pytest.raises(ConfigError, match="unknown key 'sampleIntervals'"):
        cfg.get("nekrs_ml", "sampleIntervals")
    cfg.set("NEKRS_ML", "maxsnapshots", "7")
    assert cfg["nekrs_ml"]["maxSnapshots"] == 7
    with pytest.raises(ConfigError, match=r"case.par: \[NEKRS_ML\] maxSnapshots = 0: must be between 1 and 1000000"):
        cfg.set("nekrs_ml", "maxSnapshots", "0")
    assert cfg["nekrs_ml"]["maxSnapshots"] == 7


# --- parsing ----------------------------------------------------------------------------------
def test_case_file(tmp_path):
    path = tmp_path / "case.par"
    path.write_text(CASE_PAR)
    python = config.load_par(path).as_dict()
    assert config.load_par(str(path)).source == str(path)
    nk, rep = python["nekrs_ml"], python["reproducer"]
    assert nk["workflow"] == "train+infer" and nk["deployment"] == "cluster"
    assert nk["shards"] == 4 and nk["maxMemory"] == "512mb"
    assert nk["namespace"] == "ChanRe950" and nk["modelName"] == "WallModel"
    assert nk["wallBoundaryIds"] == [1, 2, 3] and nk["hiddenLayers"] == [32, 32, 16]
    assert nk["whenFull"] == "wait" and nk["waitTimeout"] == 25.0
    assert nk["learningRate"] == 0.0005 and nk["stopSolver"] is True
    assert nk["trainDevice"] == "cuda:1" and nk["snapshotDtype"] == "float64"
    assert rep == dict(rep, points=500, correlation=1.0, seed=7)
    assert rep["viscosity"] == 1 / 19000  # [VELOCITY] viscosity is NekRS's, not ours


def test_keys_and_unquoted_values_are_case_insensitive():
    python = parse("[NEKRS_ml]\nMODELNAME = WallModel\nWHENFULL = DROP\n")
    assert python["nekrs_ml"]["modelName"] == "wallmodel"  # as NekRS lower-cases it
    assert python["nekrs_ml"]["whenFull"] == "drop"


def test_quotes_and_comments():
    text = ('[nekrs_ml]\n'
            '; a comment\n'
            '  # an indented comment\n'
            'checkpointDir = "Run A ; #1"  ; comment after the quote\n'
            'namespace = run#1   # a comment needs whitespace before it\n'
            'deployModel=runs;not-a-comment\n')
    python = parse(text)
    assert python["nekrs_ml"]["checkpointDir"] == "Run A ; #1"
    assert python["nekrs_ml"]["namespace"] == "run#1"
    assert python["nekrs_ml"]["deployModel"] == "runs;not-a-comment"


@pytest.mark.parametrize("text", [".5", "5.", "+1e-3", "1E2", "0.0e+0", "1e-400"])
def test_float_spellings(text):
    python = parse(f"[reproducer]\nfluctuation = {text}\n")
    assert python["reproducer"]["fluctuation"] == float(text)


# --- errors ---------------------------------------------------------------------------------
def test_unknown_key_names_key_file_line_and_suggests():
    message = error("[GENERAL]\nfoo = 1\n[NEKRS_ML]\nsampleIntervall = 5\n")
    assert message.startswith("case.par:4: [NEKRS_ML] unknown key 'sampleIntervall'; did you "
                              "mean 'sampleInterval'? valid keys: workflow, deployment")


@pytest.mark.parametrize("key", ["sampleinterval2", "MAXSNAPSHOT", "hidenLayers", "xyz", "a"])
def test_key_suggestion_is_difflibs(key):
    """The C++ suggestion picks the key Python's difflib.get_close_matches picks."""
    import difflib

    keys = [row.key for row in config.schema() if row.section == "nekrs_ml"]
    close = difflib.get_close_matches(key.lower(), [k.lower() for k in keys], n=1, cutoff=0.6)
    expected = next((f"did you mean '{k}'? " for k in keys if close and k.lower() == close[0]), "")
    message = error(f"[NEKRS_ML]\n{key} = 1\n")
    assert message.startswith(f"case.par:2: [NEKRS_ML] unknown key '{key}'; {expected}valid keys")


BAD_VALUES = [
    # (section, key, value, what the message must say)
    ("nekrs_ml", "sampleInterval", "ten", "sampleInterval = 'ten' is not an integer"),
    ("nekrs_ml", "sampleInterval", "2.5", "sampleInterval = '2.5' is not an integer"),
    ("nekrs_ml", "sampleInterval", "0", "sampleInterval = 0: must be >= 1"),
    ("nekrs_ml", "shards", "9" * 20, f"shards = '{'9' * 20}' is out of range"),
    ("nekrs_ml", "timeout", "soon", "timeout = 'soon' is not a number"),
    ("nekrs_ml", "timeout", "inf", "timeout = 'inf' is not a number"),
    ("nekrs_ml", "timeout", "1e999", "timeout = '1e999' is out of range"),
    ("nekrs_ml", "timeout", "0", "timeout = 0: must be > 0 and <= 86400"),
    ("nekrs_ml", "timeout", "1e308", "timeout = 1e308: must be > 0 and <= 86400"),
    ("nekrs_ml", "inferenceTimeout", "86401", "inferenceTimeout = 86401: must be > 0 and <= 86400"),
    ("nekrs_ml", "waitTimeout", "-1", "waitTimeout = -1: must be > 0 and <= 86400"),
    ("nekrs_ml", "maxMemory", "lots", "maxMemory = 'lots' is not a Redis memory size; use a byte "
                                      "count or a number with a unit k, kb, m, mb, g or gb"),
    ("nekrs_ml", "maxMemory", "-1", "maxMemory = '-1' is not a Redis memory size"),
    ("nekrs_ml", "maxMemory", "1.5gb", "maxMemory = '1.5gb' is not a Redis memory size"),
    ("nekrs_ml", "maxMemory", "100kb", "maxMemory = 100kb: must be between 1mb and 4096gb"),
    ("nekrs_ml", "maxMemory", "9999999gb", "maxMemory = 9999999gb: must be between 1mb and 4096gb"),
    ("nekrs_ml", "modelName", "wall:model", "modelName = 'wall:model' is not a valid name: use "
                                            "1-200 characters without '{', '}', ':', spaces"),
    ("nekrs_ml", "modelName", '"wall model"', "modelName = 'wall model' is not a valid name"),
    ("nekrs_ml", "namespace", "run{1}", "namespace = 'run{1}' is not a valid name"),
    ("nekrs_ml", "replayBuffer", "10000000000", "replayBuffer = 10000000000: must be between 1 "
                                                "and 50000000"),
    ("nekrs_ml", "maxSnapshots", "2000000", "maxSnapshots = 2000000: must be between 1 and 1000000"),
    ("nekrs_ml", "keepVersions", "0", "keepVersions = 0: must be between 1 and 100000"),
    ("reproducer", "points", "100000000000", "points = 100000000000: must be between 1 and 10000000"),
    ("nekrs_ml", "validationFraction", "0.95",
     "validationFraction = 0.95: must be between 0 and 0.9"),
    ("reproducer", "correlation", "-0.1", "correlation = -0.1: must be between 0 and 1"),
    ("nekrs_ml", "stopSolver", "maybe", "stopSolver = 'maybe' is not valid; use true or false"),
    ("nekrs_ml", "whenFull", "sometimes", "whenFull = 'sometimes' is not valid; use drop or wait"),
    ("nekrs_ml", "workflow", "learn",
     "workflow = 'learn' is not valid; use train, infer, train+infer or off"),
    ("nekrs_ml", "trainDevice", "cuda:x",
     "trainDevice = 'cuda:x' is not valid; use auto, cpu, cuda or cuda:N"),
    ("nekrs_ml", "wallBoundaryIds", "1,,2",
     "wallBoundaryIds = '1,,2' is not a comma-separated list"),
    ("nekrs_ml", "wallBoundaryIds", "", "wallBoundaryIds = '' is not a comma-separated list"),
    ("nekrs_ml", "hiddenLayers", "64,0", "hiddenLayers = 64,0: every entry must be between 1 "
                                         "and 65536"),
]


@pytest.mark.parametrize("section,key,value,expected", BAD_VALUES,
                         ids=[f"{key}={value}" for _, key, value, _ in BAD_VALUES])
def test_bad_value_names_file_line_key_and_fix(section, key, value, expected):
    message = error(f"[{section.upper()}]\n\n{key} = {value}\n")
    assert message.startswith(f"case.par:3: [{section.upper()}] {expected}")


@pytest.mark.parametrize("text,expected", [
    ("[nekrs_ml]\ntimeout = 1\nTimeOut = 2\n",
     "case.par:3: [NEKRS_ML] timeout is given twice (first on line 2)"),
    ("[nekrs_ml\ntimeout = 1\n", "case.par:1: section header [nekrs_ml is not '[NAME]'"),
    ("[nekrs_ml]\njust words\n", "case.par:2: [NEKRS_ML] expected 'key = value', got just words"),
    ('[nekrs_ml]\nmodelName = "open\n',
     'case.par:2: [NEKRS_ML] modelName: the value "open has no closing'),
    ('[nekrs_ml]\nmodelName = "a" b\n',
     "case.par:2: [NEKRS_ML] modelName: unexpected text after the closing quote"),
])
def test_malformed_lines(text, expected):
    assert error(text).startswith(expected)


@pytest.mark.parametrize("value,expected", [("512mb", "512mb"), ("4GB", "4gb"), ("1000000000", "1000000000"),
                                            ('"2G"', "2G")])
def test_memory_sizes_redis_reads(value, expected):
    assert parse(f"[NEKRS_ML]\nmaxMemory = {value}\n")["nekrs_ml"]["maxMemory"] == expected


def test_a_case_file_without_the_section_says_how_to_add_it(tmp_path):
    path = tmp_path / "case.par"
    path.write_text("[GENERAL]\nnumSteps = 10\n[REPRODUCER]\nsteps = 5\n")
    expected = (f"{path}: no [NEKRS_ML] section; add one to the case file: a line '[NEKRS_ML]' "
                "followed by its options")
    with pytest.raises(ConfigError) as refused:
        config.load_par(path)
    assert str(refused.value).startswith(expected)
    with pytest.raises(ConfigError) as native:  # the solver's reader says the same
        _core.load_config(str(path))
    assert str(native.value) == str(refused.value)
    path.write_text("[GENERAL]\nnumSteps = 10\n[ nekrs_ml ]\n")
    assert config.load_par(path)["nekrs_ml"]["workflow"] == "train"


def test_unreadable_file(tmp_path):
    missing = tmp_path / "missing.par"
    with pytest.raises(ConfigError, match="cannot read .*missing.par: No such file"):
        config.load_par(missing)


def test_python_reads_cases_with_the_cpp_parser(tmp_path):
    """nekrs_ml.config is a view of nekrs_ml::Config: the same object the solver builds, and the
    schema compiled into the library is the one in the package."""
    path = tmp_path / "case.par"
    path.write_text(CASE_PAR)
    assert config.load_par(path).as_dict() == _core.load_config(str(path))
    assert isinstance(config.load_par(path)._native, _core.Config)
    tsv = (Path(config.__file__).with_name("config_schema.tsv")).read_text().splitlines()
    rows = [tuple(line.split("\t")) for line in tsv if line.strip() and not line.startswith("#")]
    assert [tuple(vars(option).values()) for option in config.schema()] == rows


# --- documentation --------------------------------------------------------------------------
def test_markdown_is_deterministic_and_complete():
    text = config.markdown()
    assert text == config.markdown()
    assert "## [NEKRS_ML]" in text and "## [REPRODUCER]" in text
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [re.match(r"\| `([^`]+)`", row).group(1) for row in rows] == \
        [option.key for option in config.schema()]
    # Escaped pipes keep every row at 6 cells.
    assert all(len(re.split(r"(?<!\\)\|", row)) == 8 for row in rows)
    assert "`train`, `infer`, `train+infer`, `off`" in text
    assert "between 0 and 0.9" in text


def test_docs_file_is_up_to_date():
    docs = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    if not docs.exists():
        pytest.skip("docs/configuration.md is not in this checkout")
    assert docs.read_text() == config.markdown(), \
        "regenerate it: python -m nekrs_ml.config > docs/configuration.md"


# --- settings built from a case -------------------------------------------------------------
def test_namespace_precedence():
    """Every part resolves the namespace alike: option > $NEKRS_ML_NAMESPACE > .par > nkml."""
    from nekrs_ml.environment import NAMESPACE, resolve_namespace

    env = {NAMESPACE: "fromenv"}
    assert resolve_namespace("fromcli", "frompar", env) == "fromcli"
    assert resolve_namespace(None, "frompar", env) == "fromenv"
    assert resolve_namespace(None, "frompar", {}) == "frompar"
    assert resolve_namespace(None, None, {}) == "nkml"
    with pytest.raises(ConfigError, match=r"\$NEKRS_ML_NAMESPACE = 'a:b' is not a valid namespace"):
        resolve_namespace(None, "frompar", {NAMESPACE: "a:b"})


def test_worker_and_deploy_settings_from_a_case(tmp_path, monkeypatch):
    from nekrs_ml.environment import NAMESPACE
    from nekrs_ml.serve.settings import DeploySettings, WorkerSettings

    monkeypatch.delenv(NAMESPACE, raising=False)
    par = tmp_path / "case" / "infer.par"
    par.parent.mkdir()
    par.write_text('[NEKRS_ML]\nnamespace = chan\nworkerDevice = cuda:1\nmaxBatch = 8\n'
                   'maxWaitMs = 2\nmodelName = "Wall"\ndeployModel = "../runs/train/Wall.pt"\n')
    worker = WorkerSettings.resolve(par, max_batch=16, worker=1)
    assert (worker.namespace, worker.device, worker.max_batch, worker.max_wait_s) == \
        ("chan", "cuda:1", 16, 0.002)
    assert worker.reload_interval_s == 0.25 and worker.worker == 1
    bare = WorkerSettings.resolve(None)
    assert (bare.namespace, bare.device, bare.max_batch) == ("nkml", "cpu", 64)
    deploy = DeploySettings.from_par(par, namespace="other")
    assert deploy.model_file == (tmp_path / "runs" / "train" / "Wall.pt").resolve()
    assert (deploy.model_name, deploy.namespace) == ("Wall", "other")
    absolute = tmp_path / "m.pt"
    par.write_text(f'[NEKRS_ML]\ndeployModel = "{absolute}"\n')
    assert DeploySettings.from_par(par).model_file == absolute
    par.write_text('[NEKRS_ML]\n')
    assert DeploySettings.from_par(par).model_file is None

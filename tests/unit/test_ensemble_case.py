"""The [ENSEMBLE], [MEMBER x] and [MODEL x] sections of a case .par (nekrs_ml.launch.ensemble_case):
what they give each member's and model's .par, and the errors a bad one gets."""

from pathlib import Path

import pytest

from nekrs_ml.config import load_par
from nekrs_ml.errors import ConfigError
from nekrs_ml.launch.ensemble_case import is_ensemble, load_ensemble

BASE = """
[NEKRS_ML]
workflow = train+infer
modelName = wall_model
solverRanks = 1
hiddenLayers = 64,64   # inline comment

[REPRODUCER]
steps = 100
reTau = 950
"""

ENSEMBLE = BASE + """
[ENSEMBLE]
members = re550, re950
heldOut = re2000
models = wall_model, small
memberFailure = abort

[MEMBER re550]
reproducer.reTau = 550
reproducer.seed = 1
startDelay = 2.5

[MEMBER re950]

[MEMBER re2000]
reproducer.reTau = 2000
nekrs_ml.solverRanks = 2

[MODEL small]
hiddenLayers = 16
learningRate = 0.01
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "case.par"
    path.write_text(text)
    return path


def test_members_and_models_get_their_own_par(tmp_path):
    par = write(tmp_path, ENSEMBLE)
    plain = tmp_path / "plain"
    plain.mkdir()
    assert is_ensemble(par) and not is_ensemble(write(plain, BASE))
    case = load_ensemble(par)
    assert [m.name for m in case.members] == ["re550", "re950", "re2000"]
    assert [m.name for m in case.held_out_members] == ["re2000"]
    assert case.member_failure == "abort"
    re550 = case.members[0]
    assert re550.start_delay_s == 2.5
    member = case.member_par(re550, tmp_path / "re550.par")
    assert member["reproducer"]["reTau"] == 550 and member["reproducer"]["seed"] == 1
    assert member["reproducer"]["steps"] == 100  # the case's own value stays
    assert load_par(tmp_path / "re550.par")["nekrs_ml"]["hiddenLayers"] == [64, 64]
    held = case.member_par(case.members[2], tmp_path / "re2000.par")
    assert held["nekrs_ml"]["solverRanks"] == 2 and held["reproducer"]["reTau"] == 2000
    small = case.model_par(case.models[1], tmp_path / "small.par")
    assert small["nekrs_ml"]["modelName"] == "small"
    assert small["nekrs_ml"]["hiddenLayers"] == [16]
    assert small["nekrs_ml"]["learningRate"] == 0.01
    # the generated .par has no ensemble sections: a member is an ordinary case
    assert not is_ensemble(tmp_path / "re550.par")


@pytest.mark.parametrize("change, expected", [
    (("memberFailure = abort", "memberFailure = sometimes"), "memberFailure = 'sometimes'"),
    (("heldOut = re2000", "heldOut = re550"), "both in members and heldOut"),
    (("[MEMBER re950]\n", ""), "has no [MEMBER re950] section"),
    (("members = re550, re950", "members = re550, Re 950"), "is not a member or model name"),
    (("startDelay = 2.5", "startDelay = soon"), "startDelay = soon"),
    (("reproducer.seed = 1", "seed = 1"), "a member's key is SECTION.KEY"),
    (("reproducer.seed = 1", "nekrs_ml.deployment = cluster"), "is the whole run's"),
    (("learningRate = 0.01", "workers = 4"), "a model sets its trainer's"),
    (("models = wall_model, small", "models = small"), "does not train it"),
    (("memberFailure = abort", "memberFailure = abort\nspread = yes"), "has no key 'spread'"),
    (("[MODEL small]", "[MODEL tiny]"), "names no model of [ENSEMBLE]"),
    (("reproducer.reTau = 550", "reproducer.reTau = -5"), "[MEMBER re550]"),
    (("workflow = train+infer", "workflow = infer"), "an ensemble trains"),
    (("modelName = wall_model", "modelName = wall_model\nwhenFull = wait"), "whenFull = drop"),
])
def test_bad_ensembles_are_refused_naming_the_key(tmp_path, change, expected):
    old, new = change
    assert old in ENSEMBLE
    par = write(tmp_path, ENSEMBLE.replace(old, new, 1))
    with pytest.raises(ConfigError) as error:
        case = load_ensemble(par)
        for member in case.members:  # an override's value is checked as its .par is written
            case.member_par(member, tmp_path / f"{member.name}.par")
    assert expected in str(error.value)


def test_keys_before_the_first_section_are_kept(tmp_path):
    """NekRS takes keys before any section (userSections = ...): a NekRS case is not mistaken for
    a broken file, and a member's .par keeps them at its top."""
    par = write(tmp_path, "userSections = nekrs_ml, casedata\n" + ENSEMBLE)
    assert is_ensemble(par)
    case = load_ensemble(par)
    case.member_par(case.members[0], tmp_path / "m.par")
    first = [line for line in (tmp_path / "m.par").read_text().splitlines()
             if line and not line.startswith("#")][0]
    assert first == "usersections = nekrs_ml, casedata"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert not is_ensemble(write(plain, "userSections = casedata\n" + BASE))


def test_a_planted_link_is_replaced_not_followed(tmp_path):
    par = write(tmp_path, ENSEMBLE)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    target = tmp_path / "member.par"
    target.symlink_to(victim)
    case = load_ensemble(par)
    case.member_par(case.members[0], target)
    assert victim.read_text() == "keep me"
    assert not target.is_symlink() and "[REPRODUCER]" in target.read_text()


def test_a_member_with_its_own_case_file(tmp_path):
    """par = FILE: the member starts from its own case; the ensemble's [NEKRS_ML] holds for it
    and its overrides apply on top."""
    (tmp_path / "own.par").write_text("[NEKRS_ML]\nworkflow = off\nsampleInterval = 7\n"
                                      "[REPRODUCER]\nsteps = 55\nreTau = 300\n[CASEDATA]\nz = 1\n")
    par = write(tmp_path, ENSEMBLE.replace("[MEMBER re950]\n",
                                           "[MEMBER re950]\npar = own.par\nreproducer.reTau = 310\n"))
    case = load_ensemble(par)
    member = case.member_par(case.members[1], tmp_path / "re950.par")
    assert member["reproducer"]["steps"] == 55 and member["reproducer"]["reTau"] == 310
    assert member["nekrs_ml"]["workflow"] == "train+infer"  # the ensemble's
    assert member["nekrs_ml"]["sampleInterval"] == 7        # its own, where the ensemble is silent
    assert "[CASEDATA]" in (tmp_path / "re950.par").read_text()
    missing = write(tmp_path, ENSEMBLE.replace("[MEMBER re950]\n", "[MEMBER re950]\npar = gone.par\n"))
    with pytest.raises(ConfigError, match="gone.par is not a file"):
        load_ensemble(missing)

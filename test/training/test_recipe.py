"""Recipes (training/configs/*.yaml) and `promote`, the one writer of models/defaults.json."""

import json
import shutil
from pathlib import Path

import pytest

from training.promote import promote
from training.recipe import RecipeError, load_recipe, main, select
from vae_ood_monitor.bundle import BundleError, load_bundle

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("recipe", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_every_shipped_recipe_loads_and_runs_modules_that_exist(recipe):
    import importlib.util

    description, steps = load_recipe(recipe)
    assert description and steps
    for step in steps:
        assert importlib.util.find_spec(step.module), f"{recipe.name}: {step.module}"


def test_arguments_become_flags_positionals_and_lists(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n"
        "  - name: merge\n"
        "    run: training.data.merge\n"
        "    args: {_: [a, b], out: c, id_budget: 0.001, extrapolate_tail: true, skip: false,"
        " detectors: [bvae, flow]}\n"
        "    creates: c\n"
    )
    _, [step] = load_recipe(recipe)
    assert step.argv == (
        "a", "b", "--out", "c", "--id-budget", "0.001", "--extrapolate-tail",
        "--detectors", "bvae", "flow",
    )  # fmt: skip
    assert step.creates == Path("c")


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: []", "non-empty list `steps`"),
        ("steps: [{args: {}}]", r"step 1: needs `run: <module>`"),
        ("steps: [{run: m, name: a}, {run: m, name: a}]", "step 2: the name 'a' is used twice"),
        ("steps: [{run: m, retries: 3}]", r"unknown keys \['retries'\]"),
        ("steps: [{run: m, args: {x: {y: 1}}}]", "argument 'x' must be text"),
        ("steps: [", "not valid YAML"),
    ],
)
def test_bad_recipes_are_refused_naming_the_step(tmp_path, text, message):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    with pytest.raises(RecipeError, match=message):
        load_recipe(recipe)


def test_a_recipe_runs_its_steps_in_order_and_stops_at_the_first_failure(tmp_path, capsys):
    out = tmp_path / "out.txt"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "steps:\n"
        f"  - {{name: one, run: training.recipe, args: {{_: [{recipe}], only: two}}}}\n"
        f"  - {{name: two, run: json.tool, args: {{_: [{tmp_path / 'in.json'}, {out}]}}}}\n"
        f"  - {{name: three, run: json.tool, args: {{_: [{tmp_path / 'missing.json'}]}}}}\n"
        "  - {name: four, run: json.tool}\n"
    )
    (tmp_path / "in.json").write_text('{"a": 1}')
    assert main([str(recipe)]) != 0
    printed = capsys.readouterr()
    assert json.loads(out.read_text()) == {"a": 1}
    assert "step 'three' failed" in printed.err and "[4/4]" not in printed.out
    with pytest.raises(RecipeError, match="no step 'five'"):
        select(load_recipe(recipe)[1], "five", None)


def test_promote_ships_verified_bundles_and_writes_the_defaults(tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    (models / "defaults.json").write_text('{"bvae": "bvae_student", "flow": "flow_student"}')
    flow = shutil.copytree(REPO / "test" / "runtime" / "data" / "flow_tiny", tmp_path / "f")
    defaults = promote({"flow": flow}, models)
    assert defaults == {"bvae": "bvae_student", "flow": "flow_student"}
    shipped = load_bundle(models / "flow_student")
    assert shipped.provenance["shipped_as"] == {"name": "flow_student", "from": str(flow)}
    with pytest.raises(BundleError, match="a flow bundle, given as the bvae one"):
        promote({"bvae": flow}, models)
    assert not (models / "bvae_student").exists()

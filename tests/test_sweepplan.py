"""The sweep planner: file -> validated spec -> ordered trials. Pure: every test is in-process."""
from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from projectrun.durations import parse_duration
from projectrun.errors import ParameterError, SpecError, UsageError
from projectrun.spec import EntryPoint, Parameter
from projectrun.sweepplan import (
    Execution,
    Fixed,
    SweepPlan,
    SweepSpec,
    Values,
    check_against_entry_point,
    expand,
    load_sweep,
    normalize_value,
    parse_grid_flags,
    spec_from_grid,
    trial_key,
)
from projectrun.yamlfile import load_schema


def sweep(tmp_path: Path, body: str, name: str = "sweep.yaml") -> SweepSpec:
    path = tmp_path / name
    path.write_text("project: .\n" + textwrap.dedent(body).lstrip("\n"))
    return load_sweep(path)


def combos(spec: SweepSpec) -> list[dict[str, str]]:
    return [t.params for t in expand(spec).trials]


def problems(tmp_path: Path, body: str) -> list[str]:
    with pytest.raises(SpecError) as info:
        sweep(tmp_path, body)
    return info.value.problems


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(load_schema("sweep.schema.json"))


# --- grid ------------------------------------------------------------------------------------


def test_grid_is_the_product_in_file_order_last_fastest(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          epochs: 5
          optimizer: [sgd, adam]
          batch_size: [16, 32, 64]
    """)
    got = combos(spec)
    assert len(got) == 6
    assert [(c["optimizer"], c["batch_size"]) for c in got[:3]] == [
        ("sgd", "16"), ("sgd", "32"), ("sgd", "64")]
    assert all(c["epochs"] == "5" for c in got)
    assert list(got[0]) == ["epochs", "optimizer", "batch_size"]
    assert [t.index for t in expand(spec).trials] == list(range(6))


def test_only_fixed_values_is_one_trial(tmp_path: Path) -> None:
    assert combos(sweep(tmp_path, "parameters: {alpha: 0.5}\n")) == [{"alpha": "0.5"}]


def test_from_to_step_has_an_inclusive_end_and_exact_floats(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          a: {from: 0.1, to: 0.3, step: 0.1}
          b: {from: 2, to: 8, step: 2}
          c: {from: 10, to: 1, step: -3}
          d: {from: 0, to: 1, step: 0.3}
    """)
    values = {k: d.values for k, d in spec.parameters.items() if isinstance(d, Values)}
    assert values["a"] == ("0.1", "0.2", "0.3")
    assert values["b"] == ("2", "4", "6", "8")
    assert values["c"] == ("10", "7", "4", "1")
    assert values["d"] == ("0.0", "0.3", "0.6", "0.9")


def test_lin_and_geom_are_inclusive_real_values(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          lin: {lin: [0.0, 1.0], num: 5}
          lr: {geom: [1e-4, 1e-1], num: 4}    # PyYAML reads 1e-4 as text; bounds still count
          width: {geom: [1, 1000], num: 4}
          steps: {lin: [0, 100], num: 3}
    """)
    values = {k: d.values for k, d in spec.parameters.items() if isinstance(d, Values)}
    assert values["lin"] == ("0.0", "0.25", "0.5", "0.75", "1.0")
    assert values["lr"] == ("0.0001", "0.001", "0.01", "0.1")
    assert values["width"] == ("1", "10", "100", "1000")
    assert values["steps"] == ("0", "50", "100")


def test_cases_move_together_and_cross_the_grid(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          lr: [0.1, 0.01]
        cases:
          - {model: small, hidden: 64}
          - {model: large, hidden: 512}
    """)
    got = combos(spec)
    assert [(c["lr"], c["model"], c["hidden"]) for c in got] == [
        ("0.1", "small", "64"), ("0.1", "large", "512"),
        ("0.01", "small", "64"), ("0.01", "large", "512"),
    ]


# --- include / exclude: the examples of GitHub's matrix documentation ---------------------


def test_github_include_example(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          fruit: [apple, pear]
          animal: [cat, dog]
        include:
          - color: green
          - color: pink
            animal: cat
          - fruit: apple
            shape: circle
          - fruit: banana
          - fruit: banana
            animal: cat
    """)
    assert combos(spec) == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_github_include_extends_one_combination(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          os: [windows-latest, ubuntu-latest]
          node: [14, 16]
        include:
          - {os: windows-latest, node: 16, npm: 6}
    """)
    got = combos(spec)
    assert len(got) == 4
    assert [c.get("npm") for c in got] == [None, "6", None, None]


def test_github_exclude_example_partial_match(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          os: [macos-latest, windows-latest]
          version: [12, 14, 16]
          environment: [staging, production]
        exclude:
          - {os: macos-latest, version: 12, environment: production}
          - {os: windows-latest, version: 16}
    """)
    got = combos(spec)
    assert len(got) == 9
    assert {"os": "windows-latest", "version": "16", "environment": "staging"} not in got


def test_exclude_before_include_and_numbers_match_numerically(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          lr: [0.1, 1.0e-2]
          bs: [32, 64]
        exclude:
          - {lr: 1e-2, bs: 64}     # text 1e-2 matches the number 0.01
        include:
          - {lr: 0.01, bs: 64, note: back}
    """)
    got = combos(spec)
    assert len(got) == 4
    assert got[-1] == {"lr": "0.01", "bs": "64", "note": "back"}


def test_include_overrides_fixed_values_and_new_combinations_inherit_them(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          epochs: 10
          model: [small, large]
        include:
          - {model: large, epochs: 3}
          - {model: huge}
    """)
    assert combos(spec) == [
        {"epochs": "10", "model": "small"},
        {"epochs": "3", "model": "large"},
        {"epochs": "10", "model": "huge"},
    ]


def test_include_only_with_fixed_values_adds_one_trial_per_entry(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters: {epochs: 10}
        include: [{lr: 0.1}, {lr: 0.2}]
    """)
    assert combos(spec) == [{"epochs": "10", "lr": "0.1"}, {"epochs": "10", "lr": "0.2"}]


# --- random ------------------------------------------------------------------------------


RANDOM = """
    method: random
    samples: 6
    seed: {seed}
    parameters:
      lr: {{log_uniform: [1.0e-5, 1.0e-1]}}
      dropout: {{uniform: [0.0, 0.5]}}
      layers: {{int_uniform: [2, 6]}}
      optimizer: [sgd, adam]
"""


def test_random_is_reproducible_from_its_seed(tmp_path: Path) -> None:
    first = combos(sweep(tmp_path, RANDOM.format(seed=7)))
    again = combos(sweep(tmp_path, RANDOM.format(seed=7)))
    other = combos(sweep(tmp_path, RANDOM.format(seed=8)))
    assert first == again
    assert first != other
    assert len(first) == 6
    for c in first:
        assert 1e-5 <= float(c["lr"]) <= 1e-1
        assert 0.0 <= float(c["dropout"]) <= 0.5
        assert c["layers"] in {"2", "3", "4", "5", "6"}
        assert c["optimizer"] in {"sgd", "adam"}


def test_random_over_a_discrete_space_draws_without_replacement(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        method: random
        samples: 10
        seed: 1
        parameters:
          a: [1, 2, 3]
          b: {choice: [x, y]}
        exclude: [{a: 3, b: y}]
    """)
    plan = expand(spec)
    keys = [t.key for t in plan.trials]
    assert len(keys) == len(set(keys)) == 5          # 3*2 - 1 excluded, each once
    assert any("more than the 5 distinct combinations" in n for n in plan.notes)
    small = expand(replace(spec, samples=4))
    assert len({t.key for t in small.trials}) == 4


def test_random_over_a_huge_discrete_space_is_sampled_by_index(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        method: random
        samples: 50
        seed: 3
        parameters:
          a: {int_uniform: [0, 1000000]}
          b: {int_uniform: [0, 1000000]}
    """)
    plan = expand(spec)
    assert len({t.key for t in plan.trials}) == 50
    assert plan.trials == expand(spec).trials


def test_missing_seed_is_picked_and_recorded(tmp_path: Path) -> None:
    spec = sweep(tmp_path, "method: random\nsamples: 3\nparameters: {x: {uniform: [0, 1]}}\n")
    plan = expand(spec)
    assert isinstance(plan.seed, int)
    assert any(f"seed: {plan.seed}" in n for n in plan.notes)
    assert expand(replace(spec, seed=plan.seed)).trials == plan.trials


# --- max_runs ----------------------------------------------------------------------------


def test_max_runs_is_a_seeded_order_preserving_subsample(tmp_path: Path) -> None:
    body = "seed: 11\nmax_runs: 5\nparameters:\n  a: {from: 1, to: 6, step: 1}\n  b: [x, y, z]\n"
    full = combos(sweep(tmp_path, body.replace("max_runs: 5\n", "")))
    sub = combos(sweep(tmp_path, body))
    assert len(sub) == 5
    assert sub == combos(sweep(tmp_path, body))
    positions = [full.index(c) for c in sub]
    assert positions == sorted(positions)
    other = combos(sweep(tmp_path, body.replace("seed: 11", "seed: 12")))
    assert other != sub


# --- keys, rendering, round trip --------------------------------------------------------


def test_trial_key_treats_numerically_equal_values_as_equal() -> None:
    assert normalize_value("3e6") == normalize_value("3000000") == normalize_value("3000000.0")
    assert normalize_value("0.10") == normalize_value("1e-1")
    assert normalize_value("-0.0") == normalize_value("0")
    assert normalize_value("abc") != normalize_value("3e6")
    assert trial_key({"n": "3e6", "m": "x"}) == trial_key({"m": "x", "n": "3000000.0"})
    assert trial_key({"n": "3e6"}) != trial_key({"n": "3e7"})
    assert trial_key({"s": "True"}) != trial_key({"s": "true"})  # strings stay strings
    assert len(trial_key({"n": "1"})) == 12


def test_values_render_as_the_minus_p_text(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          a: [1, 0.001, 3.0e+6, 3e6, true, text, 1.0e-5]
    """)
    assert spec.parameters["a"] == Values(
        ("1", "0.001", "3000000.0", "3e6", "true", "text", "1e-05"))
    plan = expand(spec)
    assert len(plan.trials) == 6                       # 3.0e+6 and 3e6 are one trial
    assert any("duplicate" in n for n in plan.notes)


def test_plan_json_round_trip(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        name: wine
        experiment: wine-quality
        entry_point: train
        seed: 4
        max_runs: 2
        parallel: 3
        on_failure: fail_fast
        max_failures: 2
        retries: 1
        timeout: 1h30m
        objective: {metric: rmse, goal: minimize}
        parameters: {a: [1, 2, 3], b: 'x,y'}
    """)
    plan = expand(spec)
    text = plan.to_json()
    json.loads(text)
    back = SweepPlan.from_json(text)
    assert back == plan
    assert back.execution == Execution(parallel=3, on_failure="fail_fast", max_failures=2,
                                       retries=1, timeout=5400.0)
    assert back.objective is not None and back.objective.goal == "minimize"


def test_fingerprint_follows_the_trials_not_the_execution_options(tmp_path: Path) -> None:
    spec = sweep(tmp_path, "parameters: {a: [1, 2]}\n")
    assert spec.fingerprint == replace(spec, execution=Execution(parallel=8)).fingerprint
    assert spec.fingerprint != replace(spec, parameters={"a": Values(("1", "3"))}).fingerprint
    assert expand(spec).fingerprint == spec.fingerprint
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    assert sweep(moved, "parameters: {a: [1, 2]}\n").fingerprint == spec.fingerprint


def test_project_is_resolved_from_the_sweep_file_directory(tmp_path: Path) -> None:
    path = tmp_path / "sweeps" / "s.yaml"
    path.parent.mkdir()
    path.write_text("project: ../proj#sub\nparameters: {}\n")
    assert load_sweep(path).project == str((tmp_path / "proj").resolve()) + "#sub"
    path.write_text("project: https://github.com/mlflow/mlflow-example.git\n")
    assert load_sweep(path).project == "https://github.com/mlflow/mlflow-example.git"
    path.write_text("project: git@github.com:mlflow/mlflow-example.git\n")
    assert load_sweep(path).project == "git@github.com:mlflow/mlflow-example.git"


# --- errors --------------------------------------------------------------------------------


def test_unknown_keys_are_errors_with_their_own_line(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        entry_point: train
        paralel: 4
        parameters:
          lr: {lin: [0, 1], nun: 3}
    """)
    known = found[0].split("known keys: ")[1]
    assert found[0].endswith("sweep.yaml:3: unknown key 'paralel' in the sweep file "
                             "(did you mean 'parallel'?); known keys: " + known)
    assert "sweep.yaml:5: unknown key 'nun' in parameter 'lr' (did you mean 'num'?)" in found[1]


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        samples: 4
        parameters:
          lr: {lin: [0, 1]}
          x: {uniform: [0, 1]}
          y: {from: 1, to: 0, step: 1}
          z: {from: 1, to: 2, step: 1, num: 3}
        cases: [{lr: 3}]
        exclude: [{modle: 3}]
    """)
    lines = [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in found]
    assert lines == ["2", "4", "5", "6", "7", "8", "9"]
    assert "needs num" in found[1]
    assert "cannot be enumerated by method: grid" in found[2]
    assert "flip its sign" in found[3]
    assert "'num' does not go with 'from'" in found[4]
    assert "both under parameters and in cases" in found[5]
    assert "exclude key 'modle'" in found[6]


def test_schema_problems_carry_lines(tmp_path: Path) -> None:
    found = problems(tmp_path, """
        method: bayes
        parameters:
          a: null
        objective: {metric: m, goal: up}
        timeout: soon
    """)
    lines = [p.split(": ", 1)[0].rsplit(":", 1)[1] for p in found]
    assert lines == ["2", "4", "5", "6"]
    assert "not a duration" in found[3]


def test_random_needs_samples_and_rejects_max_runs(tmp_path: Path) -> None:
    found = problems(tmp_path, "method: random\nmax_runs: 3\nparameters: {a: [1, 2]}\n")
    assert any("needs samples" in p for p in found)
    assert any("max_runs is for method: grid" in p for p in found)


def test_timeout_parsing() -> None:
    assert parse_duration(90) == 90.0
    assert parse_duration("90") == 90.0
    assert parse_duration("90s") == 90.0
    assert parse_duration("10m") == 600.0
    assert parse_duration("1h30m") == 5400.0
    assert parse_duration("1h 30m") == 5400.0
    assert parse_duration("1.5h") == 5400.0
    assert parse_duration("2d") == 172800.0
    for bad in ("soon", "1h30", "", "0", "-5", "10 minutes"):
        with pytest.raises(ValueError):
            parse_duration(bad)


# --- against the MLproject entry point ---------------------------------------------------


def entry_point(declared: bool = True) -> EntryPoint:
    params = {
        "learning_rate": Parameter("learning_rate", "float", 0.1),
        "batch_size": Parameter("batch_size", "int", 32),
        "data": Parameter("data", "string", None),
    }
    return EntryPoint("train", params if declared else {}, "python train.py", declared=declared)


def test_unknown_parameter_names_get_a_suggestion_and_the_declared_list(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          data: d.csv
          lerning_rate: [0.1, 0.2]
          batch: [16]
    """)
    with pytest.raises(ParameterError) as info:
        check_against_entry_point(spec, entry_point())
    message = str(info.value)
    assert "'lerning_rate' (did you mean 'learning_rate'?)" in message
    assert "'batch' (did you mean 'batch_size'?)" in message
    assert "Declared: learning_rate, batch_size, data" in message


def test_values_are_checked_against_declared_types_and_required_names(tmp_path: Path) -> None:
    spec = sweep(tmp_path, """
        parameters:
          learning_rate: [0.1, fast]
          batch_size: [32, 1.5]
    """)
    with pytest.raises(ParameterError) as info:
        check_against_entry_point(expand(spec), entry_point())
    message = str(info.value)
    assert "learning_rate=fast: 'learning_rate' is a float parameter" in message
    assert "batch_size=1.5: 'batch_size' is an int parameter" in message
    assert "required parameter 'data'" in message
    assert message.count("learning_rate=fast") == 1


def test_a_valid_sweep_passes_and_script_entry_points_take_any_name(tmp_path: Path) -> None:
    spec = sweep(tmp_path,
                 "parameters: {data: d.csv, learning_rate: [1e-3, 0.01], batch_size: [16]}\n")
    check_against_entry_point(spec, entry_point())
    check_against_entry_point(spec, entry_point(declared=False))


# --- inline grid from the CLI ------------------------------------------------------------


def test_parse_grid_flags_splits_on_commas_with_escapes() -> None:
    got = parse_grid_flags(["alpha=0.1,0.2", r"label=a\,b,c", "path=C:\\x,y", "eq=k=v"])
    assert got == {"alpha": ["0.1", "0.2"], "label": ["a,b", "c"], "path": ["C:\\x", "y"],
                   "eq": ["k=v"]}
    for bad in (["alpha"], ["=1,2"], ["a=1,"], ["a=1", "a=2"]):
        with pytest.raises(UsageError):
            parse_grid_flags(bad)


def test_spec_from_grid_builds_a_grid(tmp_path: Path) -> None:
    spec = spec_from_grid(".", "train", {"data": "d.csv"},
                          parse_grid_flags(["lr=0.1,0.2", "bs=16,32"]), max_runs=3, seed=5)
    assert spec.parameters["data"] == Fixed("d.csv")
    plan = expand(spec)
    assert len(plan.trials) == 3 and plan.seed == 5
    assert plan.trials[0].params["data"] == "d.csv"
    with pytest.raises(UsageError):
        spec_from_grid(".", fixed={"lr": "1"}, grid={"lr": ["1", "2"]})

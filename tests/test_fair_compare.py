"""Fair comparisons (tlbench compare): the spec refuses unfair protocols, the statistics match hand
computations, a tiny real comparison gives every arm the same trials and its export rebuilds its tables
byte for byte, and every committed study rebuilds from its committed export."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest
from helpers import CONF_DIR, compose

from tlbench.compare.spec import load_spec, spec_from_dict
from tlbench.errors import ConfigError
from tlbench.report.compare import holm, t_interval

ROOT = Path(__file__).resolve().parent.parent
SHARED = {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}}


def spec(**changes):
    raw = {
        "tuning": {"n_trials": 2, "seed": 100},
        "eval_seeds": [0, 1, 2, 3, 4],
        "shared": SHARED,
        "arms": {"source_only": {"overrides": ["adapt=source_only"]}, "dann": {"overrides": ["adapt=dann"]}},
    }
    raw.update(changes)
    return spec_from_dict("t", raw)


# ------------------------------------------------------------------ the spec refuses what is not fair
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"eval_seeds": [0, 1, 2, 3, 100]}, "disjoint"),
        ({"eval_seeds": [0, 1, 2]}, "at least 5"),
        ({"rule": "oracle"}, "without target labels"),
        ({"rule": "last"}, "without target labels"),
        ({"tuning": {"n_trials": 0}}, "n_trials"),
        ({"tuning": {"n_trials": 2, "sampler": "grid"}}, "sampler"),
        ({"tuning": {"n_trials": 2, "trials_for_dann": 9}}, "unknown tuning key"),
        ({"baseline": "erm"}, "baseline 'erm' is not an arm"),
        ({"shared": None}, "searches nothing"),
        ({"sensitivity": {"arms": ["cdan"], "key": "adapt.trade_off", "values": [1]}}, "unknown: cdan"),
        ({"budget": 3}, "unknown key"),
        # a source-free arm: it cannot be chosen by source validation, and its source model needs a labelled arm
        ({"arms": {"source_only": {}, "shot": {"source_phase": {"arm": "source_only"}}}}, "reads the source split"),
        ({"arms": {"source_only": {}, "shot": {"rule": "im", "source_phase": {"arm": "erm"}}}}, "is not an arm"),
        ({"arms": {"source_only": {}, "shot": {"rule": "im", "source_phase": {"arm": "source_only", "fraction": 1}}}}, "strictly between"),
        ({"arms": {"source_only": {}, "shot": {"rule": "oracle", "source_phase": {"arm": "source_only"}}}}, "without target labels"),
        ({"baseline": "shot", "arms": {"source_only": {}, "shot": {"rule": "im", "source_phase": {"arm": "source_only"}}}}, "is source-free"),
    ],
)
def test_spec_refuses_unfair_or_broken_protocols(changes, message):
    with pytest.raises(ConfigError, match=message):
        spec(**changes)


def test_every_arm_searches_the_shared_space_plus_its_own_knobs():
    s = spec(arms={"source_only": {}, "dann": {"params": {"adapt.trade_off": {"type": "float", "low": 0.1, "high": 3}}}})
    assert list(s.arms["source_only"].params) == ["optim.lr"]
    assert list(s.arms["dann"].params) == ["optim.lr", "adapt.trade_off"]
    assert s.n_trials == 2  # one budget for the whole comparison: no arm can declare its own


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF_DIR / "compare").glob("*.yaml")))
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_committed_comparisons_compose_every_arm_at_its_search_bounds(name):
    from tlbench.compare.protocol import arm_overrides
    from tlbench.config import validate

    whole = load_spec(name)
    s = whole.for_task(next(iter(whole.tasks))) if whole.tasks else whole
    for task in whole.tasks:
        validate(compose(whole.for_task(task).overrides))
    for arm in s.arms.values():
        for key, param in arm.params.items():
            for value in param.choices if param.type == "categorical" else [param.low, param.high]:
                run = validate(compose([*arm_overrides(s, arm), f"{key}={value}"]))
                assert run.selection == s.rule_of(arm.name)
    if s.upper_bound:
        run = validate(compose([*arm_overrides(s, s.arms[s.upper_bound.arm]), *s.upper_bound.overrides]))
        assert run.data.source == run.data.target  # trained on the target's own labelled split


def test_a_comparison_with_tasks_runs_each_task_in_its_own_folder_with_its_overrides(tmp_path):
    from tlbench.compare.protocol import task_runs

    s = spec(overrides=["experiment=dg_rotated_fashion"], tasks={75: ["data.target=rotated_fashion:75"], "0": ["data.target=rotated_fashion:0"]})
    runs = task_runs(s, tmp_path)
    assert [(task, where.out) for task, _, where in runs] == [("75", tmp_path / "75"), ("0", tmp_path / "0")]
    assert runs[0][1].overrides == ["experiment=dg_rotated_fashion", "data.target=rotated_fashion:75"] and not runs[0][1].tasks
    assert [t for t, _, _ in task_runs(s, tmp_path, ["0"])] == ["0"]
    with pytest.raises(ConfigError, match="unknown task"):
        task_runs(s, tmp_path, ["30"])
    with pytest.raises(ConfigError, match="has no tasks"):
        task_runs(spec(), tmp_path, ["0"])
    assert task_runs(spec(), tmp_path)[0][2].out == tmp_path
    with pytest.raises(ConfigError, match="tasks"):
        spec(tasks={"a/b": []})


def test_the_task_summary_puts_each_tasks_table_side_by_side_with_their_mean(tmp_path):
    import pandas as pd

    from tlbench.report.fair import write_task_summary

    for task, (erm, irm, verdict) in {"75": (50.0, 40.0, "worse (Holm p=0.01)"), "0": (60.0, 61.0, "within noise (Holm p=0.5)")}.items():
        (tmp_path / task).mkdir()
        pd.DataFrame(
            [
                {"arm": "source_only", "role": "baseline", "mean": erm, "ci95": 1.0, "verdict": "baseline"},
                {"arm": "irm", "role": "method", "mean": irm, "ci95": 2.0, "verdict": verdict},
            ]
        ).to_csv(tmp_path / task / "table.csv", index=False)
    layout = {"rule": "source_val", "n_trials": 3, "baseline": "source_only"}
    write_task_summary(tmp_path, ["75", "0"], layout, "t")
    text = (tmp_path / "summary.md").read_text()
    assert "| irm | 40.00 ± 2.00▼ | 61.00 ± 2.00 | 50.50 |" in text and "| source_only | 50.00 ± 1.00 | 60.00 ± 1.00 | 55.00 |" in text
    assert text.count("**Rule") == 1  # no oracle tables were there to summarise


# ------------------------------------------------------------------ statistics against hand computations
def test_holm_matches_the_step_down_by_hand():
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    adjusted = holm([0.2, math.nan, 0.9])
    assert math.isnan(adjusted[1]) and adjusted[0] == pytest.approx(0.4) and adjusted[2] == pytest.approx(0.9)
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1


def test_t_interval_matches_the_textbook_value():
    # mean 2.5, sd 1.2910, t(0.975, 3) = 3.1824 → 3.1824 · 1.2910 / 2
    assert t_interval([1, 2, 3, 4]) == pytest.approx(3.182446 * 1.290994 / 2, rel=1e-5)
    assert math.isnan(t_interval([3.0]))


# ------------------------------------------------------------------ a real, tiny comparison end to end
TINY_COMPARISON = {
    "experiment": "tiny_fair",
    "overrides": [
        "backbone=small_cnn",
        "data=digits",
        "data.synthetic_size=300",
        "data.batch_size=16",
        "trainer.max_epochs=2",
        "trainer.steps_per_epoch=2",
        "trainer.enable_progress_bar=false",
        "tracking.plots=false",
    ],
    "tuning": {"n_trials": 2, "seed": 100, "sampler": "random", "pruner": "none"},
    "eval_seeds": [0, 1, 2, 3, 4],
    "shared": {"optim.lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True}},
    "arms": {
        "source_only": {"overrides": ["adapt=source_only"]},
        "coral": {"overrides": ["adapt=coral"], "params": {"adapt.ramp": {"type": "categorical", "choices": [True, False]}}},
        "shot": {"overrides": ["adapt=shot"], "rule": "im", "source_phase": {"arm": "source_only", "fraction": 0.5}},
    },
    "upper_bound": {"name": "train_on_target", "arm": "source_only", "overrides": ["data.source=sklearn_digits"]},
}


@pytest.mark.slow
def test_tiny_comparison_tunes_every_arm_equally_and_rebuilds_from_its_export(tmp_path, monkeypatch, capsys):
    import yaml

    from tlbench.compare.cli import main as compare_main
    from tlbench.report.cli import main as report_main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY_COMPARISON))
    assert compare_main([str(tmp_path / "tiny.yaml"), "--out", "out"]) == 0
    out = tmp_path / "out"

    runs = pd.read_csv(out / "runs.csv", skiprows=1)
    tune = runs[runs["tags.compare.stage"] == "tune"]
    assert tune.groupby("tags.compare.arm").size().to_dict() == {"coral": 2, "shot": 2, "source_only": 2}  # same budget
    assert set(tune["params.seed"]) == {100}
    evaluated = runs[runs["tags.compare.stage"] == "eval"]
    assert evaluated.groupby("tags.compare.arm")["params.seed"].apply(sorted).to_dict() == {
        "coral": [0, 1, 2, 3, 4],
        "shot": [0, 1, 2, 3, 4],
        "source_only": [0, 1, 2, 3, 4],
    }
    children = runs[runs["tags.compare.stage"].notna() & runs["params.seed"].notna()]
    labelled = children["tags.compare.arm"] != "shot"
    assert set(children.loc[labelled, "params.selection"]) == {"source_val"}  # every run chose its epoch label-free
    assert set(children.loc[~labelled & (children["tags.compare.stage"] != "source"), "params.selection"]) == {"im"}

    # SHOT: one source model per seed (ERM's chosen configuration, half the epochs), adapted for the other
    # half from the source model of its own seed, so its total steps equal every other arm's
    sources = children[children["tags.compare.stage"] == "source"].set_index("run_id")
    assert sorted(sources["params.seed"]) == [0, 1, 2, 3, 4, 100]
    assert set(sources["params.trainer.max_epochs"]) == {1} and set(sources["params.adapt.name"]) == {"source_only"}
    assert set(sources["params.optim.lr"]) == set(evaluated.loc[evaluated["tags.compare.arm"] == "source_only", "params.optim.lr"])
    shot = children[(children["tags.compare.arm"] == "shot") & children["tags.compare.stage"].isin(["tune", "eval"])]
    assert set(shot["params.trainer.max_epochs"]) == {1}
    for _, run in shot.iterrows():
        source_id = run["params.adapt.source_model"].removeprefix("runs:/")
        assert sources.loc[source_id, "params.seed"] == run["params.seed"]

    # the evaluated configuration is the tuning trial Optuna's study ranks best, and tuning.csv names it
    storage = f"sqlite:///{out / 'optuna.db'}"
    record = pd.read_csv(out / "tuning.csv").set_index("arm")
    for arm in ("source_only", "coral", "shot"):
        best = optuna.load_study(study_name=f"{arm}.tune", storage=storage).best_trial
        assert record.loc[arm, "chosen_trial"] == best.number
        lrs = set(evaluated.loc[evaluated["tags.compare.arm"] == arm, "params.optim.lr"])
        assert len(lrs) == 1 and lrs.pop() == pytest.approx(best.params["optim.lr"])
    upper = runs[runs["tags.compare.stage"] == "upper_bound"]
    assert set(upper["params.data.source"]) == {"sklearn_digits"} and len(upper) == 5

    table = (out / "table.md").read_text()
    assert (
        "| coral | method |" in table
        and "| shot | method |" in table
        and "chosen by rule 'im'" in table
        and "p (Holm)" in table
        and "| train_on_target | upper bound (target labels) |" in table
    )
    assert "ORACLE" in (out / "oracle.md").read_text() and "ORACLE" not in table

    assert report_main(["--from", str(out / "runs.csv"), "--out", str(tmp_path / "again")]) == 0
    for path in (tmp_path / "again").iterdir():
        assert path.read_bytes() == (out / path.name).read_bytes(), path.name
    # the export says nothing about the machine that made it
    assert str(tmp_path) not in (out / "runs.csv").read_text()


# ------------------------------------------------------------------ committed studies rebuild from the repo
#: Every committed export beside the tables it made (a comparison's tasks have theirs in subfolders).
EXPORTS = sorted(p for p in [*(ROOT / "results").glob("*/runs.csv"), *(ROOT / "results").glob("*/*/runs.csv")] if (p.parent / "table.md").exists())


@pytest.mark.parametrize("export", EXPORTS, ids=[str(p.parent.relative_to(ROOT / "results")) for p in EXPORTS])
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_committed_tables_rebuild_byte_for_byte_from_the_committed_export(export, tmp_path):
    from tlbench.report.cli import main as report_main

    assert report_main(["--from", str(export), "--out", str(tmp_path)]) == 0
    rebuilt = sorted(p.name for p in tmp_path.iterdir())
    assert rebuilt, "the export rebuilt nothing"
    changed = [name for name in rebuilt if (tmp_path / name).read_bytes() != (export.parent / name).read_bytes()]
    assert not changed, f"{export.parent.name}: committed files differ from what the export rebuilds: {changed}"


def test_report_from_refuses_a_file_that_is_not_an_export(tmp_path, capsys):
    from tlbench.report.cli import main as report_main

    (tmp_path / "runs.csv").write_text("run_id,status\nabc,FINISHED\n")
    assert report_main(["--from", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "not a tlbench runs export" in capsys.readouterr().err
    layout = "# tlbench runs export; layout: " + json.dumps({"kind": "poster"}) + "\nrun_id,history\n"
    (tmp_path / "runs.csv").write_text(layout)
    assert report_main(["--from", str(tmp_path / "runs.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "layout kind 'poster'" in capsys.readouterr().err


SUMMARIES = sorted((ROOT / "results").glob("*/summary.md"))


@pytest.mark.parametrize("summary", SUMMARIES, ids=[p.parent.name for p in SUMMARIES])
def test_committed_task_summaries_rebuild_byte_for_byte_from_their_tasks_tables(summary, tmp_path):
    from tlbench.report.fair import layout_of, write_task_summary

    spec = load_spec(summary.parent.name)
    write_task_summary(summary.parent, list(spec.tasks), layout_of(spec), spec.title, into=tmp_path)
    for name in ("summary.md", "summary.csv"):
        assert (tmp_path / name).read_bytes() == (summary.parent / name).read_bytes(), name


def test_the_table_says_which_arms_runs_collapsed_when_the_export_carries_the_tag(tmp_path):
    """The committed ablation's export with the `collapsed` tag its runs would carry today: the table names
    the arms whose evaluation seeds collapsed; the export without the tag rebuilds as committed (above)."""
    from tlbench.report.cli import main as report_main

    export = ROOT / "results" / "dg_mmd_kernel" / "runs.csv"
    header, body = export.read_text().split("\n", 1)
    rows = list(csv.reader(io.StringIO(body)))
    arm, seed = rows[0].index("tags.compare.arm"), rows[0].index("params.seed")

    def collapsed(row: list[str]) -> str:  # every MMD seed but dg_mmd's seed 4
        return str(row[arm] in ("dg_mmd", "dg_mmd_fixed") and not (row[arm] == "dg_mmd" and row[seed] == "4")).lower()

    tagged = tmp_path / "runs.csv"
    with tagged.open("w", newline="") as file:
        file.write(header + "\n")
        csv.writer(file, lineterminator="\n").writerows([rows[0] + ["tags.collapsed"], *(row + [collapsed(row)] for row in rows[1:])])
    assert report_main(["--from", str(tagged), "--out", str(tmp_path / "out")]) == 0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "tag `collapsed`): dg_mmd 4 of 5 seeds, dg_mmd_fixed 5 of 5 seeds." in table
    assert "source_only" not in table.split("Collapsed runs", 1)[1]
    assert "Collapsed runs" not in (tmp_path / "out" / "oracle.md").read_text()  # the tag is about the run's own choice

"""`tlbench report` on a real SQLite MLflow store with hand-made runs whose answers are known.

Every run has 3 epochs (steps 10, 20, 30) built so that the rules choose DIFFERENT epochs:
source_val → epoch 0, oracle → epoch 1, target_entropy → epoch 2. The target test accuracy at those
epochs is b, b + 5 and b + 10 points (b per method, task and seed), so any mix-up of rules shows.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from tlbench.report import ReportError, bar_plot, budget_plot, collect, epoch_table, get_rule, paper_table
from tlbench.report.cli import main

STEPS = (10, 20, 30)
VAL_SOURCE = (0.90, 0.80, 0.85)  # max at epoch 0
VAL_TARGET = (0.50, 0.70, 0.60)  # max at epoch 1 (oracle)
VAL_ENTROPY = (1.00, 0.80, 0.30)  # min at epoch 2
OFFSETS = (0.00, 0.05, 0.10)  # target test accuracy = b + offset

#: (adapt, freeze, task) → b per seed 0, 1, 2.
BASE = {
    ("source_only", "full", "digits"): (0.60, 0.62, 0.67),  # 63 ± √13
    ("source_only", "full", "office"): (0.54, 0.54, 0.57),  # 55 ± √3
    ("dann", "full", "digits"): (0.70, 0.72, 0.74),  # 72 ± 2
    ("dann", "full", "office"): (0.55, 0.49, 0.52),  # 52 ± 3
    ("source_only", "scratch", "digits"): (0.66, 0.68, 0.70),  # 68 ± 2: transfer is 5 points worse
    ("source_only", "scratch", "office"): (0.555, 0.555, 0.555),  # 55.5 ± 0: 0.5 worse, within std
    ("dann", "scratch", "digits"): (0.60, 0.61, 0.62),  # 61 ± 1: transfer gains 11
}
DOMAINS = {"digits": ("synthetic_digits", "sklearn_digits"), "office": ("amazon", "webcam")}


def _params(adapt, freeze, task, seed, budget="None", run_index=0):
    return {
        "adapt.name": adapt,
        "backbone.name": "small_cnn",
        "backbone.weights": "none" if freeze == "scratch" else "imagenet",
        "freeze.name": freeze,
        "freeze.bn_policy": "train" if freeze == "scratch" else "frozen_stats",
        "data.name": task,
        "data.source": DOMAINS[task][0],
        "data.target": DOMAINS[task][1],
        "data.labels_per_class": str(budget),
        "optim.lr": "0.001",
        "seed": str(seed),
        "selection": "source_val",
        "output_dir": f"outputs/run{run_index}",  # differs per run but is not part of the configuration
    }


class Store:
    def __init__(self, uri):
        self.uri = uri
        self.client = MlflowClient(uri)
        self.clock = 1_000_000

    def add(self, experiment, params, base, epochs=3, status="FINISHED", tags=None):
        found = self.client.get_experiment_by_name(experiment)
        exp_id = found.experiment_id if found else self.client.create_experiment(experiment)
        self.clock += 1000
        run = self.client.create_run(exp_id, start_time=self.clock, tags=tags or {}, run_name=f"run{self.clock}")
        metrics = []
        for epoch, step in enumerate(STEPS[:epochs]):
            for name, value in {
                "val/source_acc": VAL_SOURCE[epoch],
                "val/target_acc": VAL_TARGET[epoch],
                "val/target_entropy": VAL_ENTROPY[epoch],
                "eval/target_test_acc": base + OFFSETS[epoch],
            }.items():
                metrics.append(Metric(name, value, self.clock + step, step))
        metrics.append(Metric("train/loss", 1.0, self.clock, 15))  # a training step: not an epoch
        self.client.log_batch(run.info.run_id, metrics=metrics, params=[Param(k, str(v)) for k, v in params.items()])
        if status != "RUNNING":
            self.client.set_terminated(run.info.run_id, status)
        return run.info.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("report")
    store = Store(f"sqlite:///{path / 'mlflow.db'}")
    # an older repeat of (source_only, office, seed 0): the newer run replaces it
    store.add("exp", _params("source_only", "full", "office", 0, run_index=99), 0.10)
    index = 0
    for (adapt, freeze, task), bases in BASE.items():
        for seed, base in enumerate(bases):
            index += 1
            store.add("exp", _params(adapt, freeze, task, seed, run_index=index), base)
    store.add("exp", _params("dann", "full", "digits", 3), 0.99, epochs=1, status="FAILED", tags={"failure_reason": "TrainingError: non-finite loss"})
    store.add("exp", _params("dann", "full", "office", 4), 0.99, epochs=2, status="RUNNING")
    for freeze, lift in (("full", 0.2), ("scratch", 0.0)):
        for budget in (5, 10, 20):
            for seed in (0, 1):
                store.add("budget", _params("source_only", freeze, "digits", seed, budget), 0.3 + lift + budget / 100 + seed / 100)
    store.path = path
    return store


@pytest.fixture(scope="module")
def frame(store):
    return collect(store.uri, "exp", rules=("source_val", "oracle", "target_entropy", "last"))


def _cell(table, row, col):
    cells = table.cells.set_index(["row", "col"])
    return cells.loc[(row, col)]


# ------------------------------------------------------------------ rules
def test_rules_choose_their_own_epoch_and_ties_go_to_the_earliest():
    history = epoch_table(
        {
            "val/source_acc": [(10, 0.9), (20, 0.8), (30, 0.9)],  # tie: epoch 0 and 2
            "val/target_acc": [(10, 0.5), (20, 0.7), (30, 0.6)],
            "val/target_entropy": [(10, 1.0), (20, 0.8), (30, 0.3)],
            "eval/target_test_acc": [(10, 0.61), (20, 0.62), (30, 0.63)],
            "train/loss": [(15, 1.0)],
        }
    )
    chosen = {name: get_rule(name).choose(history) for name in ("source_val", "oracle", "target_entropy", "last")}
    assert {n: (c.step, c.epoch) for n, c in chosen.items()} == {"source_val": (10, 1), "oracle": (20, 2), "target_entropy": (30, 3), "last": (30, 3)}
    assert chosen["oracle"].target_acc == pytest.approx(0.62) and chosen["source_val"].source_acc == pytest.approx(0.9)
    assert [name for name in ("source_val", "oracle", "target_entropy", "last") if get_rule(name).uses_target_labels] == ["oracle"]


def test_unknown_rule_is_one_clear_error():
    with pytest.raises(ReportError, match="rule 'best_test' is unknown; choose one of: source_val"):
        get_rule("best_test")


# ---------------------------------------------------------------- collect
@pytest.mark.slow  # trains, or composes many configurations: seconds, not milliseconds
def test_collect_one_row_per_run_and_rule_with_the_rule_epoch(frame):
    assert len(frame) == 21 * 4  # 7 configurations × 3 seeds, FINISHED, repeat dropped; 4 rules
    assert frame.groupby("rule")["selected_step"].unique().map(list).to_dict() == {"source_val": [10], "oracle": [20], "target_entropy": [30], "last": [30]}
    one = frame[(frame["adapt.name"] == "dann") & (frame["data.name"] == "office") & (frame["seed"] == "1") & (frame["freeze.name"] == "full")]
    assert one.set_index("rule")["target_acc"].round(6).to_dict() == {"source_val": 0.49, "oracle": 0.54, "target_entropy": 0.59, "last": 0.59}
    assert set(frame.loc[frame["rule"] == "oracle", "uses_target_labels"]) == {True}
    assert set(frame.loc[frame["rule"] != "oracle", "uses_target_labels"]) == {False}
    assert frame["epochs"].eq(3).all() and set(frame["task"]) == {"synthetic_digits→sklearn_digits", "amazon→webcam"}


def test_failed_and_running_runs_are_excluded_and_counted(frame):
    assert set(frame["status"]) == {"FINISHED"}
    assert frame.attrs["excluded"] == {"FAILED": 1, "RUNNING": 1}
    reasons = {status: reason for _, status, reason in frame.attrs["excluded_runs"]}
    assert reasons["FAILED"] == "TrainingError: non-finite loss"
    assert frame.attrs["duplicates"] == 1
    assert not (frame["target_acc"] > 0.95).any()  # the 0.99 of the failed/running runs never entered
    table = paper_table(frame)
    assert "Excluded 2 run(s) that did not finish (1 FAILED, 1 RUNNING)." in table.to_markdown()


def test_collapsed_runs_are_counted_in_the_table_and_named_in_its_notes(store, frame):
    for seed, flag in enumerate(("true", "false", "true")):
        store.add("collapse", _params("dann", "full", "digits", seed), 0.1 if flag == "true" else 0.7, tags={"collapsed": flag})
    collapsed = collect(store.uri, "collapse", rules=("source_val",))
    assert len(collapsed.attrs["collapsed"]) == 2
    text = paper_table(collapsed, rows="adapt.name", cols="data.name", rule="source_val").to_markdown()
    assert "2 run(s) collapsed, predicting one class (tag `collapsed`), and are counted as they are: run" in text
    assert "collapsed" not in paper_table(frame).to_markdown()  # runs recorded without the tag


def test_a_missing_experiment_or_store_is_one_clear_error(store, tmp_path):
    with pytest.raises(ReportError, match="experiment 'nope' not found in .*; existing: .*exp"):
        collect(store.uri, "nope")
    with pytest.raises(ReportError, match="no MLflow store at"):
        collect(f"sqlite:///{tmp_path / 'absent.db'}", "exp")
    assert not (tmp_path / "absent.db").exists()


# ------------------------------------------------------------------ tables
def test_paper_table_exact_aggregates_best_and_avg(frame):
    table = paper_table(frame, rows="adapt.name", cols="data.name", rule="source_val")
    expected = {  # (mean %, std %, n), by hand from BASE
        ("source_only", "digits"): (63.0, math.sqrt(13), 3),
        ("source_only", "office"): (55.0, math.sqrt(3), 3),
        ("dann", "digits"): (72.0, 2.0, 3),
        ("dann", "office"): (52.0, 3.0, 3),
    }
    for (row, col), (mean, std, n) in expected.items():
        cell = _cell(table, row, col)
        assert (cell["mean"], cell["std"], cell["n"]) == (pytest.approx(mean), pytest.approx(std), n), (row, col)
    assert _cell(table, "source_only", "Avg")["mean"] == pytest.approx(59.0)
    assert _cell(table, "dann", "Avg")["mean"] == pytest.approx(62.0)
    best = table.cells[table.cells["best"]].set_index("col")["row"].to_dict()
    assert best == {"digits": "dann", "office": "source_only", "Avg": "dann"}
    markdown = table.to_markdown()
    assert "**72.00 ± 2.00**" in markdown and "**55.00 ± 1.73**" in markdown and "63.00 ± 3.61" in markdown
    assert "rule 'source_val'" in markdown and "scratch" in markdown  # scratch set aside as baselines, said so


def test_oracle_numbers_never_enter_the_default_table(frame):
    default = paper_table(frame, rule="source_val")
    oracle = paper_table(frame, rule="oracle")
    entropy = paper_table(frame, rule="target_entropy")
    assert _cell(default, "dann", "digits")["mean"] == pytest.approx(72.0)
    assert _cell(oracle, "dann", "digits")["mean"] == pytest.approx(77.0)
    assert _cell(entropy, "dann", "digits")["mean"] == pytest.approx(82.0)
    assert "ORACLE" not in default.to_markdown() and "ORACLE" not in default.to_latex()
    assert oracle.to_markdown().startswith("**Rule `oracle`.** ORACLE selection — uses target labels")
    assert set(default.to_frame()["rule"]) == {"source_val"} and not default.to_frame()["uses_target_labels"].any()


def test_negative_transfer_is_flagged_against_the_matching_scratch_run(frame):
    table = paper_table(frame, rule="source_val")
    worse = _cell(table, "source_only", "digits")  # per seed: 60−66, 62−68, 67−70
    assert (worse["scratch_mean"], worse["scratch_gain"]) == (pytest.approx(68.0), pytest.approx(-5.0))
    # p = 0.038 alone, but one of three comparisons in this table: Holm makes it 0.075, so not a finding
    assert worse["negative_transfer"] and worse["scratch_verdict"] == "within noise (p=0.038, Holm p=0.075, n=3)"
    assert worse["scratch_p_holm"] == pytest.approx(2 * worse["scratch_p_value"])
    slightly = _cell(table, "source_only", "office")  # −1.5, −1.5, +1.5: seed noise
    assert slightly["scratch_gain"] == pytest.approx(-0.5) and slightly["negative_transfer"]
    assert slightly["scratch_verdict"].startswith("within noise")
    better = _cell(table, "dann", "digits")
    assert better["scratch_gain"] == pytest.approx(11.0) and not better["negative_transfer"]
    assert pd.isna(_cell(table, "dann", "office")["scratch_gain"])  # no dann scratch run on office
    gains = table.gain_grid()
    assert gains.loc["source_only", "digits"] == "-5.00 ± 1.73, within noise (p=0.038, Holm p=0.075, n=3)"
    assert gains.loc["source_only", "office"] == "-0.50 ± 1.73, within noise (p=0.67, Holm p=0.67, n=3)"
    assert gains.loc["dann", "digits"].startswith("+11.00 ± 1.00, better") and gains.loc["dann", "office"] == "–"
    assert "| source_only  | -5.00 ± 1.73, within noise (p=0.038, Holm p=0.075, n=3)" in table.to_markdown()
    rows_with_scratch = paper_table(frame, rows="adapt.name,freeze.name").gain_grid()
    assert list(rows_with_scratch.index) == ["dann / full", "source_only / full"]  # scratch rows have no gain


def test_two_configurations_in_one_cell_is_an_error_naming_the_key(frame):
    with pytest.raises(ReportError, match=r"mixes 2 configurations that differ in data\.name \(digits \| office\)"):
        paper_table(frame, rows="adapt.name", cols="backbone.name")
    with pytest.raises(ReportError, match="key\\(s\\) method not recorded"):
        paper_table(frame, rows="method")


def test_freeze_schedule_as_rows_shows_scratch_as_a_row(frame):
    table = paper_table(frame, rows="adapt.name,freeze.name", cols="task")
    assert table.row_order == ["dann / full", "dann / scratch", "source_only / full", "source_only / scratch"]
    assert _cell(table, "dann / scratch", "synthetic_digits→sklearn_digits")["mean"] == pytest.approx(61.0)
    assert _cell(table, "source_only / full", "synthetic_digits→sklearn_digits")["scratch_gain"] == pytest.approx(-5.0)


def test_reference_numbers_shown_beside_ours_but_never_bold(frame, tmp_path):
    table = paper_table(frame, rule="source_val", reference={"dann": 99.5, "cdan": 70.0})
    grid = table.grid()
    assert grid.loc["dann", "Reference"] == "99.50" and grid.loc["source_only", "Reference"] == "–"
    assert "**99.50**" not in table.to_markdown() and "Reference numbers without runs of ours: cdan." in table.notes


def test_tables_written_as_markdown_csv_and_latex_with_the_rule(frame, tmp_path):
    paths = paper_table(frame, rule="target_entropy").write(tmp_path, "table")
    assert [p.name for p in paths] == ["table.md", "table.csv", "table.tex"]
    for path in paths:
        assert "target_entropy" in path.read_text().replace("\\_", "_"), path
    csv = pd.read_csv(paths[1])
    assert set(csv["rule"]) == {"target_entropy"}
    assert csv.set_index(["row", "col"]).loc[("dann", "digits"), "mean"] == pytest.approx(82.0)
    tex = paths[2].read_text()
    assert "\\textbf{82.00 $\\pm$ 2.00}" in tex and "source\\_only" in tex and "\\toprule" in tex


def test_plots_write_png(frame, store, tmp_path):
    assert bar_plot(frame, tmp_path / "bars.png").stat().st_size > 1000
    budget = collect(store.uri, "budget", rules=("source_val",))
    path = budget_plot(budget, tmp_path / "budget.png", lines="freeze.name")
    assert path is not None and path.read_bytes()[:4] == b"\x89PNG"
    assert budget_plot(frame, tmp_path / "none.png") is None  # a single budget: nothing to plot


# --------------------------------------------------------------------- CLI
def test_cli_prints_table_and_writes_files(store, tmp_path, capsys):
    reference = tmp_path / "ref.yaml"
    reference.write_text("dann: 76.66\n")
    code = main(["--uri", store.uri, "--experiment", "exp", "--oracle", "--reference", str(reference), "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    main_part, oracle_part = out.split("**Rule `oracle`.**")
    assert main_part.startswith("**Rule `source_val`.**") and "**72.00 ± 2.00**" in main_part and "76.66" in main_part
    assert "77.00 ± 2.00" in oracle_part and "77.00" not in main_part
    assert "excluded FAILED run" in err and "excluded RUNNING run" in err
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["bars.png", "oracle.csv", "oracle.md", "oracle.tex", "runs.csv", "table.csv", "table.md", "table.tex"]
    # the export rebuilds every table without the store, byte for byte, reference numbers included
    assert main(["--from", str(tmp_path / "out" / "runs.csv"), "--out", str(tmp_path / "rebuilt")]) == 0
    for name in ("table.md", "table.csv", "table.tex", "oracle.md", "oracle.csv"):
        assert (tmp_path / "rebuilt" / name).read_bytes() == (tmp_path / "out" / name).read_bytes(), name


def test_cli_budget_table_and_plot_with_a_filter(store, tmp_path, capsys):
    out_dir = tmp_path / "budget"
    code = main(
        [
            "--uri",
            store.uri,
            "--experiment",
            "budget",
            "--rows",
            "freeze.name",
            "--cols",
            "data.labels_per_class",
            "--filter",
            "params.seed = '0'",
            "--out",
            str(out_dir),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("| freeze.name"))
    assert [c.strip() for c in header.strip("|").split("|")] == ["freeze.name", "5", "10", "20", "Avg"]  # numeric order
    assert "| full          | **55.00** | **60.00** | **70.00** | **61.67** |" in out  # n = 1: no ± shown
    assert (out_dir / "budget.png").exists() and (out_dir / "bars.png").exists()


@pytest.mark.slow  # starts a process
def test_cli_missing_experiment_exits_2_with_one_line(store, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "tlbench", "report", "--uri", store.uri, "--experiment", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tlbench report: error: experiment 'nope' not found"), result.stderr
    assert result.stdout == ""


def test_a_metric_measured_once_per_run_is_tabulated_per_cell_and_rebuilds_from_the_export(tmp_path):
    """`--metric analysis/a_distance`: the proxy A-distance each run logged, as mean ± std (n) per cell,
    written beside the tables and rebuilt from the export like them."""
    from tlbench.report.cli import main as report_main
    from tlbench.tracking import client_for, experiment_id

    uri = f"sqlite:///{tmp_path}/m.db"
    client = client_for(uri)
    experiment = experiment_id(client, "exp")
    for method, seed, distance in [("dann", 0, 0.4), ("dann", 1, 0.6), ("source_only", 0, 1.5), ("source_only", 1, 1.7)]:
        run = client.create_run(experiment).info.run_id
        for key, value in {"adapt.name": method, "seed": seed, "data.name": "digits"}.items():
            client.log_param(run, key, value)
        for step, (val, test) in enumerate([(0.5, 0.4), (0.7, 0.6)]):
            client.log_metric(run, "val/source_acc", val, step=step)
            client.log_metric(run, "eval/target_test_acc", test, step=step)
        if not (method == "dann" and seed == 1):  # one run without the analysis: counted, not averaged
            client.log_metric(run, "analysis/a_distance", distance, step=2)
        client.set_terminated(run, "FINISHED")
    out = tmp_path / "out"
    assert report_main(["--uri", uri, "--experiment", "exp", "--metric", "analysis/a_distance", "--out", str(out)]) == 0
    text = (out / "analysis_a_distance.md").read_text()
    assert "0.400 ± 0.000 (1)" in text  # dann: its one run with the analysis
    assert "1.600 ± 0.141 (2)" in text and "1 run(s) did not record it" in text
    rebuilt = tmp_path / "rebuilt"
    assert report_main(["--from", str(out / "runs.csv"), "--out", str(rebuilt)]) == 0
    assert (rebuilt / "analysis_a_distance.md").read_bytes() == (out / "analysis_a_distance.md").read_bytes()

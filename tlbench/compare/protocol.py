"""Run a fair comparison: per arm an Optuna study with the same trial budget (stage `tune`), its best
trial by the comparison's label-free rule re-run on the evaluation seeds (`eval`), then the optional
upper bound trained on target labels (`upper_bound`) and the trade-off sensitivity (`sensitivity`).

A source-free arm (SHOT) first trains its source models (study `<arm>.source`, tagged stage `source`):
the chosen configuration of its `source_phase.arm` on the tuning seed and on every evaluation seed, for
`fraction` of the epochs; each of its trials and evaluation runs then adapts the source model of its own
seed for the remaining epochs, so its total optimizer steps equal every other arm's.

Every stage is a study in one Optuna storage and a parent run in one MLflow store (both in the output
folder), so running the same command again resumes where it stopped and never retrains a finished
trial. Evaluation, upper-bound and sensitivity stages are grid studies over their seeds (and values):
the search machinery gives them parallel workers, heartbeats and requeueing for free.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import ConfigError
from ..search.space import Param, SearchSpace, StudySettings, format_value
from .spec import Arm, ComparisonSpec

STAGES = ("tune", "eval", "upper_bound", "sensitivity")
#: Tags every run of a comparison carries (the export and the tables read them).
TAG_NAME, TAG_ARM, TAG_STAGE, TAG_RULE = "compare.name", "compare.arm", "compare.stage", "compare.rule"


@dataclass(frozen=True)
class Where:
    """The comparison's folder: MLflow store, Optuna storage, trial outputs and checkpoints."""

    out: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.out.resolve() / 'mlflow.db'}"

    @property
    def storage(self) -> str:
        return f"sqlite:///{self.out.resolve() / 'optuna.db'}"

    def overrides(self, spec: ComparisonSpec) -> list[str]:
        return [f"tracking.uri={self.tracking_uri}", f"tracking.experiment={spec.experiment}"]


def study_name(arm: str, stage: str) -> str:
    return f"{arm}.{stage}"


def _settings(n_trials: int, sampler: Any, pruner: Any, seed: int, out: Path, name: str, keep_checkpoints: bool = False) -> StudySettings:
    return StudySettings(n_trials=n_trials, sampler=sampler, pruner=pruner, seed=seed, out_dir=str(out / "trials" / name), keep_checkpoints=keep_checkpoints)


def _run_study(
    spec: ComparisonSpec,
    where: Where,
    arm: str,
    stage: str,
    fixed: list[str],
    params: dict[str, Param],
    settings: StudySettings,
    workers: int,
    name: str | None = None,
) -> dict[str, Any]:
    from ..search.study import prepare, run_search

    name = name or study_name(arm, stage)
    space = SearchSpace(name=name, params=dict(params), overrides=[], study=settings)
    if stage == "source":  # a source model is chosen as its source-phase arm's runs are
        arm_rule = spec.rule_of(spec.arms[arm].source_phase.arm)
    else:
        arm_rule = spec.rule_of(arm) if arm in spec.arms else spec.rule
    tags = {TAG_NAME: spec.name, TAG_ARM: arm, TAG_STAGE: stage, TAG_RULE: arm_rule}
    job = prepare(space, [*fixed, *where.overrides(spec)], storage=where.storage, study_name=name, extra_tags=tags)
    print(f"[tlbench compare] {spec.name}: {stage} {arm} ({settings.n_trials} trial(s))", flush=True)
    return run_search(job, workers=workers)


def arm_overrides(spec: ComparisonSpec, arm: Arm) -> list[str]:
    """What every run of `arm` gets before its searched values: the comparison's overrides, the arm's, and
    the selection rule (so checkpoints and trials are chosen by the same label-free rule)."""
    return [*spec.overrides, *arm.overrides, f"selection={spec.rule_of(arm.name)}", *_phase_epochs(spec, arm)]


def epoch_split(spec: ComparisonSpec, arm: Arm) -> tuple[int, int]:
    """(source epochs, adaptation epochs) of a source-free arm: `fraction` of the comparison's epochs
    for the source model, the rest for adaptation. Refused when the split is not whole epochs."""
    from ..composition import compose

    epochs = compose([*spec.overrides, *spec.arms[arm.source_phase.arm].overrides]).trainer.max_epochs
    source = epochs * arm.source_phase.fraction
    if abs(source - round(source)) > 1e-9 or not 1 <= round(source) < epochs:
        raise ConfigError(
            f"arm {arm.name}: source_phase.fraction {arm.source_phase.fraction} of {epochs} epochs is not a whole "
            "number of epochs for each phase; choose a fraction that splits them"
        )
    return round(source), epochs - round(source)


def _phase_epochs(spec: ComparisonSpec, arm: Arm) -> list[str]:
    return [] if arm.source_phase is None else [f"trainer.max_epochs={epoch_split(spec, arm)[1]}"]


def train_source_models(spec: ComparisonSpec, where: Where, arm: Arm, workers: int) -> dict[str, Any]:
    """The source models of a source-free arm, one per seed it will run on (tuning and evaluation)."""
    phase = arm.source_phase
    fixed = [*chosen_overrides(spec, where, spec.arms[phase.arm]), f"trainer.max_epochs={epoch_split(spec, arm)[0]}"]
    return _grid(spec, where, arm.name, "source", fixed, {"seed": [spec.tuning_seed, *spec.eval_seeds]}, workers)


def source_model(spec: ComparisonSpec, where: Where, arm: str, seed: int) -> str:
    """`runs:/<id>` of the finished source model of `arm` on `seed` in this comparison's store."""
    from ..tracking import client_for

    client = client_for(where.tracking_uri)
    experiment = client.get_experiment_by_name(spec.experiment)
    found = (
        []
        if experiment is None
        else client.search_runs(
            [experiment.experiment_id],
            f"tags.`{TAG_NAME}` = '{spec.name}' and tags.`{TAG_ARM}` = '{arm}' and tags.`{TAG_STAGE}` = 'source' "
            f"and params.seed = '{seed}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
    )
    if not found:
        raise ConfigError(f"arm {arm}: no finished source model for seed {seed} in {where.tracking_uri}; run the 'tune' stage first")
    return f"runs:/{found[0].info.run_id}"


def tune(spec: ComparisonSpec, where: Where, arm: Arm, workers: int) -> dict[str, Any]:
    fixed = [*arm_overrides(spec, arm), f"seed={spec.tuning_seed}"]
    if arm.source_phase is not None:
        train_source_models(spec, where, arm, workers)
        fixed.append(f"adapt.source_model={source_model(spec, where, arm.name, spec.tuning_seed)}")
    settings = _settings(spec.n_trials, spec.sampler, spec.pruner, 0, where.out, study_name(arm.name, "tune"))
    return _run_study(spec, where, arm.name, "tune", fixed, arm.params, settings, workers)


def chosen_params(where: Where, arm: str) -> dict[str, Any]:
    """The best trial's searched values in the arm's tuning study (by the rule's metric, pruned trials
    excluded: they never reached the end). An arm not tuned yet is an error naming the stage to run."""
    import optuna

    try:
        study = optuna.load_study(study_name=study_name(arm, "tune"), storage=where.storage)
        return dict(study.best_trial.params)
    except (KeyError, ValueError):
        raise ConfigError(f"arm {arm} has no finished tuning trial in {where.storage}; run the 'tune' stage first") from None


def chosen_overrides(spec: ComparisonSpec, where: Where, arm: Arm, drop: Iterable[str] = ()) -> list[str]:
    values = {k: v for k, v in chosen_params(where, arm.name).items() if k not in set(drop)}
    return [*arm_overrides(spec, arm), *(f"{k}={format_value(v)}" for k, v in values.items())]


def _grid(spec: ComparisonSpec, where: Where, arm: str, stage: str, fixed: list[str], params: dict[str, list], workers: int, name: str | None = None):
    grid = {k: Param(k, "categorical", choices=list(v)) for k, v in params.items()}
    size = 1
    for values in params.values():
        size *= len(values)
    name = name or study_name(arm, stage)
    settings = _settings(size, "grid", "none", 0, where.out, name, keep_checkpoints=stage == "source")  # source models are read later
    return _run_study(spec, where, arm, stage, fixed, grid, settings, workers, name)


def evaluate(spec: ComparisonSpec, where: Where, arm: Arm, workers: int) -> list[dict[str, Any]]:
    fixed = chosen_overrides(spec, where, arm)
    if arm.source_phase is None:
        return [_grid(spec, where, arm.name, "eval", fixed, {"seed": spec.eval_seeds}, workers)]
    # each seed adapts its own source model: one study per seed (tagged stage 'eval' like the others)
    return [
        _grid(
            spec,
            where,
            arm.name,
            "eval",
            [*fixed, f"adapt.source_model={source_model(spec, where, arm.name, seed)}"],
            {"seed": [seed]},
            workers,
            name=f"{study_name(arm.name, 'eval')}.seed{seed}",
        )
        for seed in spec.eval_seeds
    ]


def upper_bound(spec: ComparisonSpec, where: Where, workers: int) -> dict[str, Any] | None:
    bound = spec.upper_bound
    if bound is None:
        return None
    fixed = [*chosen_overrides(spec, where, spec.arms[bound.arm]), *bound.overrides]
    return _grid(spec, where, bound.name, "upper_bound", fixed, {"seed": spec.eval_seeds}, workers)


def sensitivity(spec: ComparisonSpec, where: Where, workers: int) -> list[dict[str, Any]]:
    s = spec.sensitivity
    if s is None:
        return []
    return [
        _grid(spec, where, name, "sensitivity", chosen_overrides(spec, where, spec.arms[name], drop=[s.key]), {s.key: s.values, "seed": s.seeds}, workers)
        for name in s.arms
    ]


def task_runs(spec: ComparisonSpec, out: Path, only: list[str] | None = None) -> list[tuple[str, ComparisonSpec, Where]]:
    """(task, its comparison, its folder) for every task to run: the comparison itself in `out` when it has
    no tasks, else each task (or those in `only`) in `out/<task>`."""
    if not spec.tasks:
        if only:
            raise ConfigError(f"--tasks: comparison {spec.name} has no tasks")
        return [("", spec, Where(out))]
    unknown = [t for t in only or [] if t not in spec.tasks]
    if unknown:
        raise ConfigError(f"--tasks: unknown task(s) {', '.join(unknown)}; tasks of {spec.name}: {', '.join(spec.tasks)}")
    return [(task, spec.for_task(task), Where(out / task)) for task in (only or spec.tasks)]


def run(spec: ComparisonSpec, where: Where, stages: Iterable[str] = STAGES, arms: Iterable[str] | None = None, workers: int = 1) -> None:
    """The stages in order; `arms` limits tune/eval to some arms (the others must be done for later stages)."""
    stages = list(stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise ConfigError(f"--stages: unknown stage(s) {', '.join(unknown)}; choose from: {', '.join(STAGES)}")
    selected = list(arms) if arms else list(spec.arms)
    missing = [a for a in selected if a not in spec.arms]
    if missing:
        raise ConfigError(f"--arms: unknown arm(s) {', '.join(missing)}; arms of {spec.name}: {', '.join(spec.arms)}")
    where.out.mkdir(parents=True, exist_ok=True)
    selected.sort(key=lambda name: spec.arms[name].source_phase is not None)  # source models need their arm's choice
    for name in selected:  # arm by arm, so an interrupted comparison has whole arms, not only tuning
        if "tune" in stages:
            tune(spec, where, spec.arms[name], workers)
        if "eval" in stages:
            evaluate(spec, where, spec.arms[name], workers)
    if "upper_bound" in stages:
        upper_bound(spec, where, workers)
    if "sensitivity" in stages:
        sensitivity(spec, where, workers)

"""What a fair comparison is, declared in `conf/compare/<name>.yaml` and checked before anything trains.

    title: ...
    experiment: fair_da_digits          # MLflow experiment of every run
    overrides: [experiment=da_digits]   # every run of every arm
    rule: source_val                    # label-free rule that picks checkpoints and trials (fixed in advance)
    tuning: {n_trials: 5, seed: 100, sampler: tpe, pruner: median}   # every trial trains on seed 100
    eval_seeds: [0, 1, 2, 3, 4]         # disjoint from tuning.seed
    shared: {optim.lr: {type: float, low: 1e-3, high: 1e-1, log: true}, ...}   # every arm searches these
    baseline: source_only
    arms:
      source_only: {overrides: [adapt=source_only]}
      dann: {overrides: [adapt=dann], params: {adapt.trade_off: {...}}}       # shared + its own knobs
      shot:                             # source-free: starts from a source model trained in this comparison
        overrides: [adapt=shot]
        rule: classami                  # it cannot read source validation, so it declares its own label-free rule
        source_phase: {arm: source_only, fraction: 0.5}   # half the steps train the source model, half adapt it
    upper_bound: {name: train_on_target, arm: source_only, overrides: [data.source=sklearn_digits]}
    sensitivity: {arms: [dann], key: adapt.trade_off, values: [0.1, 0.3, 1, 3], seeds: [0, 1, 2]}
    tasks: {"75": [data.target=rotated_fashion:75], "0": [data.target=rotated_fashion:0]}   # optional

With `tasks`, the whole protocol runs once per task (its overrides added to every run), each task in its
own folder with its own store: every arm is tuned anew for every task (DomainBed chooses hyperparameters
per test domain), and a summary puts the tasks side by side (rows arms, columns tasks and their mean).

The trial budget is one number for the whole comparison, so no arm can get more tuning than another.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError
from ..search.space import PRUNERS, SAMPLERS, Param, space_from_dict

ALLOWED_KEYS = {
    "title",
    "experiment",
    "overrides",
    "rule",
    "tuning",
    "eval_seeds",
    "shared",
    "baseline",
    "arms",
    "upper_bound",
    "sensitivity",
    "notes",
    "tasks",
}


@dataclass(frozen=True)
class SourcePhase:
    """A source-free arm's source model: `arm`'s chosen configuration trained on the same seed for
    `fraction` of the comparison's epochs; the arm adapts for the rest, so its total optimizer steps
    equal every other arm's."""

    arm: str
    fraction: float


@dataclass(frozen=True)
class Arm:
    name: str
    overrides: list[str]
    #: Shared params followed by the arm's own (an arm may narrow a shared param by redeclaring it).
    params: dict[str, Param]
    #: The arm's own label-free rule when the comparison's cannot apply to it (a source-free method has
    #: no source validation split); None = the comparison's rule.
    rule: Optional[str] = None
    source_phase: Optional[SourcePhase] = None


@dataclass(frozen=True)
class UpperBound:
    """The chosen configuration of `arm` trained with the target's labels: a ceiling, never a method."""

    name: str
    arm: str
    overrides: list[str]


@dataclass(frozen=True)
class Sensitivity:
    arms: list[str]
    key: str
    values: list[float]
    seeds: list[int]


@dataclass(frozen=True)
class ComparisonSpec:
    name: str
    title: str
    experiment: str
    overrides: list[str]
    rule: str
    n_trials: int
    tuning_seed: int
    sampler: Any
    pruner: Any
    eval_seeds: list[int]
    baseline: str
    arms: dict[str, Arm]
    upper_bound: Optional[UpperBound] = None
    sensitivity: Optional[Sensitivity] = None
    notes: str = ""
    #: Task name → its overrides; empty: one task, the comparison's own overrides.
    tasks: dict[str, list[str]] = field(default_factory=dict)

    def for_task(self, task: str) -> "ComparisonSpec":
        """The comparison of one task: its overrides appended to every run's, no tasks left."""
        return replace(self, title=f"{self.title} — task {task}", overrides=[*self.overrides, *self.tasks[task]], tasks={})

    def rule_of(self, arm: str) -> str:
        """The label-free rule that chooses `arm`'s checkpoints and trials."""
        return self.arms[arm].rule or self.rule


def compare_dir() -> Path:
    from ..paths import CONFIG_DIR

    return Path(CONFIG_DIR) / "compare"


def available() -> list[str]:
    return sorted(p.stem for p in compare_dir().glob("*.yaml"))


def load_spec(name_or_path: str) -> ComparisonSpec:
    """`conf/compare/<name>.yaml` or a yaml path, validated."""
    import yaml

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = compare_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"no comparison '{name_or_path}'; choose one of: {', '.join(available()) or 'none'} (or a yaml path)")
    return spec_from_dict(path.stem, yaml.safe_load(path.read_text()) or {})


def _seeds(value: Any, where: str) -> list[int]:
    if not (isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value)):
        raise ConfigError(f"{where}: expected a non-empty list of integer seeds, got {value!r}")
    if len(set(value)) != len(value):
        raise ConfigError(f"{where}: seeds repeat: {value}")
    return list(value)


def _params(raw: Any, where: str) -> dict[str, Param]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of key → {{type: ..., ...}}, got {raw!r}")
    return space_from_dict(where, {"params": raw}).params


def _overrides(raw: Any, where: str) -> list[str]:
    if raw is None:
        return []
    if not (isinstance(raw, list) and all(isinstance(o, str) for o in raw)):
        raise ConfigError(f"{where}: expected a list of Hydra overrides, got {raw!r}")
    return list(raw)


def _label_free_rule(rule: Any, where: str) -> str:
    from ..selection import RULES

    if rule not in RULES or RULES[rule].uses_target_labels or RULES[rule].metric is None:
        allowed = [n for n, r in RULES.items() if not r.uses_target_labels and r.metric]
        raise ConfigError(f"{where}: rule '{rule}' cannot choose trials without target labels; choose one of: {', '.join(allowed)}")
    return rule


def _source_phase(raw: Any, arms: dict, raw_arms: dict, rule: str, where: str) -> Optional[SourcePhase]:
    from ..selection import RULES

    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) - {"arm", "fraction"}:
        raise ConfigError(f"{where}: source_phase: expected {{arm: <arm>, fraction: <0..1>}}, got {raw!r}")
    phase = SourcePhase(str(raw.get("arm", "")), raw.get("fraction", 0.5))
    if phase.arm not in arms:
        raise ConfigError(f"{where}: source_phase.arm '{phase.arm}' is not an arm; arms: {', '.join(arms)}")
    if (raw_arms[phase.arm] or {}).get("source_phase") is not None:
        raise ConfigError(f"{where}: source_phase.arm '{phase.arm}' is itself source-free; name an arm that trains on source labels")
    if not (isinstance(phase.fraction, (int, float)) and 0 < phase.fraction < 1):
        raise ConfigError(f"{where}: source_phase.fraction must lie strictly between 0 and 1, got {phase.fraction!r}")
    if RULES[rule].reads_source:
        raise ConfigError(
            f"{where}: a source-free arm cannot be chosen by rule '{rule}' (it reads the source split); give the arm its own rule, e.g. rule: classami"
        )
    return phase


def spec_from_dict(name: str, raw: dict) -> ComparisonSpec:
    unknown = set(raw) - ALLOWED_KEYS
    unknown_tuning = set(raw.get("tuning") or {}) - {"n_trials", "seed", "sampler", "pruner"}
    if unknown_tuning:
        raise ConfigError(f"comparison {name}: unknown tuning key(s) {', '.join(sorted(unknown_tuning))}; allowed: n_trials, seed, sampler, pruner")
    if unknown:
        raise ConfigError(f"comparison {name}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(ALLOWED_KEYS))}")
    rule = _label_free_rule(raw.get("rule", "source_val"), f"comparison {name}")
    tuning = raw.get("tuning") or {}
    n_trials = tuning.get("n_trials")
    if not (isinstance(n_trials, int) and n_trials >= 1):
        raise ConfigError(f"comparison {name}: tuning.n_trials must be a whole number ≥ 1 (the same for every arm), got {n_trials!r}")
    sampler = tuning.get("sampler", "tpe")
    if sampler not in SAMPLERS or sampler == "grid":
        raise ConfigError(f"comparison {name}: tuning.sampler '{sampler}' is not allowed; choose tpe, random or cmaes")
    pruner = tuning.get("pruner", "median")
    pruner_name = pruner.get("type") if isinstance(pruner, dict) else pruner
    if pruner_name not in PRUNERS:
        raise ConfigError(f"comparison {name}: tuning.pruner '{pruner_name}' is not allowed; choose one of: {', '.join(PRUNERS)}")
    tuning_seed = _seeds([tuning.get("seed", 100)], f"comparison {name}: tuning.seed")[0]
    eval_seeds = _seeds(raw.get("eval_seeds"), f"comparison {name}: eval_seeds")
    if tuning_seed in eval_seeds:
        raise ConfigError(f"comparison {name}: the tuning seed {tuning_seed} is also an evaluation seed; they must be disjoint")
    if len(eval_seeds) < 5:
        raise ConfigError(f"comparison {name}: eval_seeds: at least 5 evaluation seeds, got {len(eval_seeds)}")
    shared = _params(raw.get("shared"), f"comparison {name}: shared")
    raw_arms = raw.get("arms") or {}
    if not isinstance(raw_arms, dict) or len(raw_arms) < 2:
        raise ConfigError(f"comparison {name}: arms: at least two arms, each {{overrides: [...], params: {{...}}}}")
    arms = {}
    for arm_name, arm in raw_arms.items():
        arm = arm or {}
        where = f"comparison {name}: arm {arm_name}"
        extra = set(arm) - {"overrides", "params", "rule", "source_phase"}
        if extra:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(extra))}; allowed: overrides, params, rule, source_phase")
        params = {**shared, **_params(arm.get("params"), where)}
        if not params:
            raise ConfigError(f"{where} searches nothing; declare shared params")
        arm_rule = _label_free_rule(arm["rule"], where) if arm.get("rule") else None
        arms[arm_name] = Arm(arm_name, _overrides(arm.get("overrides"), f"arm {arm_name}"), params, arm_rule)
    for arm_name, arm in raw_arms.items():  # once every arm is known: a source phase names a labelled arm
        phase = _source_phase((arm or {}).get("source_phase"), arms, raw_arms, arms[arm_name].rule or rule, f"comparison {name}: arm {arm_name}")
        arms[arm_name] = replace(arms[arm_name], source_phase=phase)
    baseline = raw.get("baseline", "source_only")
    if baseline not in arms:
        raise ConfigError(f"comparison {name}: baseline '{baseline}' is not an arm; arms: {', '.join(arms)}")
    source_free = [a for a, arm in arms.items() if arm.source_phase is not None]
    if baseline in source_free:
        raise ConfigError(f"comparison {name}: baseline '{baseline}' is source-free; the baseline trains on source labels")
    upper = None
    if raw.get("upper_bound"):
        u = raw["upper_bound"]
        if u.get("arm", baseline) not in arms:
            raise ConfigError(f"comparison {name}: upper_bound.arm '{u.get('arm')}' is not an arm")
        upper = UpperBound(str(u.get("name", "train_on_target")), u.get("arm", baseline), _overrides(u.get("overrides"), "upper_bound"))
        if upper.arm in source_free:
            raise ConfigError(f"comparison {name}: upper_bound.arm '{upper.arm}' is source-free; bound an arm that trains on labels")
        if upper.name in arms:
            raise ConfigError(f"comparison {name}: upper_bound.name '{upper.name}' collides with an arm")
    sensitivity = None
    if raw.get("sensitivity"):
        s = raw["sensitivity"]
        missing = [a for a in s.get("arms", []) if a not in arms]
        if missing or not s.get("arms"):
            raise ConfigError(f"comparison {name}: sensitivity.arms must name arms; unknown: {', '.join(missing) or 'none given'}")
        if set(s["arms"]) & set(source_free):
            raise ConfigError(f"comparison {name}: sensitivity.arms: source-free arms ({', '.join(source_free)}) are not supported")
        if not s.get("key") or not s.get("values"):
            raise ConfigError(f"comparison {name}: sensitivity needs key and values")
        sensitivity = Sensitivity(
            list(s["arms"]), str(s["key"]), [float(v) for v in s["values"]], _seeds(s.get("seeds", eval_seeds), f"comparison {name}: sensitivity.seeds")
        )
    tasks = raw.get("tasks") or {}
    if not isinstance(tasks, dict) or any(not isinstance(k, (str, int)) or "/" in str(k) for k in tasks):
        raise ConfigError(f"comparison {name}: tasks: expected a mapping of task name (no '/') → a list of Hydra overrides, got {tasks!r}")
    tasks = {str(k): _overrides(v, f"comparison {name}: task {k}") for k, v in tasks.items()}
    return ComparisonSpec(
        name=name,
        title=str(raw.get("title", name)),
        experiment=str(raw.get("experiment", name)),
        overrides=_overrides(raw.get("overrides"), f"comparison {name}: overrides"),
        rule=rule,
        n_trials=n_trials,
        tuning_seed=tuning_seed,
        sampler=sampler,
        pruner=pruner,
        eval_seeds=eval_seeds,
        baseline=baseline,
        arms=arms,
        upper_bound=upper,
        sensitivity=sensitivity,
        notes=str(raw.get("notes", "")),
        tasks=tasks,
    )

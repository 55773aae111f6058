"""Search spaces and study settings, declared in yaml (`conf/search/<name>.yaml`) or as Hydra sweep
overrides on the command line, turned into Optuna suggestions and back into Hydra overrides.

A space file:

    overrides: [adapt=dann]                     # fixed for every trial (the command line wins)
    params:
      optim.lr: {type: float, low: 1.0e-4, high: 1.0e-1, log: true}
      adapt.trade_off: {type: float, low: 0.1, high: 3.0}
      freeze: {type: categorical, choices: [linear_probe, full]}   # a config-group choice
    study: {n_trials: 20, sampler: tpe, pruner: median, seed: 0}

Command-line overrides in Hydra's sweep syntax add or replace params (`optim.lr=tag(log,interval(1e-4,1e-1))`,
`adapt.gamma=tag(int,interval(5,15))`, `freeze=choice(full,linear_probe)`, `seed=range(0,3)`, `adapt=dann,coral`); a plain override of a searched
key (`optim.lr=0.01`) fixes it and removes it from the search.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import optuna

from ..errors import ConfigError

PARAM_TYPES = ("float", "int", "categorical")
SAMPLERS = ("tpe", "random", "grid", "cmaes")
PRUNERS = ("median", "percentile", "hyperband", "successive_halving", "threshold", "none")


@dataclass
class Param:
    """One searched key: a config value (`optim.lr`) or a config-group choice (`freeze`)."""

    name: str
    type: str
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: Optional[list] = None
    #: Values tried by the grid sampler for a float param (int and categorical params enumerate themselves).
    grid: Optional[list] = None

    def check(self) -> "Param":
        where = f"search param {self.name}"
        if self.type not in PARAM_TYPES:
            raise ConfigError(f"{where}: type '{self.type}' is not allowed; choose one of: {', '.join(PARAM_TYPES)}")
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError(f"{where}: categorical needs a non-empty 'choices' list")
            for choice in self.choices:
                if choice is not None and not isinstance(choice, (bool, int, float, str)):
                    raise ConfigError(f"{where}: choice {choice!r} must be a number, string, bool or null")
            return self
        if self.low is None or self.high is None:
            raise ConfigError(f"{where}: {self.type} needs 'low' and 'high'")
        cast = float if self.type == "float" else int
        try:
            self.low, self.high = cast(self.low), cast(self.high)
            self.step = None if self.step is None else cast(self.step)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: low/high/step must be numbers, got {self.low!r}, {self.high!r}, {self.step!r}") from None
        if self.low > self.high:
            raise ConfigError(f"{where}: low ({self.low}) must be ≤ high ({self.high})")
        if self.log and self.low <= 0:
            raise ConfigError(f"{where}: log scale needs low > 0, got {self.low}")
        if self.log and self.step is not None:
            raise ConfigError(f"{where}: set either log or step, not both")
        return self

    def distribution(self):
        import optuna.distributions as d

        if self.type == "categorical":
            return d.CategoricalDistribution(self.choices)
        if self.type == "int":
            return d.IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return d.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def grid_values(self) -> list:
        """The values the grid sampler enumerates."""
        if self.type == "categorical":
            return list(self.choices)
        if self.grid:
            return list(self.grid)
        if self.type == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            return [round(self.low + i * self.step, 12) for i in range(count)]
        raise ConfigError(f"search param {self.name}: the grid sampler needs 'grid: [values]' or 'step' for a float param")


@dataclass
class StudySettings:
    n_trials: int = 20
    #: tpe | random | grid | cmaes, or {type: tpe, <constructor options>}.
    sampler: Any = "tpe"
    #: median | percentile | hyperband | successive_halving | threshold | none, or {type: ..., <options>}.
    pruner: Any = "median"
    seed: int = 0
    #: Optuna storage URL: None → sqlite:///optuna.db in the working dir; postgresql://... for many machines.
    storage: Optional[str] = None
    #: None → the space name.
    study_name: Optional[str] = None
    #: Reopen an existing study of the same name (an interrupted sweep resumes); false → error if it exists.
    load_if_exists: bool = True
    #: Seconds between a running trial's heartbeats, and without one for `grace_period` it counts as
    #: lost (its worker died): it is marked FAIL and its parameters are queued again.
    heartbeat_interval: int = 10
    grace_period: int = 60
    #: Where trials write output and checkpoints: None → search/<study_name> in the working dir.
    out_dir: Optional[str] = None
    #: Keep each trial's checkpoints (they are deleted after the trial by default: a study makes many).
    keep_checkpoints: bool = False


@dataclass
class SearchSpace:
    name: str
    params: dict[str, Param] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    study: StudySettings = field(default_factory=StudySettings)


def space_dir() -> Path:
    from ..paths import CONFIG_DIR

    return Path(CONFIG_DIR) / "search"


def available_spaces() -> list[str]:
    return sorted(p.stem for p in space_dir().glob("*.yaml"))


def load_space(name_or_path: str) -> SearchSpace:
    """`conf/search/<name>.yaml`, or any yaml file path."""
    from omegaconf import OmegaConf

    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.exists()):
        path = space_dir() / f"{name_or_path}.yaml"
    if not path.exists():
        raise ConfigError(f"--space: no search space '{name_or_path}'; choose one of: {', '.join(available_spaces())} (or a yaml path)")
    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    return space_from_dict(path.stem, raw)


def space_from_dict(name: str, raw: dict) -> SearchSpace:
    unknown = set(raw) - {"params", "overrides", "study"}
    if unknown:
        raise ConfigError(f"search space {name}: unknown key(s) {', '.join(sorted(unknown))}; allowed: params, overrides, study")
    params = {}
    for key, spec in (raw.get("params") or {}).items():
        if not isinstance(spec, dict):
            raise ConfigError(f"search param {key}: expected a mapping like {{type: float, low: ..., high: ...}}, got {spec!r}")
        allowed = {f.name for f in dataclasses.fields(Param)} - {"name"}
        extra = set(spec) - allowed
        if extra:
            raise ConfigError(f"search param {key}: unknown field(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}")
        params[key] = Param(name=key, **spec).check()
    study_raw = raw.get("study") or {}
    allowed = {f.name for f in dataclasses.fields(StudySettings)}
    extra = set(study_raw) - allowed
    if extra:
        raise ConfigError(f"search space {name}: unknown study setting(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(allowed))}")
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list):
        raise ConfigError(f"search space {name}: overrides must be a list of Hydra overrides")
    return SearchSpace(name=name, params=params, overrides=[str(o) for o in overrides], study=StudySettings(**study_raw))


# ------------------------------------------------------------------ Hydra overrides
def _parse(overrides: list[str]):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    try:
        return OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise ConfigError(f"override: {str(exc).splitlines()[0]}") from None


def override_key(override: str) -> str:
    """`+a.b=1` → `a.b`, `freeze=full` → `freeze`: the key two overrides collide on."""
    return _parse([override])[0].key_or_group


def param_from_sweep(parsed) -> Param:
    """A Hydra sweep override (choice / comma list, range, interval) as a search param."""
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    value = parsed.value()
    key = parsed.key_or_group
    if isinstance(value, ChoiceSweep):
        return Param(key, "categorical", choices=list(value.list)).check()
    if isinstance(value, RangeSweep):
        numbers = (value.start, value.stop, value.step)
        if all(isinstance(n, int) for n in numbers):
            return Param(key, "int", low=value.start, high=value.stop - value.step, step=value.step).check()
        return Param(key, "float", low=value.start, high=value.stop, step=value.step).check()
    if isinstance(value, IntervalSweep):
        log = "log" in value.tags
        if "int" in value.tags:  # Hydra makes interval bounds floats; tag(int,interval(a,b)) asks for ints
            return Param(key, "int", low=int(value.start), high=int(value.end), log=log).check()
        return Param(key, "float", low=value.start, high=value.end, log=log).check()
    raise ConfigError(f"{parsed.input_line}: unsupported sweep; use choice(...), a,b,c, range(a,b) or [tag(log,)]interval(a,b)")


def merge_command_line(space: SearchSpace, command_line: list[str]) -> tuple[SearchSpace, list[str]]:
    """Split command-line overrides into search params (sweeps) and fixed overrides; the fixed
    overrides are the space's own followed by the command line's, later ones replacing earlier ones
    of the same key. Returns the updated space and the fixed overrides for every trial."""
    params = dict(space.params)
    fixed: dict[str, str] = {}
    for line in space.overrides:
        fixed[override_key(line)] = line
    for parsed in _parse(list(command_line)):
        key = parsed.key_or_group
        if parsed.is_sweep_override():
            params[key] = param_from_sweep(parsed)
            fixed.pop(key, None)
        else:
            fixed[key] = parsed.input_line
            params.pop(key, None)  # fixed on the command line: no longer searched
    return dataclasses.replace(space, params=params), list(fixed.values())


_PLAIN = re.compile(r"^[A-Za-z_][\w\-./:]*$")


def format_value(value: Any) -> str:
    """A Python value as Hydra override syntax (strings quoted only where the grammar needs it)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in ("null", "true", "false", "nan", "inf"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def trial_overrides(fixed: list[str], values: dict[str, Any]) -> list[str]:
    """The fixed overrides with the trial's suggested values after them (a suggestion wins a key clash)."""
    keep = [o for o in fixed if override_key(o) not in values]
    return keep + [f"{key}={format_value(v)}" for key, v in values.items()]


def suggest(trial, params: dict[str, Param]) -> dict[str, Any]:
    """Ask the Optuna trial for a value of every param (in declaration order, so seeded runs repeat)."""
    values = {}
    for name, p in params.items():
        if p.type == "categorical":
            values[name] = trial.suggest_categorical(name, p.choices)
        elif p.type == "int":
            values[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return values


# ------------------------------------------------------------------ study settings → Optuna objects
def _named(setting: Any, kind: str, allowed: tuple[str, ...]) -> tuple[str, dict]:
    if isinstance(setting, str) or setting is None:
        name, options = (setting or "none"), {}
    elif isinstance(setting, dict):
        options = dict(setting)
        name = options.pop("type", None)
        if name is None:
            raise ConfigError(f"study.{kind}: a mapping needs 'type' (one of: {', '.join(allowed)})")
    else:
        raise ConfigError(f"study.{kind}: expected a name or {{type: ..., options}}, got {setting!r}")
    if name not in allowed:
        raise ConfigError(f"study.{kind}: '{name}' is not allowed; choose one of: {', '.join(allowed)}")
    return name, options


def sampler_name(settings: StudySettings) -> str:
    return _named(settings.sampler, "sampler", SAMPLERS)[0]


def build_sampler(settings: StudySettings, params: dict[str, Param], seed: int):
    """The study's sampler; `seed` differs per worker so parallel workers do not draw the same points."""
    name, options = _named(settings.sampler, "sampler", SAMPLERS)
    try:
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, **options)
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed, **options)
        if name == "grid":
            return QueueGridSampler({k: p.grid_values() for k, p in params.items()}, seed=seed, **options)
        try:
            import cmaes  # noqa: F401  (optuna's CmaEsSampler needs it at sampling time)
        except ImportError:
            raise ConfigError("study.sampler: cmaes needs the 'cmaes' package (pip install cmaes)") from None
        return optuna.samplers.CmaEsSampler(seed=seed, **options)
    except TypeError as exc:
        raise ConfigError(f"study.sampler: {name}: {exc}") from None


def grid_size(params: dict[str, Param]) -> int:
    return math.prod(len(p.grid_values()) for p in params.values()) if params else 1


def build_pruner(settings: StudySettings, max_epochs: int):
    """Decides from the per-epoch validation values whether a trial goes on (epochs are the pruning steps)."""
    name, options = _named(settings.pruner, "pruner", PRUNERS)
    p = optuna.pruners
    try:
        if name == "median":
            return p.MedianPruner(**{"n_startup_trials": 5, "n_warmup_steps": 1, **options})
        if name == "percentile":
            return p.PercentilePruner(**{"percentile": 25.0, "n_startup_trials": 5, "n_warmup_steps": 1, **options})
        if name == "hyperband":
            return p.HyperbandPruner(**{"min_resource": 1, "max_resource": max_epochs, **options})
        if name == "successive_halving":
            return p.SuccessiveHalvingPruner(**{"min_resource": 1, **options})
        if name == "threshold":
            return p.ThresholdPruner(**options)
        return p.NopPruner()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"study.pruner: {name}: {exc}") from None


class QueueGridSampler(optuna.samplers.GridSampler):
    """Optuna's GridSampler calls study.stop() when the grid is used up, which works only inside
    study.optimize; tlbench workers run their own trial queue and stop when it is empty."""

    def after_trial(self, study, trial, state, values) -> None:
        return None

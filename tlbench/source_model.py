"""The source model a source-free method (SHOT) starts from: a recorded tlbench run, named by
`adapt.source_model` as `runs:/<run_id>` or as a method name.

A method name means "the finished run of that method in this experiment with the same seed, source
domain, backbone and head", which makes the two-step protocol (source training, then source-free
adaptation) one reproducible sweep: `tlbench -m adapt=source_only seed=0,1,2` followed by
`tlbench -m adapt=shot adapt.source_model=source_only seed=0,1,2`. Its backbone, bottleneck and head
weights are copied into the new module; nothing of the source data is read.
"""

from __future__ import annotations

from .backbones.weights import RUNS_PREFIX
from .config import RunConfig, flatten, to_plain_dict
from .errors import ConfigError
from .tracking import MAX_PARAM_LENGTH, Store

#: Recorded params that must equal this run's for a recorded run to be its source model: the same
#: network (so the weights fit) trained on the same source domain with the same seed.
MATCHING_PARAMS = ("seed", "data.source", "data.synthetic_size", "data.image_size", "backbone.", "head.")


def _matching_params(run: RunConfig) -> dict[str, str]:
    flat = flatten(to_plain_dict(run))
    return {k: str(v)[:MAX_PARAM_LENGTH] for k, v in flat.items() if any(k == p or k.startswith(p) for p in MATCHING_PARAMS)}


def source_run_id(run: RunConfig, store: Store) -> str:
    """The run id `adapt.source_model` names in `store`; a ConfigError that says what to run when there is none."""
    spec = run.adapt.source_model
    if not spec:
        raise ConfigError(
            "adapt.source_model: SHOT adapts a source-trained model; set runs:/<run_id> or a method "
            "name such as source_only (its finished run with the same seed, data.source, backbone and head)"
        )
    if spec.startswith(RUNS_PREFIX):
        return spec[len(RUNS_PREFIX) :].strip("/").split("/")[0]
    client = store.client
    experiment = client.get_experiment_by_name(store.experiment)
    wanted = _matching_params(run)
    candidates = (
        []
        if experiment is None
        else client.search_runs(
            [experiment.experiment_id],
            f"params.`adapt.name` = '{spec}' and params.seed = '{run.seed}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
        )
    )
    for candidate in candidates:
        if all(candidate.data.params.get(k) == v for k, v in wanted.items()):
            return candidate.info.run_id
    raise ConfigError(
        f"adapt.source_model={spec}: no finished {spec} run with seed {run.seed}, source '{run.data.source}', "
        f"backbone {run.backbone.name} and this head in experiment '{store.experiment}' of {store.uri}; "
        f"run it first (tlbench adapt={spec} seed={run.seed} ...) or pass runs:/<run_id>"
    )


def check_source_data(run: RunConfig, run_id: str, trained_on: dict) -> None:
    """The source model must have learned from this run's source domain only: a model whose labelled
    data was the target domain (e.g. a train-on-target upper bound) would leak target labels into a
    'source-free' result."""
    labelled = trained_on.get("source")
    if labelled == run.data.target:
        raise ConfigError(
            f"adapt.source_model: run {run_id} was trained on labelled '{labelled}', this run's target "
            "domain: its weights carry target labels; use a source model trained on the source domain"
        )
    if labelled != run.data.source:
        raise ConfigError(
            f"adapt.source_model: run {run_id} was trained on '{labelled}', not on this run's source "
            f"'{run.data.source}'; use a source model of the same source domain"
        )


def load_source_model(module, plan) -> None:
    """Copy the backbone, bottleneck and head weights of the plan's source run into `module`."""
    from .restore import load_run

    run, run_id = plan.run, plan.source_run_id
    source = load_run(run_id, plan.store.uri, module_class=type(module), client=plan.store.client)
    check_source_data(run, run_id, (source.run_config or {}).get("data", {}))
    for part in ("backbone", "bottleneck", "head"):
        try:
            getattr(module, part).load_state_dict(getattr(source, part).state_dict())
        except RuntimeError as exc:
            raise ConfigError(
                f"adapt.source_model: the {part} of run {run_id} does not fit this run's model "
                f"({str(exc).splitlines()[0]}); use the source run's backbone and head settings"
            ) from None

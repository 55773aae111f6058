"""`tlbench rank`: which pretrained model to start from, scored in seconds before any fine-tuning.

    tlbench rank candidates=[efficientnet_lite0,small_cnn_fashion,lenet_digits] data=handwritten data.labels_per_class=10

Every candidate's frozen features of the labelled training split (the images `tlbench` would train on
with the same overrides, label budget and seed; never a target's labels) go through the
transferability estimators, via the feature cache; LEEP and NCE also need the candidate's source head.
Each (candidate, task) is one MLflow run with the scores as `rank/<estimator>` metrics, in experiment
`rank` unless tracking.experiment says otherwise. A candidate is a `conf/rank_candidates/<name>.yaml`
(backbone, weights, source head) or a plain `conf/backbone` option with its default weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from .errors import ConfigError, TlbenchError, WeightsError

CANDIDATE_DIR = Path(__file__).resolve().parent.parent / "conf" / "rank_candidates"
BACKBONE_DIR = CANDIDATE_DIR.parent / "backbone"
#: MLflow experiment holding the backbones tlbench pretrained for ranking (experiments/ranking/zoo.py).
ZOO_EXPERIMENT = "zoo"
ZOO_BUILD = "python experiments/ranking/zoo.py"
DEFAULT_EXPERIMENT = "rank"
USAGE = """usage: tlbench rank candidates=[NAME,...] [estimators=[NAME,...]] [overrides ...]

Score pretrained candidates for the labelled training split of the task the overrides compose (data=...,
data.labels_per_class=..., seed=...), print the ranking, record one MLflow run per candidate.
Candidates: {candidates}
Estimators: {estimators} (leep and nce only for candidates with a source head)"""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """A backbone config, where its weights come from, and where its source classifier comes from."""

    name: str
    backbone: str
    weights: str | None = None  # None: the backbone config's default
    source_head: str = "none"  # none | imagenet | zoo

    @property
    def description(self) -> str:
        return f"{self.backbone} ({self.weights or 'default weights'})"


def candidate_names() -> list[str]:
    return sorted({p.stem for p in CANDIDATE_DIR.glob("*.yaml")} | {p.stem for p in BACKBONE_DIR.glob("*.yaml")})


def load_candidate(name: str) -> Candidate:
    import yaml

    path = CANDIDATE_DIR / f"{name}.yaml"
    if path.is_file():
        spec = yaml.safe_load(path.read_text()) or {}
        unknown = set(spec) - {f.name for f in dataclasses.fields(Candidate)}
        if unknown or "backbone" not in spec:
            raise ConfigError(f"{path}: needs 'backbone' and allows only weights, source_head (found {', '.join(sorted(spec))})")
        return Candidate(name=name, **spec)
    if (BACKBONE_DIR / f"{name}.yaml").is_file():
        return Candidate(name=name, backbone=name)
    raise ConfigError(f"candidates: unknown candidate '{name}'; choose from {', '.join(candidate_names())}")


def split_arguments(args: list[str]) -> tuple[list[str], list[str], list[str]]:
    """(candidates, estimators, the remaining Hydra overrides) from `key=value` arguments."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from .transferability import ESTIMATORS

    candidates: list[str] = []
    estimators = list(ESTIMATORS)
    rest = []
    for arg in args:
        key = arg.split("=", 1)[0]
        if key not in ("candidates", "estimators"):
            rest.append(arg)
            continue
        try:
            value = OverridesParser.create().parse_override(arg).value()
        except HydraException as exc:
            raise ConfigError(f"{key}: cannot parse '{arg}' ({str(exc).splitlines()[0]}); write {key}=[a,b,c]") from None
        values = [str(v) for v in (value if isinstance(value, list) else [value])]
        if key == "candidates":
            candidates = values
        else:
            unknown = [v for v in values if v not in ESTIMATORS]
            if unknown:
                raise ConfigError(f"estimators: unknown '{unknown[0]}'; choose from {', '.join(ESTIMATORS)}")
            estimators = values
    if not candidates:
        raise ConfigError("candidates: missing; e.g. tlbench rank candidates=[small_cnn,efficientnet_lite0] data=handwritten")
    return candidates, estimators, rest


def zoo_run(store, name: str) -> str:
    """Run id of the newest FINISHED zoo run of this candidate (tag zoo_member=<name>) in `store`."""
    uri, client = store.uri, store.client
    experiment = client.get_experiment_by_name(ZOO_EXPERIMENT)
    runs = (
        []
        if experiment is None
        else client.search_runs(
            [experiment.experiment_id],
            f"tags.zoo_member = '{name}' and attributes.status = 'FINISHED'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
    )
    if not runs:
        raise WeightsError(f"candidate {name}: no finished zoo run in {uri} (experiment '{ZOO_EXPERIMENT}'); build the zoo with {ZOO_BUILD} --uri {uri}")
    return runs[0].info.run_id


def source_head(candidate: Candidate, zoo_run_id: str | None, store):
    """The candidate's source classifier (features → source-class logits), or None when it has none."""
    from torch import nn

    if candidate.source_head == "none":
        return None
    if candidate.source_head == "imagenet":
        if candidate.backbone != "efficientnet_lite0":
            raise ConfigError(f"candidate {candidate.name}: source_head=imagenet is offline only for efficientnet_lite0")
        from .backbones.efficientnet_lite0 import load_efficientnet_lite0_imagenet_classifier

        return load_efficientnet_lite0_imagenet_classifier().classifier
    if candidate.source_head == "zoo" and zoo_run_id:
        from .backbones.weights import read_state_dict, resolve_checkpoint

        uri = f"runs:/{zoo_run_id}/head/head.pt"
        state = read_state_dict(resolve_checkpoint(uri, store.uri), uri)
        if set(state) != {"weight", "bias"}:
            raise WeightsError(f"{uri}: expected a linear head (weight, bias), found {', '.join(sorted(state))}")
        head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
        head.load_state_dict(state)
        return head.eval()
    raise ConfigError(f"candidate {candidate.name}: source_head must be none, imagenet or zoo (zoo needs weights: zoo)")


def labelled_features(backbone, domain, labelled):
    """Features of the labelled split through the shared feature cache (keyed by weights, preprocessing and images)."""
    from .data.base import fingerprint_tensors
    from .feature_cache import backbone_digest, featurize_split, split_key

    key = split_key(backbone, backbone_digest(backbone), domain, "labelled", labelled.labels)
    key["subset"] = fingerprint_tensors(labelled.images, labelled.labels)
    return featurize_split(backbone, labelled, key)


def score_candidate(candidate: Candidate, run, domain, labelled, estimators: list[str], zoo_run_id: str | None, store) -> dict[str, float]:
    """Scores and timings of one candidate: `rank/<estimator>`, `rank/feature_seconds`, `rank/score_seconds`."""
    import torch

    from .backbones import BACKBONES
    from .plan import local_backbone
    from .transferability import FEATURE_ESTIMATORS, HEAD_ESTIMATORS

    started = time.perf_counter()
    torch.manual_seed(run.seed)  # random-init candidates: the same weights for the same seed
    backbone = BACKBONES.build(local_backbone(run.backbone, store))
    cached = labelled_features(backbone, domain, labelled)
    features, labels = cached.images.double().numpy(), cached.labels.numpy()
    head = source_head(candidate, zoo_run_id, store)
    probs = None
    if head is not None:
        with torch.inference_mode():
            probs = head.to(cached.images.device)(cached.images.float()).softmax(1).double().numpy()
    feature_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = {}
    for name in estimators:
        if name in FEATURE_ESTIMATORS:
            scores[f"rank/{name}"] = float(FEATURE_ESTIMATORS[name](features, labels))
        elif probs is not None:
            scores[f"rank/{name}"] = float(HEAD_ESTIMATORS[name](probs, labels))
    return {
        **scores,
        "rank/feature_seconds": feature_seconds,
        "rank/score_seconds": time.perf_counter() - started,
        "rank/samples": float(len(labels)),
        "rank/feature_dim": float(features.shape[1]),
    }


def rank_hash(run, candidate: Candidate, estimators: list[str]) -> str:
    """Key for skip_done: the candidate's resolved config (weights, data, budget, seed) and the estimators."""
    from .tracking import config_hash

    text = json.dumps([config_hash(run), dataclasses.asdict(candidate), estimators], sort_keys=True)
    return "rank-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def rank(args: list[str]) -> list[dict[str, Any]]:
    """Score every candidate; returns one row per candidate (name, scores, run_id), best LogME first."""
    from .composition import compose
    from .tracking import Store

    names, estimators, overrides = split_arguments(args)
    candidates = [load_candidate(name) for name in names]  # every name checked before any work
    if not any(o.split("=", 1)[0].lstrip("+") == "tracking.experiment" for o in overrides):
        overrides = [*overrides, f"tracking.experiment={DEFAULT_EXPERIMENT}"]
    base = compose(overrides)
    return _rank(base, candidates, estimators, overrides, Store.of(base.tracking))


def _rank(base, candidates: list[Candidate], estimators: list[str], overrides: list[str], store) -> list[dict[str, Any]]:
    from .composition import compose
    from .config import flatten, to_plain_dict
    from .data.datamodule import DomainDataModule
    from .tracking import finished_run_with_hash, recorded_run

    data = DomainDataModule(base.data, base.seed)
    labelled, domain = data.source_train, data.source
    task = f"{base.data.name}" + (f" {base.data.labels_per_class}/class" if base.data.labels_per_class else "") + f" s{base.seed}"
    rows = []
    for candidate in candidates:
        zoo_run_id = zoo_run(store, candidate.name) if candidate.weights == "zoo" else None
        weights = f"runs:/{zoo_run_id}/backbone/backbone.pt" if zoo_run_id else candidate.weights
        run = compose([*overrides, f"backbone={candidate.backbone}", *([f"backbone.weights={weights}"] if weights else [])])
        digest = rank_hash(run, candidate, estimators)
        done = finished_run_with_hash(store, digest) if run.tracking.skip_done else None
        if done:
            rows.append({"candidate": candidate.name, "run_id": done, "split": domain.name, **recorded_scores(store, done)})
            continue
        tags = {
            "config_hash": digest,
            "rank_candidate": candidate.name,
            "source_head": candidate.source_head,
            "dataset": run.data.name,
            "labelled_split": domain.name,
            "source_fingerprint": domain.fingerprint,
        }
        with recorded_run(store, f"rank {candidate.name} · {task}", tags) as recorder:
            recorder.log_params(
                {
                    **flatten(to_plain_dict(run)),
                    "rank.candidate": candidate.name,
                    "rank.source_head": candidate.source_head,
                    "rank.estimators": ",".join(estimators),
                }
            )
            scores = score_candidate(candidate, run, domain, labelled, estimators, zoo_run_id, store)
            recorder.log_metrics(scores, step=0)
        rows.append({"candidate": candidate.name, "run_id": recorder.run_id, "split": domain.name, **scores})
    return sorted(rows, key=lambda r: -r.get("rank/logme", float("-inf")))


def recorded_scores(store, run_id: str) -> dict[str, float]:
    metrics = store.client.get_run(run_id).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith("rank/")}


def ranking_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: one row per candidate, its score and rank (1 = best) under every estimator."""
    import pandas as pd

    frame = pd.DataFrame(rows).set_index("candidate")
    columns = [c for c in frame.columns if c.startswith("rank/") and not c.endswith(("seconds", "samples", "feature_dim"))]
    shown = pd.DataFrame(index=frame.index)
    for column in columns:
        order = frame[column].rank(ascending=False, method="min")
        shown[column[5:]] = [("–" if pd.isna(v) else f"{v:.3f} ({int(r)})") for v, r in zip(frame[column], order)]
    shown["seconds"] = (frame["rank/feature_seconds"] + frame["rank/score_seconds"]).map(lambda s: f"{s:.1f}")
    return shown.to_markdown(disable_numparse=True)


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help"):
        from .transferability import ESTIMATORS

        print(USAGE.format(candidates=", ".join(candidate_names()), estimators=", ".join(ESTIMATORS)))
        return 0 if args else 2
    import os

    from .console import quiet_libraries

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per runs:/ weights file
    quiet_libraries()
    try:
        rows = rank(args)
    except TlbenchError as exc:
        print(f"tlbench: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(ranking_table(rows))
    print(
        f"scored on {int(rows[0]['rank/samples'])} labelled training images of {rows[0]['split']}; higher is better; "
        "(n) = rank under that estimator; – = no source head (LEEP/NCE need one)"
    )
    return 0

"""What a finished search reports: the summary, and the best trial, trials table and plots on its
MLflow parent run."""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any, Optional

import optuna
from optuna.trial import TrialState

from .job import SearchJob, log, masked
from .trial import counts_toward_budget


def summarize(study: optuna.Study, job: SearchJob) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    complete = by_state[TrialState.COMPLETE]
    result: dict[str, Any] = {
        "study_name": job.study_name,
        "storage": masked(job.storage),
        "metric": job.monitor,
        "direction": job.direction,
        "n_trials": job.n_trials,
        "complete": len(complete),
        "pruned": len(by_state[TrialState.PRUNED]),
        "failed": sum(1 for t in by_state[TrialState.FAIL] if counts_toward_budget(t)),
        "lost": sum(1 for t in by_state[TrialState.FAIL] if not counts_toward_budget(t)),
        "queued": len(by_state[TrialState.WAITING]),
        "running": len(by_state[TrialState.RUNNING]),
        "epochs": sum(int(t.user_attrs.get("epochs", 0)) for t in trials),
        "best_value": None,
        "best_params": {},
        "best_trial": None,
        "best_run_id": None,
    }
    if complete:
        best = study.best_trial
        result.update(
            best_value=best.value,
            best_params=dict(best.params),
            best_trial=best.number,
            best_overrides=list(best.user_attrs.get("overrides", [])),
            best_run_id=best.user_attrs.get("mlflow_run_id"),
            best_test_target_acc=best.user_attrs.get("test/target_acc"),
        )
    return result


def record_outcome(study: optuna.Study, job: SearchJob, parent, result: dict[str, Any]) -> None:
    """Best params/value, the trials table and the history and importance plots on the parent run."""
    metrics = {k: float(result[k]) for k in ("complete", "pruned", "failed", "lost", "epochs")}
    if result["best_value"] is not None:
        metrics["best_value"] = float(result["best_value"])
        parent.set_tags(
            {
                "best_trial": result["best_trial"],
                "best_run_id": result["best_run_id"] or "",
                **{f"best_params.{k}": v for k, v in result["best_params"].items()},
            }
        )
    parent.log_metrics(metrics, step=len(study.get_trials(deepcopy=False)))
    parent.log_text(json.dumps({k: v for k, v in result.items()}, indent=2, default=str), "search/summary.json")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            frame = study.trials_dataframe()
            frame.to_csv(Path(tmp) / "trials.csv", index=False)
            parent.log_artifact(Path(tmp) / "trials.csv", "search")
        except Exception as exc:
            log.warning("trials table not recorded: %s", exc)
        for name, plot in (("history.png", plot_history), ("param_importance.png", plot_importance)):
            try:
                note = plot(study, job, Path(tmp) / name)
            except Exception as exc:  # plots are a convenience, never the reason a search fails
                note = f"{name} not drawn: {type(exc).__name__}: {exc}"
            if note:
                parent.log_text(note + "\n", f"search/{Path(name).stem}.txt")
            else:
                parent.log_artifact(Path(tmp) / name, "search")


def plot_history(study: optuna.Study, job: SearchJob, path: Path) -> Optional[str]:
    """Objective per trial (pruned trials at their last reported value) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    if not trials:
        return "no completed or pruned trial to plot"
    better = max if job.mode == "max" else min
    fig, ax = plt.subplots(figsize=(6, 3.5))
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", color="tab:blue")
    ax.scatter([t.number for t in pruned], [t.value for t in pruned], label="pruned (last epoch)", color="tab:gray", marker="x")
    best, xs, ys = None, [], []
    for t in sorted(done, key=lambda t: t.number):
        best = t.value if best is None else better(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        last = max(t.number for t in trials)
        ax.step(xs + [last], ys + [ys[-1]], where="post", color="tab:red", label="best so far")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(job.monitor)
    ax.set_title(f"{job.study_name}: {job.direction} {job.monitor}")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


def plot_importance(study: optuna.Study, job: SearchJob, path: Path) -> Optional[str]:
    """fANOVA parameter importance; needs at least two completed trials."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return f"parameter importance needs ≥ 2 completed trials; this study has {len(complete)}"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(study)
    if not importances:
        return "parameter importance: no parameter varied across completed trials"
    names = list(importances)[::-1]
    fig, ax = plt.subplots(figsize=(6, 1.2 + 0.4 * len(names)))
    ax.barh(names, [importances[n] for n in names], color="tab:blue")
    ax.set_xlabel(f"importance for {job.monitor} (fANOVA)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None

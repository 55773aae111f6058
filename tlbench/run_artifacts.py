"""What a finished run leaves in MLflow besides metrics: its selected model (small nets by default),
the job's `.hydra/` folder, a learning-curve plot and confusion matrices.

Size budget: a tiny run's artifacts stay well under a few MB. The model is logged when
`tracking.log_model` is true, or when it is null (auto) and the model has at most AUTO_MODEL_MAX_PARAMS
parameters; big backbones log weights only when asked.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: Largest model (parameters) logged without `tracking.log_model=true`: ~4 MB of float32 weights.
AUTO_MODEL_MAX_PARAMS = 1_000_000
#: Raw target images stored as the model's input example.
EXAMPLE_IMAGES = 4
#: Per-epoch metrics drawn in the learning-curve plot: (metric, label).
CURVES = (
    ("val/source_acc", "source val (selects by default)"),
    ("val/target_acc", "target val (oracle only)"),
    ("eval/target_test_acc", "target test (never selects)"),
)


def should_log_model(log_model: bool | None, module) -> bool:
    """The config's choice, else auto: the inference model (without a method's discriminator) is small."""
    if log_model is not None:
        return bool(log_model)
    method = {id(p) for p in module.adapter.parameters()} if hasattr(module, "adapter") else set()
    return sum(p.numel() for p in module.parameters() if id(p) not in method) <= AUTO_MODEL_MAX_PARAMS


def log_run_artifacts(recorder, module, raw_datamodule, output_dir: str, log_model: bool | None, plots: bool = True, analysis: bool = False) -> None:
    """Everything above (the plots only with `plots`; the A-distance and embedding with `analysis`), for a
    run whose module holds its selected weights (after trainer.test)."""
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    hydra_folder = folder / ".hydra"
    if hydra_folder.is_dir():
        recorder.client.log_artifacts(recorder.run_id, str(hydra_folder), ".hydra")
    if plots:
        _log_figure(recorder, learning_curves(recorder), "plots/learning_curves.png")
        for split, counts in module.test_confusion().items():  # counted in the test pass: no extra inference
            name = split.replace("test/", "")
            _log_figure(
                recorder,
                confusion_figure(counts, raw_datamodule.target.class_names, f"{name} test (the selected checkpoint)"),
                f"plots/confusion_{name}_test.png",
            )
    from .feature_cache import CachedBackbone, on_images

    if analysis and module.needs.source and not raw_datamodule.in_domain:  # source-free: no source data to compare
        from .analysis import analyse

        with on_images(module) as whole:
            metrics, figure = analyse(whole, raw_datamodule.source.test, raw_datamodule.target_test, raw_datamodule.seed)
        recorder.log_metrics(metrics, step=0)
        _log_figure(recorder, figure, "plots/embedding.png")

    has_images = hasattr(raw_datamodule.target.test, "images")
    with on_images(module) as whole:  # a cached linear probe is logged with the backbone that made its features
        if should_log_model(log_model, whole) and not isinstance(whole.backbone, CachedBackbone) and has_images:
            from .mlflow_model import log_model as log_mlflow_model

            example = raw_datamodule.target.test.images[:EXAMPLE_IMAGES].numpy()
            log_mlflow_model(recorder, whole, example, folder)


def learning_curves(recorder):
    """Per-epoch accuracies of the run, from its recorded histories; None when there are none."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    histories = {name: recorder.client.get_metric_history(recorder.run_id, name) for name, _ in CURVES}
    if not any(histories.values()):
        return None
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, label in CURVES:
        points = sorted(histories[name], key=lambda m: m.step)
        if points:
            axes.plot(range(1, len(points) + 1), [100 * m.value for m in points], marker="o", label=label)
    from matplotlib.ticker import MaxNLocator

    axes.set_xlabel("epoch")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    axes.set_ylabel("accuracy (%)")
    axes.legend()
    figure.tight_layout()
    return figure


def confusion_figure(counts, class_names: list[str], title: str):
    """Row-normalised confusion matrix (true class × predicted class) from its counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    classes = len(class_names)
    counts = counts.float()
    rates = counts / counts.sum(1, keepdim=True).clamp(min=1)
    figure, axes = plt.subplots(figsize=(0.45 * classes + 2.5, 0.45 * classes + 2))
    axes.imshow(rates.numpy(), cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(classes), class_names, rotation=90, fontsize=7)
    axes.set_yticks(range(classes), class_names, fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title}: accuracy {100 * counts.diag().sum() / counts.sum():.1f}%", fontsize=8)
    figure.tight_layout()
    return figure


def _log_figure(recorder, figure, path: str) -> None:
    if figure is None:
        return
    import matplotlib.pyplot as plt

    recorder.client.log_figure(recorder.run_id, figure, path)
    plt.close(figure)

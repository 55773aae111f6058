"""tlbench: compare ways of transferring pretrained models, honestly and reproducibly.

The Python API (`tlbench.compose`, `build`, `fit`, `record`, `load_run`, `predict`, see tlbench/api.py) is
imported on first use, so `import tlbench` and `tlbench --help` stay fast."""

__version__ = "0.1.0"

_API = ("compose", "build", "fit", "record", "load_run", "module_from_checkpoint", "predict", "RunConfig")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tlbench' has no attribute {name!r}")

"""tlbench: compare ways of transferring pretrained models, honestly and reproducibly."""

__version__ = "0.1.0"

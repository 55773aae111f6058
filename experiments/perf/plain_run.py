"""The per-run-script peer of a tlbench sweep: one plain PyTorch script per configuration, as many
projects run their grids (a shell loop over `python train.py --seed N`). Same network (small_cnn + a
linear head), data (embedded synthetic → handwritten digits), batch size, optimizer and number of steps
as the tlbench grid in experiments/perf/benchmark.py; it trains, evaluates target test accuracy once and
writes one JSON line. It records nothing else: no tracking store, no checkpoints, no per-epoch validation.

    python experiments/perf/plain_run.py SEED STEPS OUT.json
"""

from __future__ import annotations

import json
import sys

import torch
import torch.nn.functional as F
from torch import nn


def main() -> None:
    seed, steps, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    from tlbench.backbones import BACKBONES
    from tlbench.config import DataConfig
    from tlbench.data import build_domain

    torch.manual_seed(seed)
    data = DataConfig(synthetic_size=400, batch_size=32)
    source, target = build_domain(data.source, data, seed), build_domain(data.target, data, seed)
    backbone = BACKBONES.build({"name": "small_cnn", "family": "small_cnn"})
    model = nn.Sequential(backbone, nn.Linear(backbone.out_features, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    images, labels = source.train.images, source.train.labels
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(labels), (data.batch_size,), generator=generator)
        loss = F.cross_entropy(model(backbone.preprocessing(images[index])), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.inference_mode():
        predictions = model(backbone.preprocessing(target.test.images)).argmax(1)
    with open(out, "a") as handle:
        handle.write(json.dumps({"seed": seed, "target_acc": (predictions == target.test.labels).float().mean().item()}) + "\n")


if __name__ == "__main__":
    main()

"""Build the offline model zoo of experiments/ranking/zoo.yaml in an MLflow store, skipping members that
are already there: one `tlbench` run per member, then its linear source head as a `head/head.pt` artifact.

    .venv/bin/python experiments/ranking/zoo.py [--uri sqlite:///mlflow.db] [--out .]

`tlbench rank` finds the members by their tag zoo_member=<name> in experiment `zoo` of the same store.
Run from any folder: a relative store path, checkpoints and outputs are the caller's (under --out), never
the repository's.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

SPEC = Path(__file__).with_name("zoo.yaml")


def member_overrides(spec: dict, name: str) -> list[str]:
    """The member's overrides with the spec's named override lists (e.g. `fashion`) expanded."""
    expanded = []
    for item in spec["members"][name]:
        expanded += spec[item] if item in spec and item != "members" else [item]
    return [*spec["common"], *expanded]


def build_command(spec: dict, name: str, uri: str, out: Path) -> list[str]:
    from tlbench.rank import ZOO_EXPERIMENT

    return [
        sys.executable,
        "-m",
        "tlbench",
        *member_overrides(spec, name),
        f"tracking.uri={uri}",
        f"tracking.experiment={ZOO_EXPERIMENT}",
        "tracking.skip_done=true",
        "tracking.log_model=true",
        f"+tracking.tags.zoo_member={name}",
        f"tracking.run_name=zoo {name}",
        f"checkpoint_dir={out / 'checkpoints' / 'zoo'}",
        f"hydra.run.dir={out / 'outputs' / 'zoo' / name}",
    ]


def export_head(uri: str, run_id: str) -> None:
    """Log the selected checkpoint's classifier as head/head.pt, unless the run has it already."""
    import torch

    import tlbench
    from tlbench.tracking import client_for

    client = client_for(uri)
    if any(f.path == "head/head.pt" for f in client.list_artifacts(run_id, "head")):
        return
    module = tlbench.load_run(run_id, uri)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "head.pt"
        torch.save({k: v.detach().cpu() for k, v in module.head.state_dict().items()}, path)
        client.log_artifact(run_id, str(path), "head")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--uri", default="sqlite:///mlflow.db", help="MLflow store (default: mlflow.db in the current folder)")
    parser.add_argument("--out", default=".", help="folder for the members' checkpoints/ and outputs/ (default: the current folder)")
    args = parser.parse_args(argv)
    spec = yaml.safe_load(SPEC.read_text())
    from tlbench.config import TrackingConfig
    from tlbench.errors import TlbenchError
    from tlbench.rank import zoo_run
    from tlbench.search.job import absolute_storage
    from tlbench.tracking import Store

    uri, out = absolute_storage(args.uri), Path(args.out).resolve()  # the same store and folders for every member
    for name in spec["members"]:
        command = build_command(spec, name, uri, out)
        print("$", " ".join(command[1:]), flush=True)
        if subprocess.run(command).returncode != 0:
            print(f"zoo: member {name} failed (its error is above); members built so far are kept in {uri}", file=sys.stderr)
            return 1
        try:
            export_head(uri, zoo_run(Store.of(TrackingConfig(uri=uri)), name))
        except TlbenchError as exc:
            print(f"zoo: member {name}: {exc}", file=sys.stderr)
            return 1
    print(f"zoo: {len(spec['members'])} members in {uri}, experiment zoo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

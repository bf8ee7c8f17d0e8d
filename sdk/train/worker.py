"""One rank of a launched training job: `python -m sdk.train.worker [--task heal] --iter-dir DIR`.

Reads iter_dir/train_recipe.yaml and iter_dir/train_request.json (written by sdk.train.launch), runs
the recipe's stages on iter_dir's data and writes the student and train_metrics.json (rank 0).
With --task heal it reads heal_request.json instead and heals a pruned student (sdk.train.heal).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdk.train.worker", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--task",
        choices=["train", "heal"],
        default="train",
        help="train: the recipe's training stages; heal: heal a pruned student (sdk.train.heal)",
    )
    parser.add_argument(
        "--iter-dir", required=True, type=Path, help="the job folder holding the recipe, the request and the data"
    )
    return parser


def select_rank_gpu() -> None:
    """Make this rank's GPU the current one before any model loads: the loaders' .to("cuda") means the
    current device, which is GPU 0 for every rank until something sets it (the teacher and the reward
    model are placed there and stay)."""
    import os

    import torch

    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def main(argv: list[str] | None = None) -> None:
    import yaml

    from sdk.config import validate_recipe
    from sdk.progress import quiet_libraries
    from sdk.train.common import TrainRequest, start_cpu_deepspeed
    from sdk.train.launch import RECIPE_FILE, REQUEST_FILE
    from sdk.train.runner import run_stages

    args = make_parser().parse_args(argv)
    iter_dir = args.iter_dir
    recipe = validate_recipe(yaml.safe_load((iter_dir / RECIPE_FILE).read_text()), str(iter_dir / RECIPE_FILE))
    quiet_libraries()
    select_rank_gpu()
    start_cpu_deepspeed(recipe.train)
    if args.task == "heal":
        from sdk.train.heal import run_heal_request

        return run_heal_request(iter_dir, recipe)
    request = json.loads((iter_dir / REQUEST_FILE).read_text())
    verifier = None
    if request.get("use_pack_verifiers") and recipe.domain:
        from sdk.packs import resolve_pack

        verifier = resolve_pack(recipe.domain, recipe.pack_paths).run_verifiers
    run_stages(TrainRequest.from_json(recipe, request), verifier)


if __name__ == "__main__":
    main()

"""Load the JSONL data of Distillery's local lm-eval tasks from the folder this file lives in.

lm-eval resolves a `data_files` path against the working directory, not the YAML, so the tasks name a
`custom_dataset` loader instead; it finds the data next to itself in a checkout and in an installed wheel.
"""

import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def read_jsonl(data_file: str) -> list[dict]:
    with open(HERE / data_file, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def load_jsonl(data_file: str, **_metadata) -> datasets.DatasetDict:
    """custom_dataset hook: lm-eval calls it with the task's metadata and dataset_kwargs."""
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(read_jsonl(data_file))})

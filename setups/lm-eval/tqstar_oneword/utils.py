"""The data of the tqstar_oneword lm-eval task: oneword.jsonl beside this file, read without any download."""

from pathlib import Path

import datasets


def load(**kwargs) -> datasets.DatasetDict:
    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(Path(__file__).with_name("oneword.jsonl")))})

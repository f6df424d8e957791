"""Valid records drawn deterministically from a model card's feature domains."""

from __future__ import annotations

import math
import random
from typing import Any


def make_records(card: dict, n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        record: dict[str, Any] = {}
        for f in card["features"]:
            if f["type"] == "categorical":
                record[f["name"]] = rng.choice(f["categories"])
            elif f["type"] == "boolean":
                record[f["name"]] = rng.random() < 0.5
            elif f["type"] == "integer":
                record[f["name"]] = rng.randint(math.ceil(f["minimum"]), math.floor(f["maximum"]))
            else:
                record[f["name"]] = round(rng.uniform(f["minimum"], f["maximum"]), 2)
        records.append(record)
    return records

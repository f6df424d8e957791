"""Rows for the interop tests (third-party OIP clients against ferry) and what the model says of them.

One seeded sample in the three forms the clients send: the numeric tensor of ``GET /v2/models/churn``
(card order, a categorical as its category's index, a boolean as 0/1), one column per card feature
(categoricals as their names, what MLServer's PandasCodec sends), and the expected answer computed
in-process with the estimator itself.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from support.server import REPO

TOOLS = REPO / ".tools"


@dataclass(frozen=True)
class Sample:
    matrix: np.ndarray  # [rows, features] float64, card order
    columns: dict[str, list[Any]]  # feature name -> values as a user holds them
    proba: np.ndarray  # the estimator's predict_proba, [rows, classes]
    labels: list[str]  # the estimator's predict

    def as_json(self) -> dict[str, Any]:
        """What a client script in another virtualenv reads on its stdin."""
        return {"matrix": self.matrix.tolist(), "columns": self.columns}


def sample(card: dict, model_path: Path, rows: int, seed: int) -> Sample:
    rng = np.random.default_rng(seed)
    features = card["features"]
    matrix = np.empty((rows, len(features)))
    for col, f in enumerate(features):
        if f["type"] == "categorical":
            matrix[:, col] = rng.integers(0, len(f["categories"]), rows)
        elif f["type"] == "boolean":
            matrix[:, col] = rng.integers(0, 2, rows)
        elif f["type"] == "integer":
            matrix[:, col] = rng.integers(f["minimum"], f["maximum"] + 1, rows)
        else:
            matrix[:, col] = np.round(rng.uniform(f["minimum"], f["maximum"] / 10, rows), 2)
    columns: dict[str, list[Any]] = {}
    objects = np.empty(matrix.shape, dtype=object)
    for col, f in enumerate(features):
        values = matrix[:, col]
        if f["type"] == "categorical":
            column: list[Any] = [f["categories"][int(v)] for v in values]
        elif f["type"] == "boolean":
            column = [bool(v) for v in values]
        elif f["type"] == "integer":
            column = [int(v) for v in values]
        else:
            column = [float(v) for v in values]
        columns[f["name"]] = column
        objects[:, col] = column
    estimator = joblib.load(model_path)
    return Sample(
        matrix=matrix,
        columns=columns,
        proba=np.asarray(estimator.predict_proba(objects), dtype=np.float64),
        labels=[str(label) for label in estimator.predict(objects)],
    )


def run_client(client: str, script: str, url: str, payload: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Run ``tests/support/clients/<script>`` with the Python of ``.tools/interop-<client>`` (built by
    ``make interop-clients``), ``payload`` as JSON on stdin; its stdout is one JSON document."""
    python = TOOLS / f"interop-{client}" / "bin" / "python"
    assert python.exists(), f"{python} is missing: run `make interop-clients` (the integration tier needs it)"
    # The venvs are installed without bytecode (uv's default, the fast install): let the first run
    # write it, so later runs skip recompiling kserve's and mlserver's imports (~6 s each here).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [str(python), str(REPO / "tests/support/clients" / script), url],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout)

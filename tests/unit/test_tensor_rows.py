"""OIP tensors against the card: the whole-tensor check accepts exactly what the per-column check
accepts, and a refusal names every bad value column by column."""

from __future__ import annotations

import numpy as np
import pytest

from ferry.card import Feature
from ferry.errors import InvalidInput
from ferry.features import FeatureSchema

FEATURES = [
    Feature(name="age", type="integer", minimum=0, maximum=120),
    Feature(name="charge", type="number", minimum=0.5),
    Feature(name="free", type="number"),
    Feature(name="phone", type="boolean"),
    Feature(name="plan", type="categorical", categories=["a", "b", "c"]),
]
GOOD = [30.0, 0.5, -1e9, 1.0, 2.0]


def test_a_valid_tensor_becomes_typed_rows() -> None:
    rows = FeatureSchema(FEATURES).rows_from_tensor(np.array([GOOD, [120.0, 9.5, 3.25, 0.0, 0.0]]), loc=["inputs", 0])
    assert rows.tolist() == [[30, 0.5, -1e9, True, "c"], [120, 9.5, 3.25, False, "a"]]


@pytest.mark.parametrize(
    ("col", "value"),
    [(0, 30.5), (0, -1.0), (0, 121.0), (1, 0.25), (3, 2.0), (3, 0.5), (4, 3.0), (4, -1.0), (4, 1.5)],
)
def test_each_kind_of_bad_value_is_refused_and_named(col: int, value: float) -> None:
    schema = FeatureSchema(FEATURES)
    matrix = np.array([GOOD, GOOD, GOOD])
    matrix[1, col] = value
    with pytest.raises(InvalidInput) as refused:
        schema.rows_from_tensor(matrix, loc=["inputs", 0])
    assert refused.value.details == [
        {
            "loc": ["inputs", 0, "data", 1, col],
            "msg": f"invalid value {np.float64(value)!r} for feature {FEATURES[col].name!r}",
            "type": "value_error",
        }
    ]


def test_the_whole_tensor_check_agrees_with_the_per_column_one() -> None:
    schema = FeatureSchema(FEATURES)
    rng = np.random.default_rng(7)
    outcomes = []
    for _ in range(1000):
        matrix = rng.choice([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, 120.0, 121.0], size=(1, len(FEATURES)))
        per_column = all(len(schema._bad_rows(f, matrix[:, i])) == 0 for i, f in enumerate(FEATURES))
        assert schema._all_valid(matrix) is per_column, matrix
        outcomes.append(per_column)
    assert sum(outcomes) > 20 and not all(outcomes)  # both answers were put to the test

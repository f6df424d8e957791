"""Feature schema: request types built from the model card, and conversion of inputs to model rows.

A card-described model gets a typed record (one field per feature, bounded, categories enumerated).
A model without a card gets the generic numeric schema: a record is a list of finite numbers whose
length must equal the model's ``n_features_in_``.

The Open Inference Protocol carries numeric tensors only, so there a categorical feature is sent as
the index of its category in the card (``contract_type`` 0 = ``month_to_month``, ...), and a boolean
as 0 or 1. ``GET /v2/models/{name}`` documents the encoding.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BeforeValidator, ConfigDict, Field, SkipValidation, TypeAdapter, ValidationError, create_model

from ferry.card import Feature
from ferry.errors import InvalidInput, from_validation

FiniteNumber = Annotated[float, Field(allow_inf_nan=False)]


def _numbers_only(value: Any) -> Any:
    # Records are strict (no "12" for 12, no true for 1), except that an integral float such as
    # 12.0 is an integer, as JSON Schema's "integer" says.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def json_integer(**constraints: Any) -> Any:
    """A strict integer of a request body, except that 12.0 is 12 (JSON Schema's "integer"). The
    constraints come before the validator: after it, they would not reach the JSON Schema."""
    return Annotated[int, Field(strict=True, **constraints), BeforeValidator(_numbers_only)]


MAX_REPORTED_PROBLEMS = 20
# Records validated between two yields to the event loop (a few ms of work): see validate_records.
VALIDATION_SLICE = 1_000


def _field(feature: Feature) -> tuple[Any, Any]:
    kwargs: dict[str, Any] = {"description": feature.description}
    if feature.type == "categorical":
        assert feature.categories is not None
        return Literal[tuple(feature.categories)], Field(..., **kwargs)
    if feature.type == "boolean":
        return bool, Field(..., **kwargs)
    if feature.minimum is not None:
        kwargs["ge"] = feature.minimum if feature.type == "number" else int(np.ceil(feature.minimum))
    if feature.maximum is not None:
        kwargs["le"] = feature.maximum if feature.type == "number" else int(np.floor(feature.maximum))
    if feature.type == "integer":
        return Annotated[int, BeforeValidator(_numbers_only)], Field(..., **kwargs)
    return float, Field(..., allow_inf_nan=False, **kwargs)


def _list_of(item: Any) -> Any:
    """``list[item]`` for a type built at run time: pydantic and FastAPI follow it, a type checker cannot."""
    return list[item]


def _unvalidated(item: Any) -> Any:
    """``SkipValidation[item]``, spelt as what it is at run time."""
    return Annotated[item, SkipValidation()]  # type: ignore[type-arg]  # generic only to type checkers


def _default_example(feature: Feature) -> Any:
    if feature.type == "categorical":
        return feature.categories[0]  # type: ignore[index]
    if feature.type == "boolean":
        return False
    low = feature.minimum if feature.minimum is not None else 0.0
    high = feature.maximum if feature.maximum is not None else max(low, 1.0)
    middle = (low + high) / 2
    return int(middle) if feature.type == "integer" else round(middle, 2)


class FeatureSchema:
    """Typed (from a card) or generic numeric record schema of one model."""

    def __init__(self, features: list[Feature] | None, example: dict[str, Any] | None = None) -> None:
        self.features = features
        self.names = [f.name for f in features] if features else []
        self.n_features: int | None = len(features) if features else None
        if features:
            fields = {f.name: _field(f) for f in features}
            self.example: Any = {f.name: _default_example(f) for f in features} | (example or {})
            self.record_type: Any = create_model(  # type: ignore[call-overload]  # fields built from the card
                "Record",
                __config__=ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [self.example]}),
                **fields,
            )
        else:
            self.example = [0.0]
            self.record_type = Annotated[list[FiniteNumber], Field(min_length=1, max_length=100_000)]
        self.list_type = _list_of(self.record_type)
        # Declared by bodies that validate their records in slices (see validate_records).
        self.unvalidated_list_type = _list_of(_unvalidated(self.record_type))
        self.records_adapter: TypeAdapter[list[Any]] = TypeAdapter(self.list_type)
        self._max_values: dict[tuple[int, int | None], int] = {}
        # Per column, for tensors (rows_from_tensor): lowest and highest valid value, whether it must be
        # integral, and a categorical column's codes -> category names.
        bounds: list[tuple[float, float, bool]] = []
        self._category_tables: dict[int, np.ndarray] = {}
        for col, feature in enumerate(features or []):
            if feature.type == "categorical":
                bounds.append((0.0, len(feature.categories or []) - 1.0, True))
                self._category_tables[col] = np.array(feature.categories, dtype=object)
            elif feature.type == "boolean":
                bounds.append((0.0, 1.0, True))
            else:
                bounds.append(
                    (
                        -np.inf if feature.minimum is None else feature.minimum,
                        np.inf if feature.maximum is None else feature.maximum,
                        feature.type == "integer",
                    )
                )
        self._tensor_bounds = (
            np.array([b[0] for b in bounds]),
            np.array([b[1] for b in bounds]),
            np.array([b[2] for b in bounds], dtype=bool),
        )

    async def validate_records(self, records: list[Any], loc: tuple[str, ...] = ("body", "records")) -> list[Any]:
        """Records validated against the record type, a slice at a time with a yield to the event loop
        between slices. Large bodies (a 100,000-record stream, a 10,000-record job) declare their
        records with ``SkipValidation`` and come here: validated in one go they would hold this worker's
        event loop, /livez and every other request included, for about half a second."""
        valid: list[Any] = []
        for start in range(0, len(records), VALIDATION_SLICE):
            try:
                valid.extend(self.records_adapter.validate_python(records[start : start + VALIDATION_SLICE]))
            except ValidationError as exc:
                errors: list[dict[str, Any]] = [
                    {**e, "loc": (*loc, start + int(e["loc"][0]), *e["loc"][1:])}
                    for e in exc.errors(include_input=False)
                ]
                raise from_validation(errors, len(records)) from None
            if start + VALIDATION_SLICE < len(records):
                await asyncio.sleep(0)  # let the loop serve others before the next slice
        return valid

    def max_values(self, records: int) -> int:
        """Most JSON values ``records`` records can take, as ``ferry.api.json_body`` counts them (commas,
        ``[`` and ``{``): each field and the record itself, plus the punctuation inside category names.
        Asked on every request: remembered per record count and width."""
        key = (records, self.n_features)
        if key not in self._max_values:
            self._max_values[key] = self._count_max_values(records)
        return self._max_values[key]

    def _count_max_values(self, records: int) -> int:
        if self.features:
            punctuation = sum(
                max((sum(c.count(p) for p in ",[{") for c in f.categories or [""]), default=0) for f in self.features
            )
            per_record = len(self.features) + 1 + punctuation
        else:
            per_record = (self.n_features or 100_000) + 1  # the generic record's own length limit until loaded
        return records * per_record

    @property
    def typed(self) -> bool:
        return self.features is not None

    def set_width(self, n_features: int | None) -> None:
        """For the generic schema: the width learnt from the loaded model."""
        if not self.typed and n_features:
            self.n_features = n_features
            self.example = [0.0] * n_features

    def rows_from_records(self, records: list[Any]) -> np.ndarray:
        """Validated records (typed models or number lists) -> a 2-D array in model column order."""
        if self.typed:
            names = self.names
            rows = np.empty((len(records), len(names)), dtype=object)
            for i, record in enumerate(records):
                rows[i] = [getattr(record, name) for name in names]
            return rows
        matrix = np.asarray(records, dtype=np.float64) if records else np.empty((0, 0))
        if matrix.ndim != 2:
            raise InvalidInput(
                "every record must have the same number of features",
                details=[{"loc": ["body"], "msg": "ragged records", "type": "ragged"}],
            )
        self._check_width(matrix.shape[1], loc=["body"])
        return matrix

    def _check_width(self, width: int, loc: list[Any]) -> None:
        if self.n_features is not None and width != self.n_features:
            raise InvalidInput(
                f"expected {self.n_features} features per record, got {width}",
                details=[{"loc": loc, "msg": f"expected {self.n_features} features", "type": "shape"}],
            )

    def rows_from_tensor(self, matrix: np.ndarray, loc: list[Any]) -> np.ndarray:
        """A numeric [N, n_features] tensor -> model rows, checking each column against the card."""
        self._check_width(matrix.shape[1], loc=[*loc, "shape"])
        if not np.isfinite(matrix).all():
            raise InvalidInput("tensor holds NaN or Infinity", details=[{"loc": loc, "type": "finite"}])
        if not self.typed:
            return matrix
        if not self._all_valid(matrix):
            self._refuse_tensor(matrix, loc)
        rows = np.empty(matrix.shape, dtype=object)
        for col, feature in enumerate(self.features or []):
            values = matrix[:, col]
            if feature.type == "categorical":
                codes = np.clip(values, 0, len(feature.categories or []) - 1).astype(int)
                rows[:, col] = self._category_tables[col][codes]
            elif feature.type == "boolean":
                rows[:, col] = values == 1.0
            elif feature.type == "integer":
                rows[:, col] = values.astype(np.int64)
            else:
                rows[:, col] = values
        return rows

    def _all_valid(self, matrix: np.ndarray) -> bool:
        """Every value inside its column's bounds, and integral where the column is: the checks of
        ``_bad_rows`` over the whole tensor at once (a handful of numpy calls, not a few per column)."""
        low, high, integral = self._tensor_bounds
        if not ((matrix >= low).all() and (matrix <= high).all()):
            return False
        whole = matrix[:, integral]
        return bool((whole == np.round(whole)).all())

    def _refuse_tensor(self, matrix: np.ndarray, loc: list[Any]) -> None:
        """422 naming the first values outside the card, column by column."""
        problems: list[dict[str, Any]] = []
        for col, feature in enumerate(self.features or []):
            values = matrix[:, col]
            bad = self._bad_rows(feature, values)
            for row in bad[:MAX_REPORTED_PROBLEMS]:
                problems.append(
                    {
                        "loc": [*loc, "data", int(row), col],
                        "msg": f"invalid value {values[row]!r} for feature {feature.name!r}",
                        "type": "value_error",
                    }
                )
        if problems:
            raise InvalidInput("tensor values outside the model's feature schema", details=problems[:50])

    @staticmethod
    def _bad_rows(feature: Feature, values: np.ndarray) -> np.ndarray:
        if feature.type == "categorical":
            ok = (values == np.round(values)) & (values >= 0) & (values < len(feature.categories or []))
        elif feature.type == "boolean":
            ok = (values == 0.0) | (values == 1.0)
        else:
            ok = np.ones(values.shape, dtype=bool)
            if feature.type == "integer":
                ok &= values == np.round(values)
            if feature.minimum is not None:
                ok &= values >= feature.minimum
            if feature.maximum is not None:
                ok &= values <= feature.maximum
        return np.flatnonzero(~ok)

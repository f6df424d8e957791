"""Reading records from CSV / JSON Lines and writing predictions, for the ``ferry`` command line.

CSV: the header names the features; each value is converted to the type the model card gives its
feature (integer, number, boolean; categorical values stay strings). JSON Lines: one record per line,
used as it is. Every record keeps the file line it starts on (1-based; a CSV's header is line 1), so
an error the server reports for a record can name that line (``ferry_client.lines``), and ``id
columns`` (``--id-column``) are carried from input to output instead of being sent.

Output rows, in input order: ``line``, the id columns, ``prediction``, then ``proba_<class>`` per class.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

Format = Literal["csv", "jsonl"]
FORMATS: dict[str, Format] = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
TRUE = frozenset({"true", "t", "yes", "y", "1"})
FALSE = frozenset({"false", "f", "no", "n", "0"})
GENERIC_CARD = "model served without a card"


class InputError(ValueError):
    """A file that cannot be turned into records (the message names the file, line and column)."""


@dataclass
class Input:
    """The records of a file, each with the line it starts on and the values of its id columns."""

    name: str
    records: list[Any] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    ids: list[dict[str, Any]] = field(default_factory=list)
    id_columns: Sequence[str] = ()

    def add(self, record: Any, line: int, ids: dict[str, Any]) -> None:
        self.records.append(record)
        self.lines.append(line)
        self.ids.append(ids)


def file_format(path: str, explicit: str | None = None) -> Format:
    if explicit:
        if explicit not in ("csv", "jsonl"):
            raise InputError(f"unknown format {explicit!r}: use csv or jsonl")
        return explicit  # type: ignore[return-value]
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: cannot tell the format from the extension; use .csv or .jsonl (or --format)")
    return FORMATS[suffix]


def features_of(card: dict[str, Any]) -> list[dict[str, Any]]:
    return list(card.get("features") or [])


def takes_lists(card: dict[str, Any]) -> bool:
    """A model served without a card takes records as lists of numbers in feature order."""
    return str(card.get("description", "")).startswith(GENERIC_CARD)


def convert(value: str, feature: dict[str, Any]) -> Any:
    """One CSV cell as the JSON value its feature takes; ValueError with a reason otherwise."""
    kind = feature.get("type", "number")
    if kind == "categorical":
        return value
    text = value.strip()
    if not text:
        raise ValueError("empty value")
    if kind == "boolean":
        lowered = text.lower()
        if lowered in TRUE:
            return True
        if lowered in FALSE:
            return False
        raise ValueError(f"{value!r} is not a boolean (true/false, 1/0, yes/no)")
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{value!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not a finite number")
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            if number.is_integer():
                return int(number)
            raise ValueError(f"{value!r} is not an integer") from None
    return number


def read_csv(stream: IO[str], card: dict[str, Any], name: str = "<csv>") -> list[Any]:
    return csv_input(stream, card, name).records


def csv_input(stream: IO[str], card: dict[str, Any], name: str = "<csv>", id_columns: Sequence[str] = ()) -> Input:
    features = features_of(card)
    by_name = {f["name"]: f for f in features}
    reader = csv.reader(stream)
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(f"{name}: empty file (a header naming the features is required)") from None
    header = [column.strip().removeprefix("\ufeff") for column in header]
    if not any(header):
        raise InputError(f"{name}: the first line must be a header naming the features")
    duplicates = sorted({c for c in header if header.count(c) > 1})
    missing = [f["name"] for f in features if f["name"] not in header]
    missing += [c for c in id_columns if c not in header]
    extra = [c for c in header if c not in by_name and c not in id_columns]
    if duplicates or missing or extra:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unknown column(s) {', '.join(extra)} (carry one to the output with --id-column)")
        if duplicates:
            problems.append(f"repeated column(s) {', '.join(duplicates)}")
        raise InputError(f"{name}: header: {'; '.join(problems)} (the model takes {', '.join(by_name)})")
    as_list = takes_lists(card)
    order = [f["name"] for f in features]
    found = Input(name, id_columns=tuple(id_columns))
    ended = reader.line_num  # the line the previous row ended on: a quoted value may span lines
    for row in reader:
        start, ended = ended + 1, reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(header):
            raise InputError(f"{name}: line {start}: {len(row)} values for {len(header)} columns")
        record: dict[str, Any] = {}
        ids: dict[str, Any] = {}
        for column, value in zip(header, row, strict=True):
            if column in by_name:
                try:
                    record[column] = convert(value, by_name[column])
                except ValueError as exc:
                    raise InputError(f"{name}: line {start}: {column}: {exc}") from None
            else:
                ids[column] = value
        found.add([record[n] for n in order] if as_list else record, start, ids)
    return found


def read_jsonl(stream: IO[str], name: str = "<jsonl>") -> list[Any]:
    return jsonl_input(stream, name).records


def jsonl_input(stream: IO[str], name: str = "<jsonl>", id_columns: Sequence[str] = ()) -> Input:
    found = Input(name, id_columns=tuple(id_columns))
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise InputError(f"{name}: line {number}: not JSON ({exc})") from None
        if not isinstance(record, dict | list):
            raise InputError(f"{name}: line {number}: a record is a JSON object (or a list of numbers)")
        ids: dict[str, Any] = {}
        if id_columns:
            if not isinstance(record, dict):
                raise InputError(f"{name}: line {number}: --id-column needs records that are JSON objects")
            ids = {column: record.pop(column, None) for column in id_columns}
        found.add(record, number, ids)
    return found


@contextlib.contextmanager
def _open(path: str, mode: str) -> Iterator[IO[str]]:
    if path == "-":
        yield sys.stdin if "r" in mode else sys.stdout
        return
    with open(path, mode, encoding="utf-8", newline="" if path.lower().endswith(".csv") else None) as f:
        yield f


def read_records(path: str, card: dict[str, Any], fmt: str | None = None) -> list[Any]:
    return read_input(path, card, fmt).records


def read_input(path: str, card: dict[str, Any], fmt: str | None = None, id_columns: Sequence[str] = ()) -> Input:
    """The records of ``path`` (``-``: standard input, JSON Lines unless ``fmt`` says csv) with their lines."""
    kind = file_format(path, fmt) if path != "-" or fmt else "jsonl"
    name = "<stdin>" if path == "-" else path
    try:
        with _open(path, "r") as stream:
            found = (
                csv_input(stream, card, name, id_columns) if kind == "csv" else jsonl_input(stream, name, id_columns)
            )
    except OSError as exc:
        raise InputError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text ({exc})") from None
    if not found.records:
        raise InputError(f"{name}: no records")
    return found


def output_columns(classes: Sequence[Any] | None, source: Input | None = None) -> list[str]:
    head = [] if source is None else ["line", *source.id_columns]
    return [*head, "prediction", *(f"proba_{c}" for c in classes or ())]


def output_rows(
    predictions: Sequence[dict[str, Any]], classes: Sequence[Any] | None, source: Input | None = None
) -> list[dict[str, Any]]:
    """Flat rows: with the ``source`` file, its ``line`` and id columns; then prediction and one
    ``proba_<class>`` per class (None when the model gives none)."""
    rows = []
    for index, result in enumerate(predictions):
        proba = result.get("probabilities") or {}
        row: dict[str, Any] = {} if source is None else {"line": source.lines[index], **source.ids[index]}
        row["prediction"] = result.get("prediction")
        for c in classes or ():
            row[f"proba_{c}"] = proba.get(str(c))
        rows.append(row)
    return rows


def classes_of(card: dict[str, Any], predictions: Sequence[dict[str, Any]]) -> list[str]:
    if card.get("classes"):
        return [str(c) for c in card["classes"]]
    for result in predictions:
        if result.get("probabilities"):
            return list(result["probabilities"])
    return []


def write_predictions(
    path: str,
    predictions: Sequence[dict[str, Any]],
    classes: Sequence[Any] | None,
    fmt: str | None = None,
    source: Input | None = None,
) -> None:
    """Write one row per prediction (``-``: standard output, JSON Lines unless ``fmt`` says csv)."""
    if source is not None and len(source.records) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions for {len(source.records)} records")
    kind = file_format(path, fmt) if path != "-" or fmt else "jsonl"
    columns = output_columns(classes, source)
    rows = output_rows(predictions, classes, source)
    buffer = io.StringIO(newline="") if kind == "csv" else io.StringIO()
    if kind == "csv":
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    else:
        for row in rows:
            buffer.write(json.dumps(row, separators=(",", ":")) + "\n")
    with _open(path, "w") as stream:
        stream.write(buffer.getvalue())


class Progress:
    """``\\r``-updated ``done/total rows (pct) rows/s`` line on stderr (or any text stream)."""

    def __init__(self, enabled: bool, stream: IO[str] | None = None, min_interval_s: float = 0.1) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval_s = min_interval_s
        self.started = time.monotonic()
        self._last = -math.inf
        self._shown = False
        self._state = (0, 0)

    def __call__(self, done: int, total: int) -> None:
        self._state = (done, total)
        now = time.monotonic()
        if self.enabled and (done >= total or now - self._last >= self.min_interval_s):
            self._last = now
            self._draw(done, total, now)

    def _draw(self, done: int, total: int, now: float) -> None:
        elapsed = max(now - self.started, 1e-9)
        percent = 100.0 * done / total if total else 100.0
        self.stream.write(f"\r{done:,}/{total:,} rows  {percent:5.1f}%  {done / elapsed:,.0f} rows/s ")
        self.stream.flush()
        self._shown = True

    def close(self) -> None:
        if self._shown:
            self._draw(*self._state, time.monotonic())
            self.stream.write("\n")
            self.stream.flush()

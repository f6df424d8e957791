"""The vector selectors of a PromQL expression, and whether they match a series' labels.

Enough of PromQL's lexical grammar to find every selector (``metric{matchers}``, ``metric``,
``{matchers}``) in the rules, dashboards and queries the chart renders: strings, label lists after
``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``, range and subquery brackets,
and function, aggregation and keyword names are told apart from metric names. An expression it
cannot tokenise raises ValueError rather than yielding fewer selectors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KEYWORDS = {
    # aggregations
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk",
    "quantile", "limitk", "limit_ratio",
    # binary operators, modifiers
    "and", "or", "unless", "atan2", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
    "offset", "start", "end",
    # literals
    "inf", "nan",
}  # fmt: skip
LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}

TOKEN = re.compile(
    r"""
    (?P<space>\s+|\#[^\n]*)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<duration>[0-9]+(?:ms|[smhdwy])(?:[0-9]+(?:ms|[smhdwy]))*(?![a-zA-Z0-9_:]))
  | (?P<number>0x[0-9a-fA-F]+|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?)
  | (?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>=~|!~|!=|==|<=|>=|[-+*/%^<>=,(){}\[\]@])
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class Matcher:
    label: str
    op: str
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.label, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = re.fullmatch(self.value, actual) is not None  # PromQL regexes are anchored
        return found if self.op == "=~" else not found


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[Matcher, ...]

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a series with these labels (and any metric name, any other label) is selected:
        matchers on labels absent from ``labels`` are taken as matching (the worst case)."""
        return all(m.matches(labels) for m in self.matchers if m.label in labels)

    def on(self, label: str) -> list[Matcher]:
        return [m for m in self.matchers if m.label == label]


def _tokens(expr: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(expr):
        match = TOKEN.match(expr, pos)
        if match is None:
            raise ValueError(f"cannot tokenise PromQL at {pos}: {expr[pos : pos + 40]!r}")
        pos = match.end()
        if match.lastgroup != "space":
            out.append((match.lastgroup or "", match.group()))
    return out


def _unquote(token: str) -> str:
    if token.startswith("`"):
        return token[1:-1]
    return re.sub(r"\\(.)", r"\1", token[1:-1])


def selectors(expr: str) -> list[Selector]:
    tokens = _tokens(expr)
    found: list[Selector] = []
    i = 0

    def matchers_at(start: int) -> tuple[tuple[Matcher, ...], int]:
        """The matchers of the `{...}` opening at ``start``; the index after its `}`."""
        result, j = [], start + 1
        while tokens[j][1] != "}":
            if tokens[j][1] == ",":
                j += 1
                continue
            (kind, label), (_, op), (vkind, value) = tokens[j : j + 3]
            if kind not in ("name", "string") or op not in ("=", "!=", "=~", "!~") or vkind != "string":
                raise ValueError(f"bad matcher in {expr!r}: {label} {op} {value}")
            result.append(Matcher(label, op, _unquote(value)))
            j += 3
        return tuple(result), j + 1

    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if text == "[":  # range or subquery: durations, no selectors
            i = next(j for j in range(i, len(tokens)) if tokens[j][1] == "]") + 1
        elif kind == "name" and text.lower() in LABEL_LISTS and nxt == "(":
            i = next(j for j in range(i, len(tokens)) if tokens[j][1] == ")") + 1
        elif kind == "name" and (text.lower() in KEYWORDS or nxt == "("):
            i += 1  # a keyword, aggregation or function name
        elif kind == "name":
            if nxt == "{":
                matchers, i = matchers_at(i + 1)
            else:
                matchers, i = (), i + 1
            found.append(Selector(text, matchers))
        elif text == "{":
            matchers, i = matchers_at(i)
            found.append(Selector("", matchers))
        else:
            i += 1
    return found

"""Small typed builders for Grafana dashboards (schema version 39), with deterministic JSON.

Every panel must carry a description and a unit; every query runs against the `$datasource`
variable and is filtered by the `$namespace` and `$job` variables, and, where its series are a
pod's, by the `$pod` and `$track` variables (both multi-valued, "All" matching every value).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    fmt: str = "time_series"  # or "heatmap", "table"
    instant: bool = False


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat | heatmap | table
    width: int = 12
    height: int = 8
    # (value, color) steps above the base color; on time series they are drawn as lines.
    thresholds: tuple[tuple[float, str], ...] = ()
    base: str = "green"
    # (value, text, color): what a numeric state shows as (e.g. 2 -> "open", red).
    mappings: tuple[tuple[int, str, str], ...] = ()
    # Alert names whose runbooks this panel serves: linked from the panel, named in its description.
    runbooks: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.description or not self.unit:
            raise ValueError(f"panel {self.title!r} needs a description and a unit")


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[Panel, ...]


@dataclass(frozen=True)
class Annotation:
    """A Prometheus annotation: an event wherever ``expr`` has a sample."""

    name: str
    expr: str
    color: str
    title: str
    text: str = ""
    tags: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    rows: tuple[Row, ...]
    tags: tuple[str, ...] = ("ferry",)
    annotations: tuple[Annotation, ...] = ()
    # Where the runbooks are (<base>/<AlertName>.md): the dashboard links there, panels to their alerts'.
    runbook_base_url: str = ""

    def panels(self) -> list[Panel]:
        return [panel for row in self.rows for panel in row.panels]

    def to_json(self) -> dict[str, Any]:
        panels: list[dict[str, Any]] = []
        y = 0
        next_id = 1
        for row in self.rows:
            panels.append(
                {
                    "type": "row",
                    "title": row.title,
                    "id": next_id,
                    "collapsed": False,
                    "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
                    "panels": [],
                }
            )
            next_id += 1
            y += 1
            x = 0
            row_height = 0
            for panel in row.panels:
                if x + panel.width > 24:
                    x, y = 0, y + row_height
                    row_height = 0
                panels.append(_panel_json(panel, next_id, x, y, self.runbook_base_url))
                next_id += 1
                x += panel.width
                row_height = max(row_height, panel.height)
            y += row_height
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": list(self.tags),
            "timezone": "utc",
            "editable": True,
            "graphTooltip": 1,
            "schemaVersion": 39,
            "version": 1,
            "refresh": "30s",
            "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": _variables()},
            "annotations": {"list": [BUILT_IN_ANNOTATIONS] + [_annotation_json(a) for a in self.annotations]},
            "links": _links(self.runbook_base_url),
            "panels": panels,
        }


# Grafana's own annotations (manual ones, and its alerting's), as every new dashboard has them.
BUILT_IN_ANNOTATIONS = {
    "builtIn": 1,
    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
    "enable": True,
    "hide": True,
    "iconColor": "rgba(0, 211, 255, 1)",
    "name": "Annotations & Alerts",
    "type": "dashboard",
}


def _annotation_json(annotation: Annotation) -> dict[str, Any]:
    return {
        "name": annotation.name,
        "datasource": DATASOURCE,
        "enable": True,
        "hide": False,
        "iconColor": annotation.color,
        "expr": annotation.expr,
        "step": "60s",
        "titleFormat": annotation.title,
        "textFormat": annotation.text,
        "tagKeys": annotation.tags,
        "useValueForTime": False,
    }


def _links(runbook_base_url: str) -> list[dict[str, Any]]:
    links: list[dict[str, Any]] = [
        {
            "title": "ferry dashboards",
            "type": "dashboards",
            "tags": ["ferry"],
            "asDropdown": True,
            "includeVars": True,
            "keepTime": True,
            "icon": "external link",
            "targetBlank": False,
            "tooltip": "",
            "url": "",
        }
    ]
    if runbook_base_url:
        links.append(
            {
                "title": "Runbooks",
                "type": "link",
                "url": runbook_base_url,
                "icon": "doc",
                "tooltip": "One runbook per alert: <AlertName>.md",
                "targetBlank": True,
                "asDropdown": False,
                "includeVars": False,
                "keepTime": False,
                "tags": [],
            }
        )
    return links


# The value of a multi-valued variable's "All": every value, and series without the label too (a
# deployment without track labels still shows up).
ALL = ".*"


def _variables() -> list[dict[str, Any]]:
    def query_variable(name: str, label: str, query: str, multi: bool = False) -> dict[str, Any]:
        variable = {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DATASOURCE,
            "refresh": 2,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "sort": 1,
            "includeAll": multi,
            "multi": multi,
            "current": {},
            "options": [],
            "hide": 0,
        }
        if multi:
            variable["allValue"] = ALL
            variable["current"] = {"selected": True, "text": ["All"], "value": ["$__all"]}
        return variable

    scope = 'namespace="$namespace",job="$job"'

    return [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {},
            "options": [],
            "hide": 0,
            "refresh": 1,
        },
        query_variable("namespace", "Namespace", "label_values(ferry_workers, namespace)"),
        query_variable("job", "Job", 'label_values(ferry_workers{namespace="$namespace"}, job)'),
        # The pods' `track` label (stable, canary) is copied onto their series by the ServiceMonitor.
        query_variable("track", "Track", f"label_values(ferry_workers{{{scope}}}, track)", multi=True),
        query_variable("pod", "Pod", f'label_values(ferry_workers{{{scope},track=~"$track"}}, pod)', multi=True),
    ]


def _panel_json(panel: Panel, panel_id: int, x: int, y: int, runbook_base_url: str) -> dict[str, Any]:
    targets = []
    for i, query in enumerate(panel.queries):
        target = {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "refId": chr(ord("A") + i),
            "format": query.fmt,
        }
        if query.instant:
            target["instant"] = True
            target["range"] = False
        targets.append(target)
    steps = [{"color": panel.base, "value": None}] + [{"color": c, "value": v} for v, c in panel.thresholds]
    defaults: dict[str, Any] = {"unit": panel.unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if panel.kind == "timeseries" and panel.thresholds:
        # Threshold lines drawn on the graph: an objective is visible where the curve crosses it.
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if panel.mappings:
        defaults["mappings"] = [
            {
                "type": "value",
                "options": {
                    str(value): {"text": text, "color": color, "index": i}
                    for i, (value, text, color) in enumerate(panel.mappings)
                },
            }
        ]
        defaults["color"] = {"mode": "thresholds"}
    description = panel.description
    links = []
    if panel.runbooks:
        description += f" Runbook{'s' if len(panel.runbooks) > 1 else ''}: {', '.join(panel.runbooks)}."
        links = [
            {"title": f"Runbook: {name}", "url": f"{runbook_base_url}/{name}.md", "targetBlank": True}
            for name in panel.runbooks
            if runbook_base_url
        ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"h": panel.height, "w": panel.width, "x": x, "y": y},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "links": links,
        "options": panel.options,
        "targets": targets,
    }

"""Metric and label names a PromQL expression (as Grafana stores it) refers to.

Not a parser: enough of the grammar to find the names (strings, label matchers, range and
subquery brackets, ``by``/``without``/``on``/``ignoring`` clauses, functions, keywords, numbers
and Grafana's ``$variables`` are told apart). tests/deploy/test_dashboard.py checks it on the
shapes the dashboard uses.
"""

from __future__ import annotations

import re

KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or"}
    | {"unless", "offset", "atan2", "inf", "nan", "start", "end"}
)
_STRING = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{([^}]*)\}")
_BRACKETS = re.compile(r"\[[^\]]*\]")
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_VARIABLE = re.compile(r"\$\{?\w+(?::\w+)?\}?")
_NAME = re.compile(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_LABEL_VALUES = re.compile(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,")


def _without_strings(expr: str) -> str:
    return _STRING.sub('""', _VARIABLE.sub("1", expr))


def metric_names(expr: str) -> set[str]:
    """The metrics ``expr`` selects."""
    text = _without_strings(expr)
    text = _MATCHERS.sub(" ", text)
    text = _BRACKETS.sub(" ", text)
    text = _CLAUSE.sub(" ", text)
    names = set()
    for match in _NAME.finditer(text):
        name = match.group()
        if name.lower() in KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue  # a keyword, a function or an aggregation
        names.add(name)
    return names


def label_names(expr: str) -> set[str]:
    """The labels ``expr`` matches on or groups by."""
    text = _without_strings(expr)
    labels = {m for inner in _MATCHERS.findall(text) for m in _LABEL.findall(inner)}
    for inner in _CLAUSE.findall(text):
        labels |= {part.strip() for part in inner.split(",") if part.strip()}
    return labels


def variable_query_metrics(query: str) -> set[str]:
    """The metrics a Grafana variable query reads: ``label_values(metric, label)``, or an
    expression in ``query_result(...)``."""
    if query.startswith("query_result("):
        return metric_names(query[len("query_result(") : -1])
    return set(_LABEL_VALUES.findall(query))

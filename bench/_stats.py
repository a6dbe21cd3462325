"""Small summaries of repeated measurements."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TypedDict


class Summary(TypedDict):
    median: float
    min: float
    max: float
    runs: list[float]


def summarize(runs: Sequence[float]) -> Summary:
    """Median, min and max of `runs` (which must not be empty), rounded for reporting."""
    if not runs:
        raise ValueError("no runs to summarize")
    return Summary(
        median=round(statistics.median(runs), 1),
        min=round(min(runs), 1),
        max=round(max(runs), 1),
        runs=[round(r, 1) for r in runs],
    )


def ratio(numerator: float, denominator: float) -> float:
    return round(numerator / denominator, 3) if denominator else 0.0


def meets(value: float, target: str) -> bool:
    """Whether `value` meets a target written as ">= 0.8" or "<= 2.5"."""
    op, _, bound = target.partition(" ")
    if op == ">=":
        return value >= float(bound)
    if op == "<=":
        return value <= float(bound)
    raise ValueError(f"unsupported target {target!r}")

"""Geometry of the evaluation pages' charts: horizontal bars with an interval drawn as an error bar
(a Wilson or t interval, or a p25-p75 spread), computed here and drawn as inline SVG by
templates/evaluation/_bars.html, so a chart needs no script and nothing from the network.

Also the pages' readings of the summaries the selectors return (preference, criteria, speed)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from evaluation_app.engine.judge import CRITERIA_DESCRIPTIONS

ROLE_LABELS = {"base": "Base", "finetuned": "Fine-tuned", "tie": "Tie"}
LABEL_W, PLOT_W, VALUE_W = 150, 330, 190
ROW_H, BAR_H, HEAD_H, AXIS_H = 24, 14, 22, 22


@dataclass
class Bar:
    label: str
    value: float | None
    low: float | None = None
    high: float | None = None
    text: str = ""
    key: str = ""  # data-key: base | finetuned | tie, a criterion's role ...
    count: int | None = None  # data-count
    group: str = ""  # bars of one group share a heading


def nice_ceiling(value: float) -> float:
    """1, 2, 2.5 or 5 times a power of ten, at least `value`."""
    if value <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * power:
            return step * power
    return 10 * power


def _fmt(value: float) -> str:
    return f"{value:g}" if value >= 1 or value == 0 else f"{value:.2g}"


def hbars(bars: list[Bar], *, chart_id: str, title: str, top: float | None = None, percent: bool = False,
          ticks: int = 4, value_width: int = VALUE_W) -> dict[str, Any]:
    """Rows with their rectangles, whiskers and texts, plus axis ticks, scaled 0..top (default: the
    largest value or interval end, rounded up)."""
    ends = [v for b in bars for v in (b.value, b.high) if v is not None]
    top = top if top is not None else nice_ceiling(max(ends, default=1.0))
    scale = PLOT_W / top if top else 0.0
    rows, y, group = [], 0, None
    for bar in bars:
        head = None
        if bar.group and bar.group != group:
            group = bar.group
            head = {"text": bar.group, "y": y + HEAD_H - 6}
            y += HEAD_H
        row: dict[str, Any] = {"bar": bar, "head": head, "label_y": y + ROW_H / 2 + 4, "bar_y": y + (ROW_H - BAR_H) / 2,
                               "has_value": bar.value is not None, "text_x": LABEL_W + PLOT_W + 8}
        if bar.value is not None:
            row["width"] = round(max(0.0, min(bar.value, top)) * scale, 2)
        if bar.low is not None and bar.high is not None:
            mid = y + ROW_H / 2
            row["whisker"] = {"x1": round(LABEL_W + max(0.0, bar.low) * scale, 2),
                              "x2": round(LABEL_W + min(bar.high, top) * scale, 2), "y": mid, "y1": mid - 6, "y2": mid + 6}
        rows.append(row)
        y += ROW_H
    step = top / ticks
    axis = [{"x": round(LABEL_W + i * step * scale, 2),
             "label": f"{round(100 * i * step)}%" if percent else _fmt(round(i * step, 6))} for i in range(ticks + 1)]
    return {"id": chart_id, "title": title, "rows": rows, "axis": axis, "axis_y": y + 14, "plot_x": LABEL_W,
            "plot_end": LABEL_W + PLOT_W, "plot_h": y, "width": LABEL_W + PLOT_W + value_width, "height": y + AXIS_H}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.0f}%"


def preference_chart(summary: dict, *, chart_id: str, title: str, labels: dict[str, str] | None = None) -> dict:
    """Base / tie / fine-tuned shares with their Wilson 95% intervals (preference_summary's shape)."""
    labels = labels or ROLE_LABELS
    bars = []
    for key in ("base", "tie", "finetuned"):
        share = summary["shares"][key]
        count = summary["counts"][key]
        bars.append(Bar(labels[key], share["share"], share["low"], share["high"], key=key, count=count,
                        text=f"{_pct(share['share'])} ({count}) [{_pct(share['low'])}–{_pct(share['high'])}]"))
    return hbars(bars, chart_id=chart_id, title=title, top=1.0, percent=True)


def winner_sentence(summary: dict, *, what: str = "ratings") -> str:
    p = summary.get("p_value")
    if p is None:
        return f"No decisive {what} yet: every one is a tie." if summary.get("n") else f"No {what} yet."
    tail = f"(p = {p:.3g}, two-sided sign test over {summary['decisive']} decisive {what}, ties left out)"
    if summary["winner"] == "finetuned":
        return f"The fine-tuned model is preferred {tail}."
    if summary["winner"] == "base":
        return f"The base model is preferred {tail}."
    return f"No significant difference between the two models {tail}."


def measure(value: float) -> str:
    """A measurement in as many digits as it deserves: 1,234 ms, 55.2 tok/s, 0.42."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}" if abs(value) >= 1 else f"{value:.2g}"


def role_bars(stats: dict[str, dict | None], *, center: str, low: str, high: str, fmt: Callable[[float], str],
              suffix: str = "", group: str = "") -> list[Bar]:
    """One bar per model: its stat's `center` with the `low`-`high` interval (a mean_ci or a spread)."""
    bars = []
    for role in ("base", "finetuned"):
        stat = stats.get(role) or {}
        value = stat.get(center)
        text = "–" if value is None else f"{fmt(value)}{suffix}"
        if stat.get(low) is not None and stat.get(high) is not None:
            text += f" [{fmt(stat[low])}–{fmt(stat[high])}]"
        bars.append(Bar(ROLE_LABELS[role], value, stat.get(low), stat.get(high), text=text, key=role,
                        count=stat.get("n"), group=group))
    return bars


def criteria_chart(criteria: dict[str, dict[str, dict]], *, chart_id: str, title: str) -> dict | None:
    """Each criterion's mean score (1-5) per model with its t 95% interval."""
    bars = [bar for criterion, roles in criteria.items()
            for bar in role_bars(roles, center="mean", low="low", high="high", fmt="{:.2f}".format,
                                 group=criterion.capitalize())]
    return hbars(bars, chart_id=chart_id, title=title, top=5.0, ticks=5) if bars else None


def spread_bars(spreads: dict[str, dict | None], *, unit: str = "", group: str = "") -> list[Bar]:
    """Medians with their p25-p75 spread, one bar per model (a speed test's or a session's)."""
    return role_bars(spreads, center="median", low="p25", high="p75", fmt=measure, suffix=unit, group=group)


def criterion_help(criterion: str) -> str:
    return CRITERIA_DESCRIPTIONS.get(criterion, "")


def benchmark_chart(results: list[dict], *, chart_id: str, title: str) -> dict | None:
    """Base and fine-tuned scores per benchmark (result_view's shape), 0-100%; the fine-tuned bar's
    text carries the change with its paired 95% interval (the interval is of the difference, so it
    is written out rather than drawn around either score)."""
    bars = []
    for r in results:
        bars.append(Bar(ROLE_LABELS["base"], r["base_model_score"] / 100, key="base", count=r["num_samples"],
                        group=r["label"], text=f"{r['base_model_score']:.1f}%"))
        if r["finetuned_score"] is None:
            continue
        interval = r.get("interval") or {}
        text = f"{r['finetuned_score']:.1f}%"
        if interval:
            verdict = "no change" if r["change"] == "no_change" else f"{r['improvement']:+.1f}"
            text += f" ({verdict}, 95% CI {interval['low']:+.1f} to {interval['high']:+.1f})"
        bars.append(Bar(ROLE_LABELS["finetuned"], r["finetuned_score"] / 100, key="finetuned",
                        count=r["num_samples"], group=r["label"], text=text))
    return hbars(bars, chart_id=chart_id, title=title, top=1.0, percent=True, value_width=300) if bars else None

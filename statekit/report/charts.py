"""The HTML page's charts: inline SVG (stage funnel, cost by stage,
throughput per day), each with a title, a description and tooltips."""

from __future__ import annotations

import math

from .display import amount, escape
from .model import PipelineInfo, Report, pct

_PALETTE = ("#1a7f37", "#8c959f", "#8250df", "#bf3989", "#0550ae", "#953800")


def _num(value: float) -> str:
    """Coordinates: short, and never in exponent form."""
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _ticks(top: float, count: int = 5, whole: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0:
        return [0, 1]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if whole:
        step = max(1, math.ceil(step))
    n = math.ceil(top / step - 1e-9)
    return [round(i * step, 10) for i in range(n + 1)]


def _tick_label(value: float) -> str:
    return f"{value:,.0f}" if value == int(value) else f"{value:,.10f}".rstrip("0").rstrip(".")


def stage_colour(p: PipelineInfo, stage: str) -> str:
    """A stage's colour: failure red, give-up grey, other terminal stages green, the rest blue."""
    if stage == p.failure_stage:
        return "#cf222e"
    if stage == p.give_up_stage:
        return "#8c959f"
    if stage in p.terminal:
        return "#1a7f37"
    return "#0969da"


def terminal_colours(p: PipelineInfo) -> dict[str, str]:
    """Throughput bars: the first success stage green, the give-up stage grey, others from a palette."""
    colours: dict[str, str] = {}
    others = iter(_PALETTE[2:])
    for stage in p.terminal:
        if stage == p.give_up_stage:
            colours[stage] = "#8c959f"
        elif "#1a7f37" not in colours.values():
            colours[stage] = "#1a7f37"
        else:
            colours[stage] = next(others, "#57606a")
    return colours


def _svg_open(chart_id: str, width: int, height: int, title: str, desc: str) -> str:
    return (f'<svg id="{chart_id}" viewBox="0 0 {width} {height}" role="img" '
            f'aria-labelledby="{chart_id}-title {chart_id}-desc" xmlns="http://www.w3.org/2000/svg">'
            f'<title id="{chart_id}-title">{escape(title)}</title><desc id="{chart_id}-desc">{escape(desc)}</desc>')


def _hbar_chart(chart_id: str, title: str, desc: str, rows: list[tuple[str, float, str, str]], axis_title: str,
                whole: bool) -> str:
    """Horizontal bars: (label, value, colour, tooltip) per row, an x axis with ticks."""
    width, left, right, top, row_h = 560, 120, 56, 10, 30
    plot_w = width - left - right
    height = top + row_h * max(len(rows), 1) + 48
    ticks = _ticks(max((v for _, v, _, _ in rows), default=0), 5, whole)
    scale = plot_w / ticks[-1]
    axis_y = top + row_h * max(len(rows), 1)
    parts = [_svg_open(chart_id, width, height, title, desc), '<g class="grid">']
    parts += [f'<line x1="{_num(left + t * scale)}" y1="{top}" x2="{_num(left + t * scale)}" y2="{axis_y}"/>'
              for t in ticks[1:]]
    parts.append("</g><g>")
    for i, (label, value, colour, tip) in enumerate(rows):
        y = top + i * row_h
        w = value * scale
        parts.append(f'<text x="{left - 8}" y="{_num(y + row_h / 2 + 4)}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect class="bar" x="{left}" y="{y + 5}" width="{_num(max(w, 0.0))}" height="{row_h - 10}" '
                     f'rx="3" fill="{colour}"><title>{escape(tip)}</title></rect>')
        parts.append(f'<text x="{_num(left + w + 6)}" y="{_num(y + row_h / 2 + 4)}">'
                     f'{escape(_tick_label(value) if whole else amount(value))}</text>')
    parts.append(f'</g><g class="axis"><line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{axis_y}"/></g><g class="tick">')
    for t in ticks:
        x = _num(left + t * scale)
        parts.append(f'<line x1="{x}" y1="{axis_y}" x2="{x}" y2="{axis_y + 5}" stroke="#59636e"/>'
                     f'<text x="{x}" y="{axis_y + 18}" text-anchor="middle">{escape(_tick_label(t))}</text>')
    parts.append(f'</g><text class="axis-title" x="{left + plot_w / 2:.0f}" y="{height - 6}" '
                 f'text-anchor="middle">{escape(axis_title)}</text></svg>')
    return "".join(parts)


def funnel_svg(report: Report) -> str:
    """Episodes per stage now, as horizontal bars in pipeline order."""
    s, p = report.totals, report.pipeline
    rows = [(stage, float(n), stage_colour(p, stage),
             f"{stage}: {n} episode(s), {pct(n, s.episodes)}% of {s.episodes}") for stage, n in s.stages.items()]
    desc = "Episodes per stage now, in pipeline order: " + "; ".join(f"{st} {n}" for st, n in s.stages.items())
    return _hbar_chart("funnel", "Episodes per stage", desc, rows, "episodes", whole=True)


def cost_svg(report: Report) -> str:
    """Cost per stage so far, as horizontal bars."""
    s = report.totals
    rows = [(stage, c, "#8250df", f"{stage}: cost {amount(c)} ({pct(c, s.cost_total)}% of {amount(s.cost_total)})")
            for stage, c in s.cost_by_stage.items()]
    desc = "Cost per stage so far: " + ("; ".join(f"{st} {amount(c)}" for st, c in s.cost_by_stage.items())
                                         or "nothing spent yet")
    return _hbar_chart("costs", "Cost by stage", desc, rows, "cost", whole=False)


def throughput_svg(report: Report, legend: bool = True) -> str:
    """Finished episodes per day, stacked by terminal stage, with the recent rate and
    (``legend``) an HTML legend with inline styles (the dashboard draws its own: its CSP forbids them)."""
    s, p = report.totals, report.pipeline
    colours = terminal_colours(p)
    days = s.throughput
    width, left, right, top, bottom = 1080, 52, 16, 14, 58
    plot_w, plot_h = width - left - right, 220
    height = top + plot_h + bottom
    ticks = _ticks(max((d.completed for d in days), default=0), 4, whole=True)
    y_scale = plot_h / ticks[-1]
    slot = plot_w / max(len(days), 1)
    bar_w = max(min(slot * 0.7, 36.0), 1.0)
    base = top + plot_h
    total = sum(d.completed for d in days)
    desc = (f"Episodes that reached a terminal stage per day, {report.scope.start} to {report.scope.end}: "
            f"{total} in all. " + "; ".join(f"{d.date} {d.completed}" for d in days if d.completed))
    parts = [_svg_open("throughput", width, height, "Finished episodes per day", desc), '<g class="grid">']
    parts += [f'<line x1="{left}" y1="{_num(base - t * y_scale)}" x2="{left + plot_w}" y2="{_num(base - t * y_scale)}"/>'
              for t in ticks[1:]]
    parts.append("</g><g>")
    for i, d in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y = float(base)
        tip = f"{d.date.isoformat()}: {d.completed} finished" + (
            " (" + ", ".join(f"{n} {st}" for st, n in d.by_stage.items() if n) + ")" if d.completed else "")
        parts.append(f'<g class="day"><title>{escape(tip)}</title>')
        if not d.completed:  # an empty day still has a target for its tooltip
            parts.append(f'<rect x="{_num(x)}" y="{base - 2}" width="{_num(bar_w)}" height="2" fill="#eaeef2"/>')
        for stage, n in d.by_stage.items():
            if n:
                h = n * y_scale
                y -= h
                parts.append(f'<rect class="bar" x="{_num(x)}" y="{_num(y)}" width="{_num(bar_w)}" '
                             f'height="{_num(h)}" fill="{colours.get(stage, "#57606a")}"/>')
        parts.append("</g>")
    rate = s.estimate.rate_per_day
    if rate:
        y = base - rate * y_scale
        parts.append(f'<line x1="{left}" y1="{_num(y)}" x2="{left + plot_w}" y2="{_num(y)}" stroke="#bf8700" '
                     f'stroke-width="1.5" stroke-dasharray="6 4"><title>recent rate: {rate:g} per day'
                     f'</title></line>')
    parts.append(f'</g><g class="axis"><line x1="{left}" y1="{base}" x2="{left + plot_w}" y2="{base}"/>'
                 f'<line x1="{left}" y1="{top}" x2="{left}" y2="{base}"/></g><g class="tick">')
    for t in ticks:
        ty = _num(base - t * y_scale)
        parts.append(f'<line x1="{left - 5}" y1="{ty}" x2="{left}" y2="{ty}" stroke="#59636e"/>'
                     f'<text x="{left - 8}" y="{ty}" dy="4" text-anchor="end">{escape(_tick_label(t))}</text>')
    every = max(1, math.ceil(len(days) / 12))
    for i, d in enumerate(days):
        if (len(days) - 1 - i) % every == 0:  # always label today, the right-most day
            tx = _num(left + i * slot + slot / 2)
            parts.append(f'<line x1="{tx}" y1="{base}" x2="{tx}" y2="{base + 5}" stroke="#59636e"/>'
                         f'<text x="{tx}" y="{base + 18}" text-anchor="middle">{d.date.strftime("%b %d")}</text>')
    parts.append(f'</g><text class="axis-title" x="{left + plot_w / 2:.0f}" y="{height - 8}" text-anchor="middle">'
                 f'day (UTC)</text><text class="axis-title" transform="translate(14 {top + plot_h / 2:.0f}) '
                 f'rotate(-90)" text-anchor="middle">episodes finished</text></svg>')
    if not legend:
        return "".join(parts)
    keys = "".join(f'<span><i style="background:{c}"></i>{escape(st)}</span>' for st, c in colours.items())
    if rate:
        keys += f'<span><i style="background:#bf8700"></i>recent rate, {rate:g} a day (basis of the estimate)</span>'
    return "".join(parts) + f'<div class="legend">{keys}</div>'

"""The HTML format: one self-contained page (styles inline, charts as inline
SVG, no scripts, nothing fetched)."""

from __future__ import annotations

from .charts import cost_svg, funnel_svg, stage_colour, throughput_svg
from .display import age, amount, escape, kinds_text, when
from .model import REASON_TEXT, Estimate, PipelineInfo, Report, Summary, pct

# One file, nothing fetched: the policy makes the browser refuse any network or script load.
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

_CSS = """
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --card: #fff;
  --blue: #0969da; --green: #1a7f37; --red: #cf222e; --grey: #8c959f; --amber: #bf8700; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 28px 48px; }
header h1 { font-size: 26px; margin: 0 0 4px; }
header p { margin: 0; color: var(--muted); }
h2 { font-size: 18px; margin: 32px 0 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(165px, 1fr)); gap: 12px; margin-top: 20px; }
.card, figure, .panel { background: var(--card); border: 1px solid var(--line); border-radius: 10px; }
.card { padding: 14px 16px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 650; margin-top: 2px; font-variant-numeric: tabular-nums;
  white-space: nowrap; }
.note { color: var(--muted); font-size: 13px; font-weight: 400; }
.charts { display: grid; grid-template-columns: repeat(auto-fit, minmax(480px, 1fr)); gap: 16px; }
.charts .wide { grid-column: 1 / -1; }
figure { margin: 0; padding: 16px 18px 12px; }
figcaption { font-weight: 600; margin-bottom: 8px; }
figcaption span { font-weight: 400; color: var(--muted); font-size: 13px; }
svg { display: block; width: 100%; height: auto; font-family: inherit; }
svg text { fill: var(--ink); font-size: 12px; }
svg .axis line, svg .axis path { stroke: var(--muted); }
svg .grid line { stroke: #eaeef2; }
svg .tick text, svg .axis-title { fill: var(--muted); }
svg .axis-title { font-size: 12px; }
svg rect.bar:hover { opacity: .8; }
.legend { display: flex; gap: 14px; flex-wrap: wrap; color: var(--muted); font-size: 13px; margin-top: 6px; }
.legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 5px; }
details { margin-top: 8px; font-size: 13px; }
summary { cursor: pointer; color: var(--blue); }
.panel { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; padding: 7px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: #f0f3f6; font-weight: 600; white-space: nowrap; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.msg { display: block; color: var(--muted); min-width: 200px; max-width: 420px; overflow-wrap: anywhere; }
.nowrap { white-space: nowrap; }
code { font: 13px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
.bar-cell { min-width: 140px; }
.meter { height: 8px; background: #eaeef2; border-radius: 4px; overflow: hidden; display: flex; margin-top: 6px; }
.meter span { display: block; height: 100%; }
.tag { display: inline-block; padding: 1px 8px; border-radius: 999px; font-size: 12px; white-space: nowrap;
  border: 1px solid currentColor; }
.tag.lease_expired, .tag.failed { color: var(--red); }
.tag.held { color: var(--amber); }
.tag.stuck { color: var(--blue); }
.tag.gave_up { color: var(--grey); }
.empty { color: var(--muted); padding: 14px 16px; margin: 0; }
footer { color: var(--muted); font-size: 12px; margin-top: 36px; }
"""


def _table(head: list[str], rows: list[list[str]], numeric: set[int] = frozenset(), raw: bool = False) -> str:  # type: ignore[assignment]
    """A table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    cls = [' class="num"' if i in numeric else "" for i in range(len(head))]
    out = ["<table><thead><tr>", *(f"<th{cls[i]}>{escape(h)}</th>" for i, h in enumerate(head)), "</tr></thead><tbody>"]
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls[i]}>{c if raw else escape(c)}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _data_details(head: list[str], rows: list[list[str]], numeric: set[int]) -> str:
    return f"<details><summary>The numbers</summary>{_table(head, rows, numeric)}</details>"


def _meter(s: Summary, p: PipelineInfo) -> str:
    parts = []
    for stage in p.terminal:
        n = s.stages.get(stage, 0)
        if n and s.episodes:
            parts.append(f'<span style="width:{100 * n / s.episodes:.2f}%;background:{stage_colour(p, stage)}" '
                         f'title="{escape(f"{stage}: {n}")}"></span>')
    return f'<div class="meter" aria-hidden="true">{"".join(parts)}</div>'


def _estimate_html(e: Estimate) -> str:
    if e.status == "done":
        return "done"
    if e.status == "unknown" or e.date is None:
        return "unknown"
    return e.date.isoformat()


def render_html(report: Report) -> str:
    """One self-contained page: no scripts, fonts, styles or images from elsewhere."""
    s, p, scope = report.totals, report.pipeline, report.scope
    now = report.generated_at
    where = f"show {scope.show}" if scope.show else f"{len(report.shows)} show(s)"
    failed_note = f"{s.failures:,} failures; most: {s.error_kinds[0].kind}" if s.error_kinds else "no failures"
    cards = [
        ("Episodes", f"{s.episodes:,}", where),
        ("Done", f"{s.completion_pct}%", f"{s.done:,} of {s.episodes:,} ({s.skipped:,} skipped)"),
        ("Remaining", f"{s.remaining:,}", f"{s.completed_in_window:,} finished in {scope.days} days"),
        ("Failure rate", f"{s.failure_rate_pct}%", failed_note),
        ("Cost", amount(s.cost_total), f"{len(s.cost_by_stage)} stage(s) with costs"),
        ("Estimated completion", _estimate_html(s.estimate),
         f"at {s.estimate.rate_per_day:g} per day" if s.estimate.rate_per_day else
         "all done" if s.estimate.status == "done" else "nothing finished recently"),
    ]
    body = ['<header><h1>Pipeline report</h1>',
            f'<p><code>{escape(report.store)}</code> &middot; pipeline <b>{escape(p.name)}</b> &middot; '
            f'{escape(where)} &middot; generated {escape(when(now))} UTC &middot; throughput window '
            f'{escape(scope.start)} to {escape(scope.end)}</p></header>',
            *(f'<p class="note"><b>Paused</b> (statekit pause): {escape(x.stage)} for '
              f'{escape("every show" if x.show is None else "show " + x.show)} since {escape(x.since[:19])}'
              f'{escape(" by " + x.by if x.by else "")}{escape(": " + x.note if x.note else "")}</p>'
              for x in report.paused),
            '<section class="cards" aria-label="Summary">']
    body += [f'<div class="card"><div class="label">{escape(label)}</div><div class="value">{escape(value)}</div>'
             f'<div class="note">{escape(note)}</div></div>' for label, value, note in cards]
    body.append("</section>")

    body.append('<h2>Shows</h2><div class="panel">')
    rows = []
    for sh in report.shows:
        done_cell = (f'{sh.completion_pct}% <span class="note">({sh.done:,}/{sh.episodes:,})</span>'
                     f'{_meter(sh, p)}')
        rows.append([f'<code class="nowrap">{escape(sh.show_id)}</code>', escape(sh.title), f"{sh.episodes:,}",
                     done_cell, f"{sh.remaining:,}", f"{sh.failure_rate_pct}%", escape(amount(sh.cost_total)),
                     escape(kinds_text(sh.error_kinds)), escape(_estimate_html(sh.estimate))])
    body.append(_table(["show", "title", "episodes", "done", "remaining", "failure rate", "cost", "top error kinds",
                        "estimated completion"], rows, {2, 4, 5, 6}, raw=True) if rows
                else '<p class="empty">No shows yet.</p>')
    body.append("</div>")

    funnel_rows = [[st, f"{n:,}", f"{pct(n, s.episodes)}%"] for st, n in s.stages.items()]
    cost_rows = [[st, amount(c), f"{pct(c, s.cost_total)}%"] for st, c in s.cost_by_stage.items()]
    day_rows = [[d.date.isoformat(), str(d.completed), *(str(d.by_stage.get(t, 0)) for t in p.terminal)]
                for d in s.throughput]
    legend = "".join(f'<span><i style="background:{c}"></i>{escape(label)}</span>' for label, c in (
        ("in progress", "#0969da"), ("finished", "#1a7f37"), ("failed", "#cf222e"), ("skipped", "#8c959f")))
    body += [
        '<h2>Progress</h2><div class="charts">',
        '<figure><figcaption>Stage funnel <span>&middot; where the episodes are now, in pipeline order'
        f'</span></figcaption>{funnel_svg(report)}<div class="legend">{legend}</div>'
        f'{_data_details(["stage", "episodes", "share"], funnel_rows, {1, 2})}</figure>',
        '<figure><figcaption>Cost by stage <span>&middot; spent so far</span></figcaption>'
        + (cost_svg(report) if cost_rows else '<p class="empty">Nothing has been spent yet.</p>')
        + (_data_details(["stage", "cost", "share"], cost_rows, {1, 2}) if cost_rows else "") + "</figure>",
        '<figure class="wide"><figcaption>Throughput <span>&middot; episodes reaching a terminal stage per day '
        f'(UTC), last {scope.days} days</span></figcaption>{throughput_svg(report)}'
        f'{_data_details(["date", "finished", *p.terminal], day_rows, set(range(1, 2 + len(p.terminal))))}'
        "</figure></div>",
    ]

    body.append('<h2>Failures by kind</h2><div class="panel">')
    kinds = [[f"<code>{escape(k.kind)}</code>", f"{k.count:,}", f"{pct(k.count, s.failures)}%"] for k in s.error_kinds]
    body.append(_table(["error kind", "failures", "share"], kinds, {1, 2}, raw=True) if kinds
                else '<p class="empty">No failures recorded.</p>')
    body.append("</div>")

    counts = ", ".join(f"{n:,} {REASON_TEXT[r]}" for r, n in report.attention_counts.items())
    body.append(f'<h2>Needs attention <span class="note">&middot; {report.attention_total:,} episode(s)'
                f'{": " + escape(counts) if counts else ""}</span></h2>'
                f'<p class="note">Worker stopped: its lease expired ({escape("statekit recover")} brings it back). '
                f'Stuck: no change for {scope.stuck_after_hours:g} h, outside the first and the terminal stages.</p>'
                '<div class="panel">')
    rows = []
    for a in report.attention:
        rows.append([f'<code><span class="nowrap">{escape(a.show_id)}/</span><wbr><span class="nowrap">'
                     f'{escape(a.episode_id)}</span></code>', escape(a.title), f"<code>{escape(a.stage)}</code>",
                     f'<span class="tag {escape(a.reason)}">{escape(REASON_TEXT[a.reason])}</span>',
                     f'<span class="nowrap" title="{escape(a.since.isoformat())}">{escape(when(a.since))}</span>'
                     f'<br><span class="note">{escape(age(now, a.since))} ago</span>',
                     str(a.error_count), f"<code>{escape(a.last_error_kind or '')}</code>",
                     f'<span class="msg">{escape(a.message or "")}</span>'])
    body.append(_table(["episode", "title", "stage", "why", "since (UTC)", "errors", "last error kind",
                        "message"], rows, {5}, raw=True) if rows
                else '<p class="empty">Nothing failed or stuck.</p>')
    if report.attention_truncated:
        body.append(f'<p class="empty">Showing the first {len(report.attention):,} of '
                    f'{report.attention_total:,}; see the JSON report or <code>statekit errors</code>.</p>')
    body.append("</div>")
    body.append(f'<footer>statekit {escape(report.statekit_version)} &middot; report format {report.format_version} '
                "&middot; all times UTC &middot; completion counts every terminal stage as done, "
                f"including {escape(p.give_up_stage or 'given-up episodes')}</footer>")
    return ("<!DOCTYPE html>\n"
            '<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(f'statekit report: {p.name}, {when(now)} UTC')}</title>"
            f"<style>{_CSS}</style></head><body><main>" + "".join(body) + "</main></body></html>\n")

"""The text format: plain text for a terminal or an email."""

from __future__ import annotations

from .display import age, amount, kinds_text, when
from .model import Estimate, Report


def _estimate_text(e: Estimate) -> str:
    if e.status == "done":
        return "done"
    if e.status == "unknown" or e.date is None:
        return "unknown (nothing finished in the window)"
    return (f"{e.date.isoformat()} (at {e.rate_per_day:g}/day since {e.basis_from}, "
            f"{e.basis_completed} finished on {e.active_days} active day(s))")


def render_text(report: Report) -> str:
    """Plain text for a terminal or an email."""
    lines: list[str] = []
    scope = report.scope
    title = f"statekit report: {report.store}"
    lines += [title, "=" * len(title),
              f"generated {when(report.generated_at)} UTC; pipeline {report.pipeline.name}; "
              f"throughput window {scope.start} .. {scope.end} ({scope.days} days)"
              + (f"; show {scope.show}" if scope.show else ""), ""]
    for x in report.paused:  # an operator's pause (statekit pause): claims hand none of the stage out
        lines.append(f"PAUSED {x.stage} for " + ("every show" if x.show is None else f"show {x.show}")
                     + f" since {x.since[:19].replace('T', ' ')}" + (f" by {x.by}" if x.by else "")
                     + (f": {x.note}" if x.note else ""))
    if report.paused:
        lines.append("")
    for s in ([report.totals] if scope.show is None and len(report.shows) != 1 else []) + report.shows:
        head = "ALL SHOWS" if s.show_id is None else f"show {s.show_id}" + (f": {s.title}" if s.title != s.show_id
                                                                            else "")
        lines.append(head)
        lines.append(f"  episodes       {s.episodes}: {s.done} done ({s.completion_pct}%), of which "
                     f"{s.skipped} skipped; {s.succeeded} succeeded ({s.succeeded_pct}%); {s.remaining} remaining")
        width = max((len(k) for k in s.stages), default=5)
        for stage, n in s.stages.items():
            if n:
                lines.append(f"    {stage:<{width}}  {n:>7}")
        lines.append(f"  failures       {s.failures} in {s.episodes_with_failures} episode(s) "
                     f"({s.failure_rate_pct}% of episodes); top kinds: {kinds_text(s.error_kinds)}")
        lines.append(f"  cost           {amount(s.cost_total)}"
                     + (" (" + ", ".join(f"{k} {amount(v)}" for k, v in s.cost_by_stage.items()) + ")"
                        if s.cost_by_stage else ""))
        recent = [f"{d.date.strftime('%m-%d')} {d.completed}" for d in s.throughput[-7:]]
        lines.append(f"  throughput     {s.completed_in_window} finished in the window; last days: "
                     + ", ".join(recent))
        lines.append(f"  estimated      {_estimate_text(s.estimate)}")
        lines.append("")
    lines.append(f"needs attention: {report.attention_total} episode(s)"
                 + (" (" + ", ".join(f"{n} {r}" for r, n in report.attention_counts.items()) + ")"
                    if report.attention_counts else ""))
    now = report.generated_at
    for a in report.attention:
        lines.append(f"  {a.show_id}/{a.episode_id}  {a.stage}  {a.reason} for {age(now, a.since)}"
                     + (f"  [{a.last_error_kind}]" if a.last_error_kind else "")
                     + (f"  {a.message}" if a.message else ""))
    if report.attention_truncated:
        lines.append(f"  ... and {report.attention_total - len(report.attention)} more")
    return "\n".join(lines) + "\n"

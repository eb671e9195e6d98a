"""A simulation study as one self-contained HTML page: the tables and line plots (inline SVG, no
scripts, nothing fetched), readable offline and printable."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
W, H, PAD_L, PAD_B, PAD_T, PAD_R = 640, 260, 56, 36, 12, 12


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / n
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * step:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.2g}"


def line_plot(
    lines: dict[str, Sequence[Sequence[float]]],
    *,
    x_label: str,
    y_label: str,
    y_max: float | None = None,
    log_x: bool = False,
    dashed: dict[str, float] | None = None,
) -> str:
    """Lines of (x, y) points as an SVG; `dashed`: horizontal reference lines by label."""
    points = [p for line in lines.values() for p in line]
    if not points:
        return "<p>(no data)</p>"

    def fx(x: float) -> float:
        return math.log10(max(x, 1e-9)) if log_x else x

    xs = [fx(p[0]) for p in points]
    x_lo, x_hi = min(xs), max(xs)
    y_hi = y_max if y_max is not None else max(max(p[1] for p in points), 1e-9) * 1.05
    x_hi = x_hi if x_hi > x_lo else x_lo + 1

    def sx(x: float) -> float:
        return PAD_L + (fx(x) - x_lo) / (x_hi - x_lo) * (W - PAD_L - PAD_R)

    def sy(y: float) -> float:
        return H - PAD_B - y / y_hi * (H - PAD_B - PAD_T)

    parts = [f'<svg viewBox="0 0 {W} {H + 18 * len(lines)}" width="{W}" role="img" '
             'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">']  # fmt: skip
    for t in _ticks(0, y_hi):
        y = sy(t)
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#ddd"/><text x="{PAD_L - 4}" y="{y + 4:.1f}" '
                     f'text-anchor="end">{_fmt(t)}</text>')  # fmt: skip
    for t in _ticks(x_lo, x_hi):
        x = PAD_L + (t - x_lo) / (x_hi - x_lo) * (W - PAD_L - PAD_R)
        label = _fmt(10**t) if log_x else _fmt(t)
        parts.append(f'<text x="{x:.1f}" y="{H - PAD_B + 14}" text-anchor="middle">{label}</text>')
    parts.append(f'<text x="{(W + PAD_L) / 2}" y="{H - 4}" text-anchor="middle">'
                 f"{html.escape(x_label)}</text>"
                 f'<text x="12" y="{(H - PAD_B) / 2}" transform="rotate(-90 12 {(H - PAD_B) / 2})" '
                 f'text-anchor="middle">{html.escape(y_label)}</text>')  # fmt: skip
    # One dashed line per value, labelled with every name at it: lines of equal value (two
    # pools of 25 %) would hide one another.
    at: dict[float, list[tuple[str, str]]] = {}
    for (name, value), colour in zip((dashed or {}).items(), COLOURS, strict=False):
        at.setdefault(value, []).append((name, colour))
    for value, named in at.items():
        y = sy(value)
        parts.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="{named[0][1]}" stroke-dasharray="4 3"/>'
                     f'<text x="{W - PAD_R - 2}" y="{y - 3:.1f}" text-anchor="end" '
                     f'fill="{named[0][1]}">{html.escape(", ".join(n for n, _ in named))} '
                     f"{_fmt(value)}</text>")  # fmt: skip
    for k, (label, line) in enumerate(lines.items()):
        colour = COLOURS[k % len(COLOURS)]
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" '
                     f'points="{path}"/>')  # fmt: skip
        y = H + 12 + 18 * k
        parts.append(f'<rect x="{PAD_L}" y="{y - 9}" width="14" height="4" fill="{colour}"/>'
                     f'<text x="{PAD_L + 20}" y="{y - 4}">{html.escape(label)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "".join(parts)


def _table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def html_report(result: dict[str, Any]) -> str:
    """The page for `run_study`'s result."""
    policies = result["policies"]
    w, m, trace = result["workload"], result["machine"], result["trace"]
    rows = [
        [p["policy"], f"{p['jct_s']['mean'] / 3600:.2f}", f"{p['jct_s']['median'] / 3600:.2f}",
         f"{p['jct_s']['p99'] / 3600:.1f}", f"{p['wait_s']['mean'] / 60:.0f}",
         f"{p['wait_s']['median'] / 60:.0f}", f"{p['wait_s']['p95'] / 60:.0f}",
         f"{p['wait_s']['p99'] / 60:.0f}", f"{p['small_jobs_wait_s']['p99'] / 60:.0f}",
         f"{p['utilisation']:.1%}", f"{p['utilisation_while_arriving']:.1%}",
         f"{p['makespan_s'] / 86400:.1f}", p["preemptions"], f"{p['lost_gpu_hours']:.0f}",
         f"{p['tenant_slowdown_jain']:.3f}", f"{p['jobs_per_s']:,.0f}"]
        for p in policies
    ]  # fmt: skip
    pool_rows = [
        [name, f"{first['guarantee']:.0%}",
         *(f"{p['pools'][name]['share_used']:.1%} / "
           + ("-" if p["pools"][name]["guarantee_met_while_waiting"] is None
              else f"{p['pools'][name]['guarantee_met_while_waiting']:.0%}")
           for p in policies)]
        for name, first in policies[0]["pools"].items()
    ]  # fmt: skip
    # Tenants, the least fairly served (by the first policy's mean slowdown) first.
    tenants = sorted(policies[0]["tenants"].items(), key=lambda item: -item[1]["slowdown_mean"])
    tenant_rows = [
        [name, t["pool"], t["jobs"],
         *(f"{p['tenants'][name]['slowdown_mean']:.1f} / {p['tenants'][name]['wait_mean_h']:.1f}"
           if name in p["tenants"] else "-" for p in policies)]
        for name, t in tenants
    ]  # fmt: skip
    utilisation = line_plot(
        {p["policy"]: [(x, y * 100) for x, y in p["series"]["utilisation"]] for p in policies},
        x_label="days", y_label="GPUs busy, %", y_max=100,
    )  # fmt: skip
    queue = line_plot(
        {p["policy"]: p["series"]["waiting_gpus"] for p in policies},
        x_label="days", y_label="GPUs asked for by waiting jobs",
    )  # fmt: skip
    cdf = line_plot(
        {p["policy"]: [(h, q * 100) for h, q in p["series"]["jct_cdf_h"]] for p in policies},
        x_label="job completion time, hours (log)", y_label="jobs, %", y_max=100, log_x=True,
    )  # fmt: skip
    shares = "".join(
        f"<h3>{html.escape(p['policy'])}</h3>"
        + line_plot(
            {
                name: [(x, y * 100) for x, y in line]
                for name, line in p["series"]["pool_share"].items()
            },
            x_label="days",
            y_label="share of all GPUs, %",
            y_max=100,
            dashed={name: v["guarantee"] * 100 for name, v in p["pools"].items()},
        )
        for p in policies
    )
    green = ""
    if all("green" in p for p in policies):
        g_rows = [[p["policy"], f"{p['green']['it_mwh']:,.1f}", f"{p['green']['facility_mwh']:,.1f}",
                   f"{p['green']['water_m3']:,.0f}", f"{p['green']['t_co2e']:,.1f}",
                   f"{p['green']['mean_g_per_kwh']:.0f}"] for p in policies]  # fmt: skip
        first = policies[0]["green"]
        green = (
            "<h2>Energy, water and carbon</h2>"
            + _table(
                ["policy", "IT MWh", "facility MWh", "water m³", "t CO2e", "mean g CO2e/kWh"],
                g_rows,
            )
            + f'<p class="note">The replay placed at {html.escape(first["start"])} in the grid '
            f"series; {first['watts_per_gpu']:.0f} W per busy GPU (its node's share); PUE "
            f"{first['pue']}.</p>"
            + "".join(_saved(p) for p in policies if "saved_t_co2e" in p["green"])
            + "<h3>Carbon intensity against load, per day</h3>"
            + line_plot(
                {
                    "grid intensity, g CO2e/kWh / 10": [(d, v / 10) for d, v, _ in first["by_day"]],
                    **{
                        f"GPUs busy, % ({p['policy']})": [
                            (d, u * 100) for d, _, u in p["green"]["by_day"]
                        ]
                        for p in policies
                    },
                },
                x_label="days",
                y_label="% busy; g/kWh / 10",
            )
        )
    css = ("body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
           "table{border-collapse:collapse;margin:1em 0}td,th{padding:3px 8px;"
           "border-bottom:1px solid #ddd;text-align:right}td:first-child,th:first-child"
           "{text-align:left}h2{margin-top:2em}.note{color:#555;font-size:90%}")  # fmt: skip
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fabriek simulation</title>
<style>{css}</style></head><body>
<h1>fabriek simulation</h1>
<p>Trace <code>{html.escape(trace["path"])}</code> ({html.escape(trace["format"])}): {w["jobs"]}
jobs replayed ({w["dropped_larger_than_machine"]} left out), on {m["gpus"]} GPUs in {m["nodes"]}
nodes of {m["gpus_per_node"]}; offered load {w["offered_load"]:.2f}; seed {w["seed"]}; time limits
{html.escape(w["time_limits"])}. Pools: {
        html.escape(
            ", ".join(
                f"{p['name']} {p['guarantee']:.0%} ({p['projects']} projects)" for p in w["pools"]
            )
        )
    }.</p>
<h2>Policies</h2>
{
        _table(
            [
                "policy",
                "JCT mean h",
                "JCT median h",
                "JCT p99 h",
                "wait mean min",
                "wait median min",
                "wait p95 min",
                "wait p99 min",
                "1-GPU wait p99 min",
                "utilisation",
                "util. while arriving",
                "makespan days",
                "preempted",
                "lost GPU-h",
                "tenant fairness (Jain)",
                "jobs/s",
            ],
            rows,
        )
    }
<p class="note">JCT: job completion time, submission to end. Utilisation: GPU-time used over GPUs
x makespan; while arriving: from the first to the last submission, without the drain at the end.
Wait: submission to (first) start. Tenant fairness: Jain's index over the tenants' mean slowdown
(1: all alike).</p>
<h2>Pools: share used / guarantee met while waiting</h2>
{_table(["pool", "guarantee", *(p["policy"] for p in policies)], pool_rows)}
<p class="note">"Guarantee met while waiting": of the time a pool had jobs waiting, the share in which
none of them would have fitted within what the pool was owed and did not run.</p>
<h2>Tenants: finish-time fairness (mean slowdown / mean wait, hours)</h2>
{_table(["tenant", "pool", "jobs", *(p["policy"] for p in policies)], tenant_rows)}
<p class="note">Each tenant's (project's) mean slowdown: its jobs' completion time over their run
time (1: no job waited); and its jobs' mean wait in hours. Least fairly served first, by {
        html.escape(policies[0]["policy"])
    }.</p>
<h2>Utilisation over time</h2>{utilisation}
<h2>Queue over time</h2>{queue}
<h2>Job completion time, distribution</h2>{cdf}
<h2>Share per pool over time (dashed: guarantees)</h2>{shares}
{green}
<p class="note">Made by <code>fabriek simulate</code> (docs/simulator.md).</p>
</body></html>
"""


def _saved(p: dict[str, Any]) -> str:
    g, f = p["green"], p["flexible"]
    return (
        f"<p>{html.escape(p['policy'])}: deferring {f['deferred']} of {f['jobs']} flexible jobs "
        f"to greener hours saved <b>{g['saved_t_co2e']:,.2f} t CO2e</b> "
        f"({g['saved_share']:.1%} of the {g['without_deferral_t_co2e']:,.1f} t of the same replay "
        f"without a forecast; {g['flexible_saved_share']:.1%} of the flexible jobs' own). The "
        f"deferred jobs ran at {g['deferred_g_per_kwh_as_run']:.0f} g CO2e/kWh, against "
        f"{g['deferred_g_per_kwh_at_submit']:.0f} had they started at once; "
        f"{f['deadlines_missed']} deadlines missed ({g['deadlines_missed_without_deferral']} "
        "in the same replay without deferral: a busy machine makes some late either way).</p>"
    )

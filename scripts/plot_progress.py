#!/usr/bin/env python3
"""Plot model_provisioner_progress_ratio over time from a Prometheus query_range.

    python scripts/plot_progress.py --prometheus http://127.0.0.1:9090 --minutes 30 --out progress.svg

Writes a PNG with matplotlib when it is installed and the output ends in .png; otherwise an SVG
drawn by hand (no dependency). One line per series, labelled by pod (or instance).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import urllib.request
from html import escape
from pathlib import Path

Series = list[tuple[str, list[tuple[float, float]]]]
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")


def fetch(prometheus: str, query: str, *, start: float, end: float, step: float) -> Series:
    params = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step})
    with urllib.request.urlopen(f"{prometheus.rstrip('/')}/api/v1/query_range?{params}", timeout=30) as resp:
        payload = json.load(resp)
    if payload.get("status") != "success":
        raise SystemExit(f"query failed: {payload.get('error')}")
    out: Series = []
    for r in payload["data"]["result"]:
        m = r["metric"]
        name = m.get("pod") or m.get("instance") or json.dumps(m, sort_keys=True)
        if m.get("repo"):
            name += f" {m['repo']}"
        out.append((name, [(float(t), float(v)) for t, v in r["values"]]))
    return out


def render_svg(series: Series, *, title: str, width: int = 900, height: int = 420) -> str:
    left, right, top, bottom = 60, 200, 40, 50
    pw, ph = width - left - right, height - top - bottom
    points = [p for _, values in series for p in values]
    t0 = min((t for t, _ in points), default=0.0)
    t1 = max((t for t, _ in points), default=1.0)
    span = max(t1 - t0, 1e-9)

    def x(t: float) -> float:
        return left + (t - t0) / span * pw

    def y(v: float) -> float:
        return top + (1 - min(max(v, 0.0), 1.0)) * ph

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="24" font-size="15">{escape(title)}</text>']
    for i in range(6):  # y grid: 0%..100%
        v = i / 5
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" text-anchor="end">{int(v * 100)}%</text>')
    for i in range(5):  # x ticks: seconds from the start
        t = t0 + span * i / 4
        parts.append(f'<text x="{x(t):.1f}" y="{top + ph + 20}" text-anchor="middle">+{t - t0:.0f}s</text>')
    parts.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    for n, (name, values) in enumerate(series):
        color = COLORS[n % len(COLORS)]
        coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in values)
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{coords}"/>')
        ly = top + 14 + 18 * n
        parts.append(f'<line x1="{left + pw + 12}" x2="{left + pw + 32}" y1="{ly - 4}" y2="{ly - 4}" '
                     f'stroke="{color}" stroke-width="3"/>')
        parts.append(f'<text x="{left + pw + 38}" y="{ly}">{escape(name)}</text>')
    if not series:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle">no data</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def render_png(series: Series, *, title: str, out: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # optional dependency: fall back to SVG
        return False
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for name, values in series:
        if values:
            t0 = values[0][0]
            ax.plot([t - t0 for t, _ in values], [v * 100 for _, v in values], label=name)
    ax.set(title=title, xlabel="seconds", ylabel="progress %", ylim=(0, 100))
    ax.grid(True, alpha=0.3)
    if series:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--query", default="max by (pod, repo) (model_provisioner_progress_ratio)")
    ap.add_argument("--minutes", type=float, default=30.0, help="how far back from now")
    ap.add_argument("--start", type=float, help="Unix start time (overrides --minutes)")
    ap.add_argument("--end", type=float, help="Unix end time (default now)")
    ap.add_argument("--step", type=float, default=0.0, help="seconds (default: ~300 points)")
    ap.add_argument("--out", type=Path, default=Path("progress.svg"))
    args = ap.parse_args(argv)
    end = args.end or time.time()
    start = args.start or end - args.minutes * 60
    step = args.step or max((end - start) / 300, 1.0)
    series = fetch(args.prometheus, args.query, start=start, end=end, step=step)
    title = "model-provisioner progress"
    out: Path = args.out
    if out.suffix == ".png" and render_png(series, title=title, out=out):
        print(f"wrote {out} ({len(series)} series)")
        return 0
    if out.suffix == ".png":
        out = out.with_suffix(".svg")
        print("matplotlib is not installed: writing an SVG instead", file=sys.stderr)
    out.write_text(render_svg(series, title=title))
    print(f"wrote {out} ({len(series)} series)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Small inline-SVG charts for the run report: bars, overlaid histograms, line plots.

Hand-written rather than matplotlib: the report must be one self-contained HTML page with no
network assets, the charts are a few rectangles and polylines, and matplotlib is not a
dependency of the project (nor fast to import on a busy 2-core machine).
"""
from __future__ import annotations

from html import escape
from typing import Sequence

import numpy as np

PALETTE = ("#3b6fb6", "#d9822b", "#2e9e6a", "#b8406a", "#7a5cc4", "#8c8c3a", "#3aa7b8", "#666666")


def _fmt(v: float) -> str:
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e5 or a < 1e-3:
        return f"{v:.2g}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.3f}".rstrip("0").rstrip(".")


def _svg(width: int, height: int, body: list[str], label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
            f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{escape(label)}">'
            f'<title>{escape(label)}</title>{"".join(body)}</svg>')


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    out = []
    for i, name in enumerate(names):
        c = PALETTE[i % len(PALETTE)]
        yy = y + i * 15
        out.append(f'<rect x="{x}" y="{yy - 9}" width="10" height="10" fill="{c}" fill-opacity="0.7"/>'
                   f'<text x="{x + 14}" y="{yy}" class="lg">{escape(name)}</text>')
    return out


def hbar_chart(items: Sequence[tuple[str, int]], total: int | None = None, width: int = 640,
               label: str = "counts", color: str = PALETTE[0]) -> str:
    """Horizontal bars, one per (label, count), with the count and its share of `total`."""
    if not items:
        return ""
    row_h, left, right = 20, 190, 120
    h = row_h * len(items) + 8
    top = max(1, max(n for _, n in items))
    span = width - left - right
    body = []
    for i, (name, n) in enumerate(items):
        y = 4 + i * row_h
        w = span * n / top
        share = f" ({100 * n / total:.1f}%)" if total else ""
        body.append(f'<text x="{left - 6}" y="{y + 14}" text-anchor="end" class="lb">{escape(str(name))}</text>'
                    f'<rect x="{left}" y="{y + 2}" width="{w:.1f}" height="{row_h - 5}" fill="{color}"/>'
                    f'<text x="{left + w + 5:.1f}" y="{y + 14}" class="lb">{n}{share}</text>')
    return _svg(width, h, body, label)


def histogram(series: dict[str, np.ndarray], title: str, bins: int = 30, lo: float | None = None,
              hi: float | None = None, width: int = 420, height: int = 220, xlabel: str = "",
              marks: dict[str, float] | None = None) -> str:
    """Overlaid histograms on shared bins; values outside [lo, hi] fall into the edge bins
    (so a few outliers can't squash the rest), and the legend gives each series' n and mean.
    `marks` draws labelled vertical lines (thresholds) at their values."""
    series = {k: np.asarray(v, dtype=float) for k, v in series.items()}
    series = {k: v[np.isfinite(v)] for k, v in series.items()}
    series = {k: v for k, v in series.items() if v.size}
    if not series:
        return ""
    allv = np.concatenate(list(series.values()))
    lo = float(np.min(allv)) if lo is None else lo
    hi = float(np.max(allv)) if hi is None else hi
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, bins + 1)
    counts = {k: np.histogram(np.clip(v, lo, hi), bins=edges)[0] for k, v in series.items()}
    ymax = max(1, max(int(c.max()) for c in counts.values()))
    # The legend gets its own band above the plot so it never hides bars.
    ml, mr, mt, mb = 44, 10, 26 + 15 * len(counts), 34
    height += 15 * len(counts)
    pw, ph = width - ml - mr, height - mt - mb
    bw = pw / bins
    body = [f'<text x="{width / 2}" y="14" text-anchor="middle" class="tt">{escape(title)}</text>',
            f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" class="ax"/>',
            f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" class="ax"/>',
            f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end" class="tk">{ymax}</text>',
            f'<text x="{ml - 4}" y="{mt + ph}" text-anchor="end" class="tk">0</text>']
    for t in np.linspace(lo, hi, 5):
        x = ml + pw * (t - lo) / (hi - lo)
        body.append(f'<text x="{x:.1f}" y="{mt + ph + 13}" text-anchor="middle" class="tk">{_fmt(float(t))}</text>')
    if xlabel:
        body.append(f'<text x="{ml + pw / 2}" y="{height - 4}" text-anchor="middle" class="tk">{escape(xlabel)}</text>')
    for i, (name, c) in enumerate(counts.items()):
        color = PALETTE[i % len(PALETTE)]
        for j, n in enumerate(c):
            if n:
                bh = ph * n / ymax
                body.append(f'<rect x="{ml + j * bw:.1f}" y="{mt + ph - bh:.1f}" width="{max(bw - 1, 1):.1f}" '
                            f'height="{bh:.1f}" fill="{color}" fill-opacity="0.55"/>')
    for label, v in (marks or {}).items():
        x = ml + pw * (min(max(v, lo), hi) - lo) / (hi - lo)
        body.append(f'<line x1="{x:.1f}" y1="{mt}" x2="{x:.1f}" y2="{mt + ph}" stroke="#c00" '
                    f'stroke-dasharray="4 3"/><text x="{x + 3:.1f}" y="{mt + 10}" class="tk">{escape(label)}</text>')
    names = [f"{k} (n={series[k].size}, mean {_fmt(float(series[k].mean()))})" for k in counts]
    body += _legend(names, ml + 4, 34)
    return _svg(width, height, body, title)


def line_plot(xs: Sequence[float], ys: Sequence[float | None], title: str, width: int = 300,
              height: int = 170, xlabel: str = "round") -> str:
    """One metric across rounds; missing values (None) break nothing, they are just skipped."""
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)]
    if not pts:
        return ""
    x0, x1 = min(xs), max(xs)
    ylo, yhi = min(p[1] for p in pts), max(p[1] for p in pts)
    if yhi == ylo:
        ylo, yhi = ylo - 0.5 * (abs(ylo) or 1), yhi + 0.5 * (abs(yhi) or 1)
    if x1 == x0:
        x0, x1 = x0 - 1, x1 + 1
    ml, mr, mt, mb = 48, 12, 22, 30
    pw, ph = width - ml - mr, height - mt - mb

    def px(x: float) -> float:
        return ml + pw * (x - x0) / (x1 - x0)

    def py(y: float) -> float:
        return mt + ph - ph * (y - ylo) / (yhi - ylo)

    body = [f'<text x="{width / 2}" y="14" text-anchor="middle" class="tt">{escape(title)}</text>',
            f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" class="ax"/>',
            f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" class="ax"/>',
            f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end" class="tk">{_fmt(yhi)}</text>',
            f'<text x="{ml - 4}" y="{mt + ph}" text-anchor="end" class="tk">{_fmt(ylo)}</text>',
            f'<text x="{ml + pw / 2}" y="{height - 4}" text-anchor="middle" class="tk">{escape(xlabel)}</text>']
    for x in sorted(set(xs)):
        body.append(f'<text x="{px(x):.1f}" y="{mt + ph + 13}" text-anchor="middle" class="tk">{_fmt(x)}</text>')
    path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
    body.append(f'<polyline points="{path}" fill="none" stroke="{PALETTE[0]}" stroke-width="2"/>')
    for x, y in pts:
        body.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{PALETTE[0]}">'
                    f'<title>{escape(title)} = {_fmt(y)}</title></circle>')
    return _svg(width, height, body, title)

"""The Run tab's curves drawn as inline SVG: numeric axes with a few round ticks (1-2-5 steps, or decades on a
log scale), a TensorBoard-style smoothed line over the faint raw one, and extra series (validation loss) with
markers. Drawn here rather than by gr.LinePlot, which has no log scale and drew these axes as categories.

The SVG carries classes the browser tests read: `tick-x` / `tick-y` (a <g> per tick, its label in <text>),
`series-<name>` (a series' path and markers), `legend`.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass

WIDTH, HEIGHT = 560, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 14, 28, 38
MAX_POINTS = 800  # a raw line is cut down to about this many points (its envelope kept)


@dataclass
class Series:
    name: str  # css-safe: it becomes the class series-<name>
    label: str
    points: list[tuple[float, float]]
    color: str
    width: float = 1.8
    opacity: float = 1.0
    markers: bool = False


def smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased so the start is not pulled to zero."""
    if not 0 < weight < 1:
        return list(values)
    out, last, n = [], 0.0, 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round values (a step of 1, 2, 2.5 or 5 times a power of ten) from at or below lo to at or above hi, as
    close to `count` of them as those steps allow."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    power = 10.0 ** math.floor(math.log10((hi - lo) / count))

    def ticks_for(step: float) -> list[float]:
        first, last = math.floor(lo / step + 1e-9), math.ceil(hi / step - 1e-9)
        return [round(k * step, 12) for k in range(first, last + 1)]

    options = [ticks_for(m * power) for m in (1, 2, 2.5, 5, 10)]
    return min(options, key=lambda t: (abs(len(t) - count - 1), len(t)))


def log_ticks(lo: float, hi: float) -> list[float]:
    """Powers of ten inside [lo, hi]; with fewer than three, 2 and 5 times them too."""
    decades = range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)
    ticks = [10.0 ** d for d in decades if lo <= 10.0 ** d <= hi]
    if len(ticks) < 3:
        ticks = sorted(m * 10.0 ** d for d in decades for m in (1, 2, 5) if lo <= m * 10.0 ** d <= hi)
    return ticks or [lo, hi]


def tick_labels(ticks: list[float], log: bool = False) -> list[str]:
    """The ticks with as few digits as they need, in one style per axis (0, 100, 200 / 0.025, 0.050 / 2e-4,
    4e-4); on a log axis each tick on its own (0.01, 0.1, 1; 1e-4 below 0.001)."""
    def sci(v: float) -> str:
        mantissa, exponent = f"{v:.2e}".split("e")
        return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}" if v else "0"

    def digits(values: list[float]) -> int:
        return next((d for d in range(7) if all(abs(round(v, d) - v) <= 1e-9 * max(1.0, abs(v)) for v in values)), 6)

    if log:
        return [sci(t) if t < 1e-3 or t >= 1e6 else f"{t:.{digits([t])}f}" for t in ticks]
    biggest = max((abs(t) for t in ticks), default=0.0)
    if biggest and (biggest < 1e-2 or biggest >= 1e6):
        return [sci(t) for t in ticks]
    places = digits(ticks)
    return [f"{t:.{places}f}" if t else "0" for t in ticks]


def _decimate(points: list[tuple[float, float]], limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most ~limit points: each bucket keeps its lowest and highest, so spikes stay visible."""
    if len(points) <= limit:
        return points
    size = math.ceil(len(points) / (limit / 2))
    out = []
    for i in range(0, len(points), size):
        bucket = points[i:i + size]
        lo, hi = min(bucket, key=lambda p: p[1]), max(bucket, key=lambda p: p[1])
        out.extend(sorted({lo, hi}))
    return out


def _finite(points, log: bool) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points
            if math.isfinite(x) and math.isfinite(y) and (y > 0 or not log)]


def line_chart(series: list[Series], *, title: str, y_label: str, log_y: bool = False, x_label: str = "step",
               empty: str = "No points yet.") -> str:
    """One chart as an HTML string (an <svg> that scales to its box)."""
    drawn = [(s, _finite(s.points, log_y)) for s in series]
    drawn = [(s, pts) for s, pts in drawn if pts]
    head = f'<div class="studio-chart" data-log="{str(log_y).lower()}">'
    if not drawn:
        return (f'{head}<div class="chart-title">{html.escape(title)}</div>'
                f'<div class="chart-empty">{html.escape(empty)}</div></div>')
    xs = [x for _, pts in drawn for x, _ in pts]
    ys = [y for _, pts in drawn for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    x_ticks = nice_ticks(x_lo, x_hi, 6)
    x_lo, x_hi = x_ticks[0], x_ticks[-1]
    if log_y:
        y_lo, y_hi = min(ys), max(ys)
        if y_hi <= y_lo * 1.0001:
            y_lo, y_hi = y_lo / 2, y_hi * 2
        y_ticks = log_ticks(y_lo, y_hi)
        to_unit = math.log10
    else:
        y_ticks = nice_ticks(min(ys), max(ys), 5)
        y_lo, y_hi = y_ticks[0], y_ticks[-1]
        to_unit = float
    u_lo, u_hi = to_unit(y_lo), to_unit(y_hi)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def py(y: float) -> float:
        return TOP + (1 - (to_unit(y) - u_lo) / ((u_hi - u_lo) or 1)) * plot_h

    parts = [f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" aria-label="{html.escape(title)}" '
             'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">',
             f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-size="13" font-weight="600">'
             f'{html.escape(title)}</text>']
    for t, label in zip(x_ticks, tick_labels(x_ticks)):
        x = px(t)
        parts.append(f'<g class="tick-x"><line x1="{x:.1f}" x2="{x:.1f}" y1="{TOP}" y2="{TOP + plot_h}" '
                     f'stroke="#e5e5e5"/><text x="{x:.1f}" y="{TOP + plot_h + 14}" text-anchor="middle">'
                     f'{label}</text></g>')
    for t, label in zip(y_ticks, tick_labels(y_ticks, log_y)):
        y = py(t)
        parts.append(f'<g class="tick-y"><line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
                     f'stroke="#e5e5e5"/><text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text></g>')
    parts.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 6}" text-anchor="middle">{html.escape(x_label)}</text>')
    parts.append(f'<text transform="translate(12 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
                 f'{html.escape(y_label + (" (log)" if log_y else ""))}</text>')
    parts.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#999"/>')
    for s, pts in drawn:
        coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in _decimate(pts))
        parts.append(f'<g class="series-{s.name}"><polyline points="{coords}" fill="none" stroke="{s.color}" '
                     f'stroke-width="{s.width}" stroke-opacity="{s.opacity}" stroke-linejoin="round"/>')
        if s.markers:
            parts.extend(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3.5" fill="{s.color}">'
                         f'<title>step {x:g}: {y:.4g}</title></circle>' for x, y in pts)
        parts.append("</g>")
    legend_x = LEFT + 8
    for s, _ in drawn:
        if s.opacity < 1:
            continue  # the faint raw line needs no entry next to its smoothed self
        parts.append(f'<g class="legend"><rect x="{legend_x}" y="{TOP + 6}" width="10" height="10" '
                     f'fill="{s.color}"/><text x="{legend_x + 14}" y="{TOP + 15}">{html.escape(s.label)}</text></g>')
        legend_x += 22 + 6.5 * len(s.label)
    parts.append("</svg>")
    return head + "".join(parts) + "</div>"


def loss_chart(losses, validation_losses, smoothing: float, log_y: bool) -> str:
    """Training loss (raw, faint, and smoothed) with the validation loss beside it when the run has one."""
    smoothing = min(max(float(smoothing or 0), 0.0), 0.99)
    steps = [s for s, _ in losses]
    series = []
    if smoothing > 0:
        series.append(Series("raw", "loss (raw)", list(losses), "#f28e2b", width=1.0, opacity=0.3))
    series.append(Series("train", "training loss" + (f" (smoothed {smoothing:g})" if smoothing else ""),
                         list(zip(steps, smooth([v for _, v in losses], smoothing))), "#e8590c", width=2.0))
    if validation_losses:
        series.append(Series("validation", "validation loss", list(validation_losses), "#1c7ed6", markers=True))
    return line_chart(series, title="Loss", y_label="loss", log_y=log_y)


def lr_chart(lrs) -> str:
    return line_chart([Series("lr", "learning rate", list(lrs), "#2f9e44")], title="Learning rate",
                      y_label="learning rate")

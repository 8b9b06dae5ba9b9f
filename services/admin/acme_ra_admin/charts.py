"""Bar charts as inline SVG, rendered on the server: the console loads no JavaScript."""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 180
# Room for the axis labels: left (the largest value), bottom (first and last label).
LEFT, BOTTOM, TOP = 40, 22, 8


def bar_chart(chart_id: str, title: str, values: Sequence[int], labels: Sequence[str]) -> Markup:
    """One bar per value, scaled to the largest; each bar's tooltip says its label and value."""
    if len(values) != len(labels) or not values:
        raise ValueError("one label per value, at least one value")
    top = max(values) or 1
    plot_w, plot_h = WIDTH - LEFT, HEIGHT - BOTTOM - TOP
    step = plot_w / len(values)
    bars = []
    for index, (value, label) in enumerate(zip(values, labels, strict=True)):
        height = plot_h * value / top
        x, y = LEFT + index * step + 1, TOP + plot_h - height
        bars.append(f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(step - 2, 1):.1f}" '
                    f'height="{height:.1f}" data-value="{value}"><title>{escape(label)}: {value}</title></rect>')
    baseline = TOP + plot_h
    return Markup(
        f'<svg id="{escape(chart_id)}" class="chart" role="img" aria-label="{escape(title)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">'
        f"<title>{escape(title)}</title>"
        f'<line class="axis" x1="{LEFT}" y1="{baseline}" x2="{WIDTH}" y2="{baseline}"/>'
        f'<text class="tick" x="{LEFT - 4}" y="{TOP + 10}" text-anchor="end">{top if max(values) else 0}</text>'
        f'<text class="tick" x="{LEFT - 4}" y="{baseline}" text-anchor="end">0</text>'
        + "".join(bars)
        + f'<text class="tick" x="{LEFT}" y="{HEIGHT - 6}">{escape(labels[0])}</text>'
        f'<text class="tick" x="{WIDTH}" y="{HEIGHT - 6}" text-anchor="end">{escape(labels[-1])}</text>'
        "</svg>"
    )

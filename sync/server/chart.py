"""A server-side SVG bar chart for the daily report (decisions, denials and fevers per hour).

No script, no external assets: the SVG is built here as text with every value
escaped, so the dashboard works on a site LAN without internet (sync.md §5.8)
and under a Content-Security-Policy that allows no scripts.
"""

from __future__ import annotations

from html import escape

__all__ = ["hourly_chart"]

SERIES = (("decisions", "检查 / decisions", "#4a78b5"), ("denials", "拒绝 / denials", "#d9822b"),
          ("fevers", "发热 / fevers", "#c23030"))


def _nice_max(v: int) -> int:
    if v <= 5:
        return 5
    step = 10 ** (len(str(v)) - 1)
    for m in (1, 2, 2.5, 5, 10):
        top = int(m * step)
        if top >= v:
            return top
    return v


def hourly_chart(series: list[dict[str, int]], *, title: str, width: int = 960, height: int = 320) -> str:
    """An SVG element: one group of three bars per hour, a y axis with 5 ticks, a legend."""
    left, right, top, bottom = 48, 12, 36, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    hours = max(1, len(series))
    peak = _nice_max(max((s[k] for s in series for k, _, _ in SERIES), default=0))
    group_w = plot_w / hours
    bar_w = max(1.0, (group_w - 4) / len(SERIES))
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
           f'width="100%" aria-label="{escape(title)}">',
           f'<title>{escape(title)}</title>',
           f'<rect x="0" y="0" width="{width}" height="{height}" fill="#ffffff"/>']
    for i in range(6):
        value = peak * i // 5
        y = top + plot_h - plot_h * i / 5
        out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#e3e3e3"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11" fill="#555">{value}</text>')
    for h, s in enumerate(series):
        x0 = left + h * group_w + 2
        for j, (key, label, colour) in enumerate(SERIES):
            v = int(s.get(key, 0))
            bh = plot_h * v / peak if peak else 0
            x = x0 + j * bar_w
            out.append(f'<rect class="bar {key}" x="{x:.1f}" y="{top + plot_h - bh:.1f}" width="{bar_w:.1f}" '
                       f'height="{bh:.1f}" fill="{colour}"><title>{h:02d}:00 {escape(label)}: {v}</title></rect>')
        if h % 2 == 0 or hours <= 12:
            out.append(f'<text x="{x0 + group_w / 2 - 2:.1f}" y="{height - bottom + 16}" text-anchor="middle" '
                       f'font-size="11" fill="#555">{h:02d}</text>')
    out.append(f'<line x1="{left}" y1="{top + plot_h}" x2="{width - right}" y2="{top + plot_h}" stroke="#888"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle" font-size="11" '
               f'fill="#555">小时 / hour (local)</text>')
    lx = left
    for _key, label, colour in SERIES:
        out.append(f'<rect x="{lx}" y="10" width="12" height="12" fill="{colour}"/>'
                   f'<text x="{lx + 16}" y="21" font-size="12" fill="#222">{escape(label)}</text>')
        lx += 150
    out.append("</svg>")
    return "".join(out)

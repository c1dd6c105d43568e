"""``--report PATH``: the run's emotion timeline as one self-contained page (``.html``) or a picture (``.png``).

:class:`ReportSink` keeps every final prediction and writes the report when the engine closes its sinks
(end of input, or a signal: what was predicted until then is kept). The HTML page has no script and
loads nothing: inline CSS and SVG, the probabilities of each segment in its SVG ``<title>`` (shown on
hover) and in the table below.
"""

from __future__ import annotations

import html
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from .argcheck import CliError
from .events import Event, PredictionEvent, StreamStatus

log = logging.getLogger(__name__)

REPORT_SUFFIXES = (".html", ".htm", ".png")
"""What ``--report`` can write, chosen by the file name."""

COLOURS = {"angry": "#d1495b", "happy": "#f2a541", "neutral": "#8d99ae", "sad": "#3d7dd8", "calm": "#2a9d8f",
           "fearful": "#8e6cc9", "disgust": "#6a994e", "surprised": "#e56bb0"}
"""The dashboard's label colours (stream/web/view.js), so that a report looks like the live page."""
SPARE_COLOURS = ("#00798c", "#edae49", "#66a182", "#a06cd5", "#c05746", "#4f6d7a")

SVG_WIDTH_PX, LANE_PX, PROB_PX = 1000, 26, 90
"""Timeline drawing: total width, label lane height, probability band height."""


class ReportError(CliError):
    """``--report`` names a file that cannot be written; the message is one sentence."""


def colour(label: str, labels: tuple[str, ...]) -> str:
    if label in COLOURS:
        return COLOURS[label]
    index = labels.index(label) if label in labels else 0
    return SPARE_COLOURS[index % len(SPARE_COLOURS)]


def check_report_path(path: str) -> Path:
    """The ``--report`` path, checked before the run starts: a known suffix in a writable folder."""
    target = Path(path)
    if target.suffix.lower() not in REPORT_SUFFIXES:
        raise ReportError(f"--report must end in .html or .png, not {target.name!r}")
    if not target.parent.is_dir():
        raise ReportError(f"--report: the folder {str(target.parent)!r} does not exist")
    if target.is_dir():
        raise ReportError(f"--report {path!r} is a folder")
    return target


@dataclass
class _StreamLog:
    """One run of a stream: from its start to its end. A name is free again once its stream ended (a client
    may send ``start_stream`` with it again), so one name can have several runs, each its own section."""

    name: str
    finals: list[PredictionEvent] = field(default_factory=list)
    detail: str = ""
    remote: bool = False
    ended: bool = False

    @property
    def title(self) -> str:
        """The name as a heading in plain text (the PNG): marked when remote, like the text sink."""
        return f"{self.name} (remote)" if self.remote else self.name

    @property
    def duration_s(self) -> float:
        return max((p.end_s for p in self.finals), default=0.0)


class ReportSink:
    """Collects final predictions per stream; ``close()`` writes ``path`` (HTML or PNG by its suffix)."""

    def __init__(self, path: Path, labels: tuple[str, ...], model_name: str) -> None:
        self.path, self.labels, self.model_name = Path(path), tuple(labels), model_name
        self.streams: list[_StreamLog] = []  # every run, in the order they started
        self._latest: dict[str, _StreamLog] = {}  # name -> its latest run
        self.written = False

    def _run(self, name: str, starting: bool = False) -> _StreamLog:
        log_ = self._latest.get(name)
        if log_ is None or (starting and log_.ended):
            log_ = self._latest[name] = _StreamLog(name)
            self.streams.append(log_)
        return log_

    def put(self, event: Event) -> None:
        if isinstance(event, PredictionEvent) and event.final:
            self._run(event.stream).finals.append(event)
        elif isinstance(event, StreamStatus):
            log_ = self._run(event.stream, starting=event.state == "started")
            log_.detail, log_.remote = event.detail, log_.remote or event.remote
            log_.ended = log_.ended or event.state == "ended"

    def close(self) -> None:
        try:
            if self.path.suffix.lower() == ".png":
                write_png(self.path, self.streams, self.labels)
            else:
                self.path.write_text(render_html(self.streams, self.labels, self.model_name), encoding="utf-8")
            self.written = True
        except OSError as exc:
            log.error("could not write the report %s: %s", self.path, exc.strerror or exc)


def _svg_timeline(log_: _StreamLog, labels: tuple[str, ...]) -> str:
    """Label lane (one box per segment) over stacked probability bars, on one time axis."""
    total_s = max(log_.duration_s, 1.0)
    scale = SVG_WIDTH_PX / total_s
    height = LANE_PX + PROB_PX + 22
    parts = [f'<svg class="tl" viewBox="0 0 {SVG_WIDTH_PX} {height}" role="img" '
             f'aria-label="segments and probabilities over time">']
    step = next(s for s in (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 1e9) if total_s / s <= 12)
    for i in range(int(total_s // step) + 1):
        x = i * step * scale
        parts.append(f'<line x1="{x:.1f}" y1="{LANE_PX}" x2="{x:.1f}" y2="{LANE_PX + PROB_PX}" class="grid"/>'
                     f'<text x="{x + 2:.1f}" y="{height - 6}" class="tick">{_clock(i * step)}</text>')
    for p in log_.finals:
        x, w = p.start_s * scale, max((p.end_s - p.start_s) * scale, 1.0)
        tip = html.escape(f"segment {p.segment}  {p.start_s:.2f}–{p.end_s:.2f} s  {p.label} {p.confidence:.0%}\n"
                          + "\n".join(f"{k} {v:.0%}" for k, v in p.probs.items()))
        parts.append(f'<g class="seg" data-start-s="{p.start_s:.3f}" data-end-s="{p.end_s:.3f}" '
                     f'data-label="{html.escape(p.label)}"><title>{tip}</title>'
                     f'<rect x="{x:.1f}" y="2" width="{w:.1f}" height="{LANE_PX - 4}" rx="3" '
                     f'fill="{colour(p.label, labels)}"/>')
        y = LANE_PX + PROB_PX
        for label in labels:
            h = p.probs.get(label, 0.0) * PROB_PX
            y -= h
            parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" '
                         f'fill="{colour(label, labels)}" opacity="0.75"/>')
        parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)


def _clock(seconds: float) -> str:
    minutes, s = divmod(int(round(seconds)), 60)
    return f"{minutes}:{s:02d}" if minutes else f"{s} s"


def _summary(log_: _StreamLog, labels: tuple[str, ...]) -> str:
    speech = {label: 0.0 for label in labels}
    for p in log_.finals:
        speech[p.label] = speech.get(p.label, 0.0) + p.end_s - p.start_s
    total = sum(speech.values()) or 1.0
    items = "".join(f'<li><span class="sw" style="background:{colour(k, labels)}"></span>{html.escape(k)} '
                    f'{v:.1f} s ({v / total:.0%})</li>' for k, v in speech.items())
    return f'<ul class="summary">{items}</ul>'


def _table(log_: _StreamLog, labels: tuple[str, ...]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in labels)
    rows = []
    for p in log_.finals:
        flags = "uncertain" if getattr(p, "uncertain", False) else ""
        cells = "".join(f"<td>{p.probs.get(k, 0.0):.2f}</td>" for k in labels)
        rows.append(f'<tr><td>{p.segment}</td><td>{p.start_s:.2f}</td><td>{p.end_s:.2f}</td>'
                    f'<td>{html.escape(p.label)}</td><td>{p.confidence:.2f}</td>{cells}<td>{flags}</td></tr>')
    return (f'<div class="table-wrap"><table><thead><tr><th>#</th><th>start s</th><th>end s</th><th>label</th>'
            f'<th>confidence</th>{head}<th></th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>')


STYLE = """body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2330;max-width:1100px}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem;overflow-wrap:anywhere}.muted{color:#667085}
.tl{width:100%;height:auto;border:1px solid #d9dde3;border-radius:6px;background:#fafbfc}
.grid{stroke:#d9dde3}.tick{font-size:11px;fill:#667085}.legend,.summary{display:flex;flex-wrap:wrap;gap:.3rem 1rem;
list-style:none;padding:0}.sw{display:inline-block;width:.8rem;height:.8rem;border-radius:2px;margin-right:.3rem;
vertical-align:-1px}table{border-collapse:collapse;font-size:.85rem;margin-top:.8rem;font-variant-numeric:tabular-nums}
td,th{padding:.15rem .6rem;border-bottom:1px solid #eef0f3;text-align:right}td:nth-child(4),th:nth-child(4){text-align:left}
.table-wrap{overflow-x:auto;max-width:100%}.remote{font-size:.75rem;font-weight:600;color:#7a4b00;background:#ffefc2;
padding:0 .4rem;border-radius:1rem;vertical-align:2px}
@media (max-width:600px){body{margin:.8rem}table{font-size:.75rem}td,th{padding:.15rem .35rem}}"""


def render_html(streams: list[_StreamLog], labels: tuple[str, ...], model_name: str) -> str:
    """The whole report page (no script, nothing loaded from elsewhere)."""
    legend = "".join(f'<span><span class="sw" style="background:{colour(k, labels)}"></span>{html.escape(k)}</span>'
                     for k in labels)
    body = []
    for log_ in streams:
        mark = ' <span class="remote" title="audio and name from a WebSocket client">⇄ remote</span>' if log_.remote else ""
        body.append(f'<section class="stream"><h2>{html.escape(log_.name)}{mark}</h2>'
                    f'<p class="muted">{len(log_.finals)} segments over {log_.duration_s:.1f} s'
                    f'{" · " + html.escape(log_.detail) if log_.detail else ""}</p>'
                    f'{_svg_timeline(log_, labels)}{_summary(log_, labels)}{_table(log_, labels)}</section>')
    if not body:
        body.append('<p class="muted">No stream produced a prediction.</p>')
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime())
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>ser-live report</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1>ser-live report</h1><p class="muted">model {html.escape(model_name)} · written {stamp}. '
            f'Top lane: each segment\'s label; below it: its class probabilities, stacked.</p>'
            f'<div class="legend">{legend}</div>{"".join(body)}</body></html>\n')


def write_png(path: Path, streams: list[_StreamLog], labels: tuple[str, ...]) -> None:
    """One row per stream: labelled segments above stacked probability bars (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = max(len(streams), 1)
    fig, axes = plt.subplots(rows, 1, figsize=(12, 2.4 * rows), squeeze=False)
    for ax, log_ in zip(axes[:, 0], streams):
        for p in log_.finals:
            width, bottom = p.end_s - p.start_s, 0.0
            for label in labels:
                share = p.probs.get(label, 0.0)
                ax.bar(p.start_s, share, width, bottom=bottom, align="edge", color=colour(label, labels), alpha=0.75)
                bottom += share
            ax.bar(p.start_s, 0.25, width, bottom=1.05, align="edge", color=colour(p.label, labels))
        ax.set_xlim(0, max(log_.duration_s, 1.0))
        ax.set_ylim(0, 1.35)
        ax.set_yticks([0, 0.5, 1.0])
        ax.set_title(log_.title, loc="left", fontsize=10)
        ax.set_xlabel("time (s)")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour(k, labels)) for k in labels]
    fig.legend(handles, labels, loc="upper right", ncol=len(labels), fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)

"""Pure drawing: Rich ``Text`` from :mod:`.state` values, sized to the cells a widget has.

Kept apart from the widgets so what a panel says can be checked without running an app.
"""

from __future__ import annotations

from rich.text import Text

from serlive.stream.names import printable

from .state import Current, MonitorState, StreamView

LABEL_COLOURS = {
    "angry": "red", "anger": "red", "happy": "yellow", "happiness": "yellow", "joy": "yellow",
    "neutral": "grey70", "sad": "dodger_blue1", "sadness": "dodger_blue1", "fear": "magenta",
    "fearful": "magenta", "disgust": "green", "surprise": "cyan", "surprised": "cyan", "calm": "aquamarine3",
    "contempt": "orange3", "frustrated": "dark_orange", "excited": "gold1",
}
"""Colours for common emotion names; anything else takes one from :data:`SPARE_COLOURS` by its index."""

SPARE_COLOURS = ("bright_magenta", "bright_green", "bright_cyan", "orange1", "plum2", "light_salmon1")

# A 3x5-pixel font (M, N, W wider), drawn with half blocks into three text rows.
_FONT = {
    "A": ".#.|#.#|###|#.#|#.#", "B": "##.|#.#|##.|#.#|##.", "C": ".##|#..|#..|#..|.##", "D": "##.|#.#|#.#|#.#|##.",
    "E": "###|#..|##.|#..|###", "F": "###|#..|##.|#..|#..", "G": ".##|#..|#.#|#.#|.##", "H": "#.#|#.#|###|#.#|#.#",
    "I": "###|.#.|.#.|.#.|###", "J": "..#|..#|..#|#.#|.#.", "K": "#.#|#.#|##.|#.#|#.#", "L": "#..|#..|#..|#..|###",
    "M": "#...#|##.##|#.#.#|#...#|#...#", "N": "#..#|##.#|#.##|#..#|#..#", "O": ".#.|#.#|#.#|#.#|.#.",
    "P": "##.|#.#|##.|#..|#..", "Q": ".#.|#.#|#.#|##.|.##", "R": "##.|#.#|##.|#.#|#.#", "S": ".##|#..|.#.|..#|##.",
    "T": "###|.#.|.#.|.#.|.#.", "U": "#.#|#.#|#.#|#.#|###", "V": "#.#|#.#|#.#|#.#|.#.",
    "W": "#...#|#...#|#.#.#|##.##|#...#", "X": "#.#|#.#|.#.|#.#|#.#", "Y": "#.#|#.#|.#.|.#.|.#.",
    "Z": "###|..#|.#.|#..|###", "0": "###|#.#|#.#|#.#|###", "1": ".#.|##.|.#.|.#.|###", "2": "##.|..#|.#.|#..|###",
    "3": "##.|..#|.#.|..#|##.", "4": "#.#|#.#|###|..#|..#", "5": "###|#..|##.|..#|##.", "6": ".##|#..|###|#.#|###",
    "7": "###|..#|.#.|.#.|.#.", "8": "###|#.#|###|#.#|###", "9": "###|#.#|###|..#|##.", "-": "...|...|###|...|...",
    " ": "..|..|..|..|..", "?": "##.|..#|.#.|...|.#.",
}
_HALF = {(True, True): "█", (True, False): "▀", (False, True): "▄", (False, False): " "}


def plain(text: str, style: str = "") -> Text:
    """Untrusted text (a stream name, a label or message from a remote feed) as a ``Text``: never parsed
    as markup, control characters written as escapes."""
    return Text(printable(text), style=style)


REMOTE_MARK = "⇄ "
"""Drawn before a remote stream's name (audio and name from a WebSocket client): a client may pick a name
that copies a local stream's letter for letter, so the mark, not the name, says where a stream comes from.
Client names cannot contain it (serlive.stream.names keeps letters, digits and ``_ . - + @ : #``)."""

REMOTE_STYLE = "bold yellow"
"""Readable on the dark panels and on the list's highlighted row."""


def stream_name(name: str, remote: bool, ended: bool = False) -> Text:
    """A stream's name as plain text, marked when remote, "(ended)" after it."""
    out = Text()
    if remote:
        out.append(REMOTE_MARK, style=REMOTE_STYLE)
    out.append_text(plain(name))
    if ended:
        out.append(" (ended)", style="dim")
    return out


def colour_for(label: str | None, labels: tuple[str, ...] = ()) -> str:
    if not label:
        return "grey50"
    if label.lower() in LABEL_COLOURS:
        return LABEL_COLOURS[label.lower()]
    index = labels.index(label) if label in labels else sum(map(ord, label))
    return SPARE_COLOURS[index % len(SPARE_COLOURS)]


def big_text(word: str) -> list[str]:
    """``word`` in the 3-row block font; characters it lacks are drawn as ``?``."""
    rows = ["", "", ""]
    for i, char in enumerate(word.upper()):
        pixels = [[c == "#" for c in line] for line in _FONT.get(char, _FONT["?"]).split("|")]
        pixels.append([False] * len(pixels[0]))
        for r in range(3):
            cells = "".join(_HALF[top, bottom] for top, bottom in zip(pixels[2 * r], pixels[2 * r + 1]))
            rows[r] += (" " if i else "") + cells
    return rows


def _bar(fraction: float, width: int) -> tuple[str, str]:
    """A horizontal bar in eighths: the filled part and the empty remainder, ``width`` cells together."""
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return filled, "·" * (width - len(filled))


def label_panel(current: Current | None, labels: tuple[str, ...], width: int, rolling_label: str | None) -> Text:
    if current is None:
        return Text("listening…", style="dim italic")
    colour = "grey50" if current.uncertain else colour_for(current.label, labels)  # never a confident colour
    style = f"bold {colour}" if current.final else f"{colour} dim"
    rows = big_text(current.label)
    out = Text()
    if len(rows[0]) <= width:
        for row in rows:
            out.append(row + "\n", style=style)
    else:
        out.append(printable(current.label.upper()) + "\n", style=style)
    kind = "final" if current.final else "interim…"
    if current.uncertain:
        out.append("UNCERTAIN ", style="bold reverse")
        out.append("leaning ", style="dim")
    out.append(f"{current.confidence:.0%} ", style="bold" if current.final else "dim")
    out.append(f"{kind} · segment {current.segment}", style="" if current.final else "italic dim")
    if rolling_label:
        out.append(f"\nrolling: {printable(rolling_label)}", style="dim")
    return out


def prob_bars(current: Current | None, labels: tuple[str, ...], width: int) -> Text:
    names = list(labels) or sorted(current.probs if current else ())
    if not names:
        return Text("no classes yet", style="dim")
    name_w = max(len(printable(n)) for n in names)
    bar_w = max(1, width - name_w - 6)
    out = Text()
    for i, name in enumerate(names):
        p = current.probs.get(name, 0.0) if current else 0.0
        filled, empty = _bar(p, bar_w)
        colour = colour_for(name, labels)
        is_top = current is not None and name == current.label
        bar_style = colour if current is not None and current.final else f"{colour} dim"
        out.append(f"{printable(name):<{name_w}} ", style="bold" if is_top else "")
        out.append(filled, style=bar_style)
        out.append(empty, style="grey30")
        out.append(f" {p:4.0%}" + ("\n" if i < len(names) - 1 else ""), style="bold" if is_top else "dim")
    return out


def circumplex(view: StreamView | None, dimensional: bool | None, width: int, height: int) -> Text:
    """Valence (x) against arousal (y), both assumed in [-1, 1] and clamped; ``●`` now, ``•·`` the trail."""
    if dimensional is False:
        return Text("no dimensional output", style="dim italic")
    points = list(view.trail) if view else []
    now = view.current if view else None
    if now is not None and now.valence is not None and now.arousal is not None:
        points_now = (now.valence, now.arousal)
    else:
        points_now = None
    if width < 9 or height < 5:
        return Text("" if points_now is None else f"V {points_now[0]:+.2f}  A {points_now[1]:+.2f}")
    rows = height - 1
    grid = [[" "] * width for _ in range(rows)]
    styles = [[""] * width for _ in range(rows)]
    cx, cy = width // 2, rows // 2
    for x in range(width):
        grid[cy][x] = "─"
    for y in range(rows):
        grid[y][cx] = "┼" if y == cy else "│"

    def put(v: float, a: float, char: str, style: str) -> None:
        x = round((max(-1.0, min(1.0, v)) + 1) / 2 * (width - 1))
        y = round((1 - (max(-1.0, min(1.0, a)) + 1) / 2) * (rows - 1))
        grid[y][x], styles[y][x] = char, style

    for i, (v, a) in enumerate(points):
        recent = i >= len(points) - 3
        put(v, a, "•" if recent else "·", "cyan" if recent else "grey50")
    if points_now is not None:
        put(*points_now, "●", "bold white" if now.final else "white dim")
    out = Text()
    for y in range(rows):
        for x in range(width):
            out.append(grid[y][x], style=styles[y][x] or "grey35")
        out.append("\n")
    caption = "V→ A↑" if points_now is None else f"V {points_now[0]:+.2f} A {points_now[1]:+.2f}"
    out.append(caption[:width], style="dim")
    return out


def timeline(view: StreamView | None, labels: tuple[str, ...], width: int) -> Text:
    """One cell per ``window_s / width`` seconds, ending now: a coloured block per segment."""
    if view is None or width < 4:
        return Text("")
    cell_s = view.window_s / width
    start_s = view.now_s - view.window_s
    out = Text()
    blocks = list(view.blocks)
    for i in range(width):
        mid_s = start_s + (i + 0.5) * cell_s
        hit = next((b for b in blocks if b.start_s <= mid_s < b.end_s + cell_s / 2), None)
        if mid_s < 0:
            out.append(" ")
        elif hit is None:
            out.append("─", style="grey30")
        elif hit.label is None:
            out.append("▒", style="grey62")
        else:
            out.append("█", style=colour_for(hit.label, labels))
    return out


def level_meter(view: StreamView | None, width: int, floor_db: float = -60.0) -> Text:
    if view is None or view.level_db is None:
        return Text("input  — no level yet", style="dim")
    db = max(floor_db, min(0.0, view.level_db))
    tail = "  ● speech" if view.speech else "  ○ quiet "
    bar_w = max(1, width - 17 - len(tail))
    filled, empty = _bar((db - floor_db) / -floor_db, bar_w)
    colour = "red" if db > -6 else "yellow" if db > -20 else "green"
    out = Text(f"input {view.level_db:6.1f} dB ")
    out.append(filled, style=colour)
    out.append(empty, style="grey30")
    out.append(tail, style="bold green" if view.speech else "dim")
    return out


def health(state: MonitorState) -> Text:
    """Engine facts, then the feed's status and the last error; lines are cut, not wrapped."""
    s, h = state.stats, state.hello
    ms = lambda v: "—" if v is None else f"{v:.0f}"  # noqa: E731
    lines = [
        ("device", s.device if s else (h.device if h else "—")),
        ("model", h.model if h else "—"),
        ("RTF", f"{s.rtf:.3f} · load {getattr(s, 'load', 0.0):.0%}" if s else "—"),
        ("latency", f"p50 {ms(s.latency_p50_ms)} / p95 {ms(s.latency_p95_ms)} ms" if s else "—"),
        ("dropped", f"{s.dropped_audio_s:.1f} s audio" if s else "—"),
        ("clients", f"{s.clients} ws · queue {s.queue_depth}" if s else "—"),
    ]
    out = Text(no_wrap=True, overflow="ellipsis")
    for name, value in lines:
        out.append(f"{name:<8}", style="dim")
        out.append(f"{printable(str(value))}\n")
    feed = state.feed
    out.append(printable(feed.message or ("connected" if feed.connected else "disconnected")),
               style="green" if feed.connected else "bold yellow")
    if feed.dropped:
        noun = "message" if feed.dropped == 1 else "messages"
        out.append(f"\n{feed.dropped} malformed {noun} dropped", style="bold yellow")
        out.append(f" · last: {printable(feed.problem)}", style="yellow")  # cut in a narrow panel
    if state.unshown:
        out.append(f"\nover {len(state.streams)} streams: {state.unshown} events of others not shown", style="yellow")
    if state.error is not None:
        out.append(f"\n{printable(state.error.code)}: {printable(state.error.message)}", style="red")
    return out

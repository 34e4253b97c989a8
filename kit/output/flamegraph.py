"""A self-contained SVG flame graph from folded stacks, viewable in any browser.

Same layout as Brendan Gregg's flamegraph.pl: the root at the bottom, each
frame as wide as the share of the total its subtree holds, siblings sorted
by name, hover for the exact numbers (an SVG <title>). Frames narrower than
MIN_WIDTH pixels are merged away, as flamegraph.pl does, so the file stays
small; a click on a frame zooms to it (a few lines of inline script).
"""

import html
import zlib

from kit.output.units import duration

WIDTH = 1200
FRAME_H = 16
PAD_TOP = 40
PAD_BOTTOM = 30
PAD_SIDE = 10
MIN_WIDTH = 0.1
FONT = 12
CHAR_W = FONT * 0.59

_SCRIPT = """
<script type="text/ecmascript"><![CDATA[
function zoom(g) {
  var r = g.getElementsByTagName("rect")[0];
  var x0 = +r.getAttribute("data-x"), w0 = +r.getAttribute("data-w"), y0 = +r.getAttribute("y");
  var scale = (WIDTH - 2 * PAD) / w0, all = document.getElementsByClassName("f");
  for (var i = 0; i < all.length; i++) {
    var e = all[i], rr = e.getElementsByTagName("rect")[0], t = e.getElementsByTagName("text")[0];
    var x = +rr.getAttribute("data-x"), w = +rr.getAttribute("data-w"), y = +rr.getAttribute("y");
    var nx, nw, show;
    if (y > y0) { show = x <= x0 + 0.001 && x + w >= x0 + w0 - 0.001; nx = PAD; nw = WIDTH - 2 * PAD; }
    else { show = x >= x0 - 0.001 && x + w <= x0 + w0 + 0.001; nx = PAD + (x - x0) * scale; nw = w * scale; }
    e.style.display = show ? "" : "none";
    rr.setAttribute("x", nx); rr.setAttribute("width", nw); t.setAttribute("x", nx + 3);
    var full = t.getAttribute("data-name"), fit = Math.floor((nw - 6) / CHARW);
    t.textContent = fit < 3 ? "" : (full.length <= fit ? full : full.substring(0, fit - 2) + "..");
  }
}
function unzoom() { var a = document.getElementsByClassName("f"); if (a.length) zoom(a[0]); }
]]></script>
"""


class _Node:
    __slots__ = ("name", "value", "children", "kind")

    def __init__(self, name, kind):
        self.name, self.kind, self.value, self.children = name, kind, 0, {}


def _tree(folded):
    """folded: iterable of (frames root first, value, kinds) -> root node."""
    root = _Node("all", "root")
    for frames, value, kinds in folded:
        root.value += value
        node = root
        for f, k in zip(frames, kinds):
            child = node.children.get(f)
            if child is None:
                child = node.children[f] = _Node(f, k)
            child.value += value
            node = child
    return root


def _depth(node):
    return 1 + max((_depth(c) for c in node.children.values()), default=0)


def _color(name, kind):
    h = zlib.crc32(name.encode()) & 0xFFFF
    v1, v2 = (h & 0xFF) / 255.0, (h >> 8) / 255.0
    if kind == "kernel":   # aqua, so the kernel's part stands apart from the program's
        return f"rgb({int(70 + 60 * v1)},{int(175 + 45 * v2)},{int(195 + 40 * v1)})"
    if kind == "comm":
        return "rgb(160,160,220)"
    if kind == "root":
        return "rgb(200,200,200)"
    return f"rgb({int(220 + 35 * v1)},{int(80 + 120 * v2)},{int(50 * v1)})"  # user: red-yellow


def _fit(name, width):
    n = int((width - 6) / CHAR_W)
    if n < 3:
        return ""
    return name if len(name) <= n else name[: n - 2] + ".."


def render(rows, title="Off-CPU time flame graph", value="total_us", unit="us", by_host=False):
    """SVG text for stack rows (see kit.output.stacks): comm, user frames, kernel frames from the root up
    (with by_host, each row's host below its comm: kit merge --by-host)."""
    folded = []
    for r in rows:
        user = list(reversed(r.get("user_stack") or []))
        kern = list(reversed(r.get("kernel_stack") or []))
        host = [r.get("host") or "?"] if by_host else []
        frames = host + [r.get("comm") or "?"] + user + kern
        kinds = ["comm"] * len(host) + ["comm"] + ["user"] * len(user) + ["kernel"] * len(kern)
        v = int(r.get(value) or 0)
        if v > 0:
            folded.append((frames, v, kinds))
    root = _tree(folded)
    depth = _depth(root)
    height = PAD_TOP + depth * FRAME_H + PAD_BOTTOM
    total = root.value or 1
    scale = (WIDTH - 2 * PAD_SIDE) / total
    out = [f'<?xml version="1.0" standalone="no"?>\n'
           f'<svg version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
           f'xmlns="http://www.w3.org/2000/svg" font-family="Verdana, sans-serif" font-size="{FONT}">',
           _SCRIPT.replace("WIDTH", str(WIDTH)).replace("PAD", str(PAD_SIDE)).replace("CHARW", str(CHAR_W)),
           f'<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="rgb(248,248,240)"/>',
           f'<text x="{WIDTH / 2}" y="24" text-anchor="middle" font-size="17">{html.escape(title)}</text>',
           f'<text x="{PAD_SIDE}" y="{height - 10}" onclick="unzoom()" style="cursor:pointer">'
           f'{html.escape(f"total {duration(total, unit)}; click a frame to zoom, here to reset")}</text>']

    def emit(node, x, level):
        w = node.value * scale
        if w < MIN_WIDTH:
            return
        y = height - PAD_BOTTOM - (level + 1) * FRAME_H
        pct = 100.0 * node.value / total
        tip = f"{node.name} ({duration(node.value, unit)}, {pct:.2f}%)"
        name = html.escape(node.name)
        out.append(f'<g class="f" onclick="zoom(this)" style="cursor:pointer"><title>{html.escape(tip)}</title>'
                   f'<rect x="{x:.2f}" y="{y}" width="{w:.2f}" height="{FRAME_H - 1}" data-x="{x:.2f}" '
                   f'data-w="{w:.2f}" fill="{_color(node.name, node.kind)}" rx="2"/>'
                   f'<text x="{x + 3:.2f}" y="{y + FRAME_H - 4}" data-name="{name}">'
                   f'{html.escape(_fit(node.name, w))}</text></g>')
        cx = x
        for child in sorted(node.children.values(), key=lambda c: c.name):
            emit(child, cx, level + 1)
            cx += child.value * scale

    emit(root, PAD_SIDE, 0)
    out.append("</svg>\n")
    return "\n".join(out)


def write(path, rows, **kw):
    from kit.catalog.params import open_output  # kit runs privileged: never follow a symlink planted at path
    with open_output(path) as f:
        f.write(render(rows, **kw))

"""Small HTML and PNG builders for self-contained reports: images become base64 PNG data URIs (matplotlib's
``imsave`` / Agg ``savefig``; no pyplot and no global backend switch), tables are plain HTML.

* :func:`png_data_uri` -- matplotlib ``Figure`` (or raw PNG bytes) -> data URI;
* :func:`image_png` -- 2-D array -> PNG bytes with a fixed colour scale; :func:`image_data_uri` its data URI;
* :func:`colorbar_png` -- a colour bar strip;
* :func:`img_tag`, :func:`html_table`, :func:`format_mean_2std`, :func:`fmt` -- small HTML builders.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.figure import Figure
from matplotlib.image import imsave

IMAGE_CMAP = "gray"


def png_data_uri(fig_or_png: Union[Figure, bytes], dpi: int = 100) -> str:
    """``data:image/png;base64,...`` URI of a matplotlib Figure or of PNG bytes.

    A Figure is rendered with ``savefig(format="png")``, i.e. Agg; a bare
    ``matplotlib.figure.Figure()`` needs no pyplot and no display.
    """
    if isinstance(fig_or_png, (bytes, bytearray)):
        data = bytes(fig_or_png)
    else:
        buf = io.BytesIO()
        fig_or_png.savefig(buf, format="png", dpi=dpi)
        data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_png(array: np.ndarray, vmin: float, vmax: float, cmap: str = IMAGE_CMAP) -> bytes:
    """PNG bytes of a 2-D ``array`` (H, W), one pixel per element, fixed scale ``vmin..vmax``."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"image_png needs a 2-D array, got shape {array.shape}")
    buf = io.BytesIO()
    imsave(buf, array, vmin=vmin, vmax=vmax, cmap=cmap, format="png")
    return buf.getvalue()


def image_data_uri(array: np.ndarray, vmin: float, vmax: float, cmap: str = IMAGE_CMAP) -> str:
    """Data URI of :func:`image_png` (2-D array, fixed colour scale)."""
    return png_data_uri(image_png(array, vmin, vmax, cmap))


def img_tag(uri: str, alt: str = "", width: Optional[int] = None) -> str:
    """``<img>`` element for a data URI (alt text escaped)."""
    w = f' width="{int(width)}"' if width else ""
    return f'<img src="{uri}" alt="{html.escape(alt)}"{w}>'


def colorbar_png(vmin: float, vmax: float, cmap: str, width: int = 160, height: int = 10) -> bytes:
    """PNG bytes of a horizontal colour bar strip (``vmin`` left, ``vmax`` right)."""
    ramp = np.tile(np.linspace(vmin, vmax, width), (height, 1))
    return image_png(ramp, vmin, vmax, cmap)


def fmt(x: Any, spec: str) -> str:
    if x is None:
        return "&ndash;"
    try:
        xf = float(x)
    except (TypeError, ValueError):
        return html.escape(str(x))
    if math.isnan(xf):
        return "&ndash;"
    return format(xf, spec)


def format_mean_2std(stat: Optional[Mapping[str, Any]], spec: str) -> str:
    """``"mean ± 2std"`` from ``{"mean": m, "two_std": s}`` (2std omitted if unknown)."""
    if not stat or stat.get("mean") is None:
        return "&ndash;"
    m = fmt(stat["mean"], spec)
    s = stat.get("two_std")
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return m
    return f"{m} &plusmn; {fmt(s, spec)}"


def html_table(headers: Sequence[str], rows: Iterable[Sequence[str]], left: int = 0,
               row_classes: Optional[Sequence[str]] = None) -> str:
    """HTML table; cells are inserted as given (escape them first). ``left`` first columns left-aligned."""
    def cls(i: int) -> str:
        return ' class="l"' if i < left else ""

    out = ["<table>", "<tr>" + "".join(f"<th{cls(i)}>{h}</th>" for i, h in enumerate(headers)) + "</tr>"]
    for r, row in enumerate(rows):
        rc = row_classes[r] if row_classes else ""
        rc = f' class="{rc}"' if rc else ""
        out.append(f"<tr{rc}>" + "".join(f"<td{cls(i)}>{c}</td>" for i, c in enumerate(row)) + "</tr>")
    out.append("</table>")
    return "\n".join(out)

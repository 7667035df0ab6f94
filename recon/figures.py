"""PNG figures written next to reconstructions (matplotlib, Agg backend, atomically)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from mri_diffusion.atomic import atomic_write_bytes


def montage(volume: np.ndarray, cols: int | None = None) -> np.ndarray:
    """(S, H, W) -> one 2-D image with the slices tiled row by row."""
    S, H, W = volume.shape
    cols = cols or int(np.ceil(np.sqrt(S)))
    rows = int(np.ceil(S / cols))
    out = np.zeros((rows * H, cols * W), dtype=np.float32)
    for i in range(S):
        r, c = divmod(i, cols)
        out[r * H:(r + 1) * H, c * W:(c + 1) * W] = volume[i]
    return out


TITLE_PT = 8


def figure(image: np.ndarray, vmin: float = 0.0, vmax: float | None = None, cmap: str = "gray",
           title: str | None = None):
    """The matplotlib figure of :func:`save_png`: the image at one pixel per element (at least 2 inches) and a
    title wrapped to the figure width (long file and method names are wrapped, never clipped)."""
    import textwrap

    from matplotlib.figure import Figure

    vmax = float(np.max(image)) if vmax is None else vmax
    h, w = image.shape
    width = max(2.0, w / 100)
    per_line = max(8, int(width * 72 / (0.62 * TITLE_PT)))  # DejaVu Sans averages ~0.6 em per character
    lines = textwrap.wrap(title, per_line, break_long_words=True) if title else []
    head = (len(lines) * 1.3 * TITLE_PT + 6) / 72 if lines else 0.0
    fig = Figure(figsize=(width, max(2.0, h / 100) + head), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1 - head / fig.get_figheight()))
    ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.axis("off")
    if lines:
        fig.suptitle("\n".join(lines), fontsize=TITLE_PT, y=1 - 3 / 72 / fig.get_figheight(), va="top")
    return fig


def save_png(path: str | Path, image: np.ndarray, vmin: float = 0.0, vmax: float | None = None,
             cmap: str = "gray", title: str | None = None, overwrite: bool = True) -> Path:
    buf = io.BytesIO()
    figure(image, vmin, vmax, cmap, title).savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue(), overwrite=overwrite)
    return Path(path)

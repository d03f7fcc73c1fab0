"""Thumbnails of what the leak guard flagged: each training face beside the evaluation face it matched.

Example::

    write_examples(Path("runs/x/leak_guard.png"), train_side, eval_side, result.flagged[:8])
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from distill.data.leak_guard import Finding, GuardSide
from distill.io import atomic_write_bytes


def write_examples(path: Path, train: GuardSide, evald: GuardSide, findings: Sequence[Finding],
                   thumb: int = 96) -> str:
    """A PNG grid, one row per finding: training face | evaluation face | evidence and names (atomic write).
    Returns the file name (for the record)."""
    from PIL import Image, ImageDraw

    width, row = thumb * 2 + 360, thumb + 8
    canvas = Image.new("RGB", (width, row * max(1, len(findings))), "white")
    draw = ImageDraw.Draw(canvas)
    for k, f in enumerate(findings):
        y = k * row + 4
        for x, face in ((0, train.faces[f.train]), (thumb + 4, evald.faces[f.eval])):
            canvas.paste(Image.fromarray(np.asarray(face, dtype=np.uint8)).resize((thumb, thumb)), (x, y))
        text = (f"{f.evidence.replace('_', ' ')} (score {f.score:.3g})\ntrain: {_short(train.names[f.train])}\n"
                f"eval:  {_short(evald.names[f.eval])}")
        draw.multiline_text((2 * thumb + 14, y + 4), text, fill="black")
    import io

    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _short(name: str, limit: int = 52) -> str:
    return name if len(name) <= limit else "..." + name[-(limit - 3):]

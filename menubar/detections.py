"""Find Objects results: boxes drawn into a copy of the image, saved where the user can open it."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from menubar.storage import private_dir

KEEP = 20  # older drawings are pruned, like the history


def show_boxes(image: bytes, answer: str, folder: Path) -> tuple[str, Path | None]:
    """(a one-line summary, the saved PNG or None when the answer holds no box)."""
    from captioning.grounding import draw_boxes, parse_boxes
    from mlx_vlm_port.image import load_image

    boxes = parse_boxes(answer)
    if not boxes:
        return "No objects found.", None
    counts = Counter(b.label or "object" for b in boxes)
    summary = f"Found {len(boxes)}: " + ", ".join(f"{label} ×{n}" if n > 1 else label
                                                  for label, n in counts.most_common())
    drawn = draw_boxes(load_image(image), boxes)
    private_dir(folder)
    path = folder / time.strftime("objects-%Y%m%d-%H%M%S.png")
    n = 1
    while path.exists():  # two finds within a second
        n += 1
        path = path.with_name(time.strftime(f"objects-%Y%m%d-%H%M%S-{n}.png"))
    drawn.save(path)
    path.chmod(0o600)
    for old in sorted(folder.glob("objects-*.png"), key=lambda p: p.stat().st_mtime)[:-KEEP]:
        old.unlink(missing_ok=True)
    return summary, path

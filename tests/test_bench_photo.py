"""bench/photo.py's report: every section written from a run's results."""

import json

from bench import photo


def test_report_from_results(tmp_path):
    ms = {"ours": 400.0, "peer": 200.0}
    first = {"load_s": 0.2, "first_ms": 500.0, "warm_ms": 400.0, "first_over_warm": 1.25}
    res = {"command": "python -m bench.photo", "date": "today", "machine": "m", "versions": {"numpy": "2"},
           "load_start": "1", "load_end": "2", "sizes": ["12mp"], "repeats": 3,
           "stages": {"12mp": {"stages_ms": {"decode jpg": 120.0, "decode heic": None, "resize (tiles + thumbnail)": 300.0},
                               "errors": {"heic": "ValueError: x"}, "views": 7}},
           "ab": {"12mp": {"warm_ms": ms, "ratio": 2.0, "prompt_tokens": {"ours": 1802, "peer": 1802},
                           "raw_ms": {"ours": [400.0], "peer": [200.0]}}},
           "first": {"12mp": {"ours": first, "peer": first}},
           "memory": {"48mp": {"ours": {"image_mb": 140, "peak_growth_mb": 500, "below_earlier_peak": False,
                                        "traced_peak_mb": 280},
                               "peer": {"image_mb": 140, "peak_growth_mb": 160, "below_earlier_peak": True,
                                        "traced_peak_mb": 0}}}}
    out = tmp_path / "R.md"
    photo.write_report(res, out)
    text = out.read_text()
    assert "| 12mp (4032x3024) | 7 | 1802 / 1802 | 400 | 200 | 2.00 |" in text
    assert "| decode heic | failed |" in text and "ValueError: x" in text
    assert "| 48mp | 140 | mlx-vlm | ≤ 160 |" in text
    assert json.loads(out.with_suffix(".json").read_text())["sizes"] == ["12mp"]


def test_stages_child_runs_on_a_small_photo(tiny_path, tmp_path):
    """The step-by-step child measures every stage through the processor's own calls
    (it broke silently once when their signatures changed)."""
    import argparse

    import numpy as np
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (300, 400, 3), np.uint8)
    files = {"jpg": str(tmp_path / "p.jpg"), "png": str(tmp_path / "p.png")}
    Image.fromarray(rgb).save(files["jpg"], quality=90)
    Image.fromarray(rgb).save(files["png"])
    out = photo.child_stages(argparse.Namespace(model=str(tiny_path), files=json.dumps(files), repeats=1))
    stages = out["stages_ms"]
    for step in ("decode jpg", "decode png", "resize (tiles + thumbnail)", "normalise + patches",
                 "processor, decoded image (total)"):
        assert stages[step] is not None and stages[step] >= 0, step

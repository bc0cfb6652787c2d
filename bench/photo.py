"""`python -m bench.photo`: the way of a phone photo, step by step, and our image
processor against mlx-vlm's on the same photo.

Builds (no download) the tiny LFM2-VL checkpoint of the tests
(`tests/tiny_checkpoint.py`; its processor settings are LFM2.5-VL's: a 12 MP
photo becomes 2x3 tiles of 512 + a 576x416 thumbnail, 7 views) and seeded
synthetic photos saved as JPEG (EXIF orientation 6, as a phone writes a
portrait shot), PNG and HEIC, then runs fresh child processes:

  stages  ours, one process per size: file decode (JPEG, PNG, HEIC), EXIF
          orientation, RGB conversion, PIL -> array, resize (tiles +
          thumbnail), normalise + patches, prompt (placeholder + tokenizer),
          the whole processor on the decoded image, `load_image` of an
          already decoded image (what the processor does again with the CLI's
          image), and the time to first token from the JPEG file with the tiny
          model (its model time is small: what is left is the preprocessing);
  ab      both processors in one process, alternating ours/peer, on the
          decoded image (decode excluded): warm medians and their ratio;
  first   each side alone in a fresh process: the first call, then the warm
          median in that process (first / warm);
  memory  each side alone in a fresh process: peak RSS growth of one
          processor call on the decoded image (and, ours, numpy's traced peak).

Timings are medians over --repeats calls (wall clock; this machine's cores are
shared, so only figures of one run are compared). Writes bench/RESULTS-photo.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SIZES = {"1080p": (1920, 1080), "12mp": (4032, 3024), "24mp": (6000, 4000), "48mp": (8064, 6048)}
PROMPT = "<|startoftext|><|im_start|>user\n<image>Describe this image.<|im_end|>\n<|im_start|>assistant\n"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlx-vlm-port" / "bench" / "photo"


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times) * 1000


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


# ---------------------------------------------------------------- inputs

def build_inputs(cache: Path, sizes, heic=()) -> dict:
    """The checkpoint folder and, per size, the photo files (built once, cached)."""
    sys.path.insert(0, str(ROOT))
    import numpy as np
    from PIL import Image

    from tests.images import synthetic_array
    from tests.tiny_checkpoint import make_tiny_checkpoint

    cache.mkdir(parents=True, exist_ok=True)
    model = cache / "tiny-lfm2-vl"
    if not (model / "config.json").exists():
        make_tiny_checkpoint(model)
    files = {}
    for name in sizes:
        w, h = SIZES[name]
        paths = {fmt: cache / f"{name}.{fmt}" for fmt in ("jpg", "png") + ("heic",) * (name in heic)}
        files[name] = {k: str(v) for k, v in paths.items()}
        if all(p.exists() and p.stat().st_size for p in paths.values()):
            continue
        # A 2016x1512 synthetic photo (gradients, stripes, shapes, noise) tiled to the size:
        # structure everywhere, cheap to make at 48 MP.
        base = synthetic_array(min(w, 2016), min(h, 1512), seed=7)
        reps = (-(-h // base.shape[0]), -(-w // base.shape[1]), 1)
        rgb = np.ascontiguousarray(np.tile(base, reps)[:h, :w])
        upright = Image.fromarray(rgb)
        # Stored as the sensor wrote it (rotated), with orientation 6 saying how to show it.
        exif = Image.Exif()
        exif[0x0112] = 6
        upright.transpose(Image.Transpose.ROTATE_90).save(paths["jpg"], quality=90, exif=exif.tobytes())
        upright.save(paths["png"], compress_level=1)
        if "heic" in paths and _heif():  # (HEIC encoding is slow: only for the timed sizes)
            tmp = paths["heic"].with_suffix(".tmp")
            upright.save(tmp, format="HEIF", quality=90)
            tmp.replace(paths["heic"])
    return {"model": str(model), "files": files}


def _heif() -> bool:
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


# ---------------------------------------------------------------- children

def _ours(model: str):
    import mlx_vlm_port  # noqa: F401  (the BLAS before MLX)
    from mlx_vlm_port.processor import Processor

    return Processor.from_pretrained(model)


def _peer(model: str):
    import mlx_vlm.models.lfm2_vl.processing_lfm2_vl  # noqa: F401  (its numpy processor)
    from mlx_vlm.utils import load_processor

    return load_processor(Path(model))


def _call(side: str, processor, image):
    if side == "ours":
        return processor(PROMPT, [image], return_numpy=True)
    return processor(text=PROMPT, images=[image], return_tensors="np")


def _decoded(path: str):
    from mlx_vlm_port.image import load_image

    return load_image(path)


def child_stages(args) -> dict:
    import numpy as np
    from PIL import Image, ImageOps

    from mlx_vlm_port.image import load_image, to_rgb

    _heif()
    processor = _ours(args.model)
    ip, r = processor.image_processor, args.repeats
    files = json.loads(args.files)
    out = {}

    def opened(path):
        im = Image.open(path)
        im.load()
        return im

    errors = {}
    for fmt in ("jpg", "png", "heic"):
        if fmt in files:
            try:
                out[f"decode {fmt}"] = _median_ms(lambda: opened(files[fmt]), r)
            except Exception as e:  # e.g. a HEIC this libheif cannot decode: say so, go on
                out[f"decode {fmt}"], errors[fmt] = None, f"{type(e).__name__}: {e}"
    raw = opened(files["jpg"])
    out["EXIF orientation (rotate)"] = _median_ms(lambda: ImageOps.exif_transpose(raw), r)
    upright = ImageOps.exif_transpose(raw)
    out["RGB conversion (already RGB)"] = _median_ms(lambda: to_rgb(upright), r)
    rgba = upright.convert("RGBA")
    out["RGB conversion (from RGBA: composite onto white)"] = _median_ms(lambda: to_rgb(rgba), r)
    del rgba
    out["load_image of the decoded image (processor)"] = _median_ms(lambda: load_image(upright), r)
    out["PIL -> numpy array"] = _median_ms(lambda: np.asarray(upright), r)
    array = np.asarray(upright)
    c = ip.config
    from mlx_vlm_port.options import ImageOptions

    opts = ip.resolved(ImageOptions())  # the checkpoint's settings
    out["resize (tiles + thumbnail)"] = _median_ms(lambda: ip.views(array, opts), r)
    views, grid, size = ip.views(array, opts)
    max_patches = max(c.max_image_tokens * c.downsample_factor**2, (c.tile_size // c.encoder_patch_size) ** 2)
    out["normalise + patches"] = _median_ms(lambda: [ip.patchify(v, max_patches) for v in views], r)
    out["prompt (placeholder + tokenizer)"] = _median_ms(
        lambda: processor.tokenizer.encode(PROMPT.replace("<image>", ip.placeholder(grid, size, c.use_thumbnail)),
                                           add_special_tokens=False), r)
    out["processor, decoded image (total)"] = _median_ms(lambda: _call("ours", processor, upright), r)

    from mlx_vlm_port import load, stream_generate

    model, processor = load(args.model)

    def first_token():
        for _ in stream_generate(model, processor, PROMPT, [files["jpg"]], max_tokens=1, temperature=0.0):
            break

    first_token()
    out["time to first token from the JPEG file (tiny model)"] = _median_ms(first_token, max(1, r // 2))
    return {"stages_ms": out, "errors": errors, "views": len(views), "grid": list(grid), "thumbnail": list(size),
            "size": list(upright.size)}


def child_ab(args) -> dict:
    image = _decoded(args.image)
    sides = {"ours": _ours(args.model), "peer": _peer(args.model)}
    tokens = {k: int(_call(k, p, image)["input_ids"].shape[1]) for k, p in sides.items()}
    times = {k: [] for k in sides}
    for _ in range(args.repeats):
        for k, p in sides.items():
            tic = time.perf_counter()
            _call(k, p, image)
            times[k].append(time.perf_counter() - tic)
    med = {k: statistics.median(v) * 1000 for k, v in times.items()}
    return {"warm_ms": med, "ratio": med["ours"] / med["peer"], "prompt_tokens": tokens,
            "raw_ms": {k: [round(t * 1000, 1) for t in v] for k, v in times.items()}}


def child_first(args) -> dict:
    tic = time.perf_counter()
    processor = (_ours if args.side == "ours" else _peer)(args.model)
    load_s = time.perf_counter() - tic
    image = _decoded(args.image)
    tic = time.perf_counter()
    _call(args.side, processor, image)
    first = (time.perf_counter() - tic) * 1000
    warm = _median_ms(lambda: _call(args.side, processor, image), args.repeats)
    return {"load_s": load_s, "first_ms": first, "warm_ms": warm, "first_over_warm": first / warm}


def child_memory(args) -> dict:
    import tracemalloc

    processor = (_ours if args.side == "ours" else _peer)(args.model)
    image = _decoded(args.image)
    _call(args.side, processor, image.resize((640, 480)))  # imports and pools warmed on a small image
    old_peak, before = _peak_rss_mb(), _rss_mb()
    tracemalloc.start()
    _call(args.side, processor, image)
    traced = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = _peak_rss_mb()
    # Growth of the peak over the RSS just before the call; if the call stayed below
    # the process's earlier peak (the decode's), that bound is all that is known.
    return {"image_mb": image.width * image.height * 3 / 2**20, "rss_before_mb": before,
            "peak_growth_mb": peak - before, "below_earlier_peak": peak <= old_peak,
            "traced_peak_mb": traced}


CHILDREN = {"stages": child_stages, "ab": child_ab, "first": child_first, "memory": child_memory}


def run_child(kind: str, model: str, timeout: float, **kw) -> dict:
    cmd = [sys.executable, "-m", "bench.photo", "--child", kind, "--model", model]
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    for line in proc.stdout.splitlines():
        if line.startswith("PHOTO_JSON "):
            return json.loads(line[len("PHOTO_JSON "):])
    raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")


# ---------------------------------------------------------------- report

def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "pillow", "pillow-heif", "mlx", "mlx-vlm", "transformers", "tokenizers"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    return out


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores"


def load_avg() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def write_report(res: dict, path: Path) -> None:
    lines = [
        "# Photo preprocessing: ours against mlx-vlm",
        "",
        f"Written by `{res['command']}` on {res['date']}.",
        "",
        f"- Machine: {res['machine']}; load average (1/5/15 min) {res['load_start']} at the start, "
        f"{res['load_end']} at the end (the cores are shared: compare figures of one run only).",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()) + ".",
        f"- Checkpoint: the tests' tiny LFM2-VL (`tests/tiny_checkpoint.py`), processor at LFM2.5-VL's "
        f"defaults; prompt `{PROMPT!r}`.",
        f"- Photos: seeded synthetic, {', '.join(f'{k} = {SIZES[k][0]}x{SIZES[k][1]}' for k in res['sizes'])}; "
        "JPEG quality 90 stored rotated with EXIF orientation 6, PNG, HEIC quality 90.",
        f"- Medians of {res['repeats']} calls (wall clock).",
        "",
        "## Warm preprocessing, both processors in one process (decode excluded)",
        "",
        "`processor(prompt, [image])` on the decoded RGB image, ours and mlx-vlm's alternating.",
        "",
        "| photo | views | prompt tokens (ours / peer) | ours (ms) | mlx-vlm (ms) | ours / mlx-vlm |",
        "|---|---|---|---|---|---|",
    ]
    for name in res["sizes"]:
        ab, st = res["ab"][name], res["stages"].get(name, {})
        lines.append(f"| {name} ({SIZES[name][0]}x{SIZES[name][1]}) | {st.get('views', '')} | "
                     f"{ab['prompt_tokens']['ours']} / {ab['prompt_tokens']['peer']} | {ab['warm_ms']['ours']:.0f} | "
                     f"{ab['warm_ms']['peer']:.0f} | {ab['ratio']:.2f} |")
    lines += ["", "## First call in a fresh process", "",
              "| photo | side | processor load (s) | first call (ms) | warm, same process (ms) | first / warm |",
              "|---|---|---|---|---|---|"]
    for name in res["sizes"]:
        for side in ("ours", "peer"):
            f = res["first"][name][side]
            lines.append(f"| {name} | {'ours' if side == 'ours' else 'mlx-vlm'} | {f['load_s']:.2f} | "
                         f"{f['first_ms']:.0f} | {f['warm_ms']:.0f} | {f['first_over_warm']:.2f} |")
    lines += ["", "## The way of a photo, step by step (ours, warm)", ""]
    names = [n for n in res["sizes"] if n in res["stages"]]
    lines += ["| step | " + " | ".join(f"{n} (ms)" for n in names) + " |",
              "|---|" + "---|" * len(names)]
    steps = list(dict.fromkeys(k for n in names for k in res["stages"][n]["stages_ms"]))
    cell = lambda v: "failed" if v is None else f"{v:.1f}"  # noqa: E731
    for step in steps:
        lines.append(f"| {step} | " + " | ".join(cell(res["stages"][n]["stages_ms"].get(step)) for n in names) + " |")
    for n in names:
        for fmt, err in res["stages"][n].get("errors", {}).items():
            lines.append(f"\n{n} {fmt}: {err}")
    lines += ["", "## Peak memory of one processor call (fresh process, decoded image given)", "",
              "| photo | image (MB, RGB) | side | peak RSS growth (MB) | numpy traced peak (MB) |",
              "|---|---|---|---|---|"]
    for name, sides in res["memory"].items():
        for side, m in sides.items():
            traced = f"{m['traced_peak_mb']:.0f}" if side == "ours" else "(PIL memory: not traced)"
            bound = "≤ " if m["below_earlier_peak"] else ""
            lines.append(f"| {name} | {m['image_mb']:.0f} | {'ours' if side == 'ours' else 'mlx-vlm'} | "
                         f"{bound}{m['peak_growth_mb']:.0f} | {traced} |")
    lines += ["", "## Raw warm times (ms, in call order)", ""]
    for name in res["sizes"]:
        for side, v in res["ab"][name]["raw_ms"].items():
            lines.append(f"- {name} {side}: {v}")
    path.write_text("\n".join(lines) + "\n")
    path.with_suffix(".json").write_text(json.dumps(res, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.photo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1080p,12mp,24mp", help="of " + ", ".join(SIZES) + " (default 1080p,12mp,24mp)")
    ap.add_argument("--memory-sizes", default="12mp,48mp", help="sizes whose peak memory is measured")
    ap.add_argument("--repeats", type=int, default=7, help="calls per median (default 7)")
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"inputs are built here (default {DEFAULT_CACHE})")
    ap.add_argument("--out", type=Path, default=HERE / "RESULTS-photo.md")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--image", help=argparse.SUPPRESS)
    ap.add_argument("--files", help=argparse.SUPPRESS)
    ap.add_argument("--side", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        sys.path.insert(0, str(ROOT))
        print("PHOTO_JSON " + json.dumps(CHILDREN[args.child](args)), flush=True)
        return 0
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    mem_sizes = [s.strip() for s in args.memory_sizes.split(",") if s.strip()]
    res = {"command": "python -m bench.photo " + " ".join(argv if argv is not None else sys.argv[1:]),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "versions": versions(), "load_start": load_avg(), "sizes": sizes, "repeats": args.repeats,
           "stages": {}, "ab": {}, "first": {}, "memory": {}}
    inputs = build_inputs(args.cache, sorted(set(sizes) | set(mem_sizes)), heic=sizes)
    model, files = inputs["model"], inputs["files"]
    for name in sizes:
        print(f"[{name}] stages", flush=True)
        res["stages"][name] = run_child("stages", model, args.timeout, files=json.dumps(files[name]),
                                        repeats=args.repeats)
        print(f"[{name}] ours vs mlx-vlm, one process", flush=True)
        res["ab"][name] = run_child("ab", model, args.timeout, image=files[name]["jpg"], repeats=args.repeats)
        print(f"[{name}] first calls", flush=True)
        res["first"][name] = {side: run_child("first", model, args.timeout, image=files[name]["jpg"], side=side,
                                              repeats=args.repeats) for side in ("ours", "peer")}
    for name in mem_sizes:
        print(f"[{name}] memory", flush=True)
        res["memory"][name] = {side: run_child("memory", model, args.timeout, image=files[name]["png"], side=side)
                               for side in ("ours", "peer")}
    res["load_end"] = load_avg()
    write_report(res, args.out)
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())

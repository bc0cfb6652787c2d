"""`python -m app.caption`: caption images from files, stdin, the clipboard or the screen.

Start-up matters (people run this from Shortcuts with a key press), so this
module imports only the standard library and the captioning core's light
modules (and the options model, plain Python); MLX and the
model load only once an image is known to be good and no running service can
do the job. Every failure is one `caption: error: ...` line and an exit code.
"""

from __future__ import annotations

import argparse
import os
import sys

from captioning.engine import Engine
from captioning.errors import Exit, Failure
from captioning.job import DEFAULT_MODEL, DEFAULT_PROMPT, DETAILS, DETECT_PROMPT, Job
from mlx_vlm_port.options import ImageOptions, SamplingOptions, specs

from captioning import capture
from . import distributed, metadata
from .batch import JsonlLog, Progress, Source, expand
from .output import Output, say

DRAW_FORMATS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}

EPILOG = f"""\
examples:
  python -m app.caption photo.jpg                    caption one photo
  python -m app.caption - < photo.jpg                image bytes on stdin (Shortcuts)
  python -m app.caption --clipboard --copy           caption the copied image, copy the caption
  python -m app.caption --region                     drag a screen region, caption it
  python -m app.caption -p "What text is shown?" scan.png
  python -m app.caption --detect "cat" --draw boxes.png cat.jpg
  python -m app.caption --json-schema tags.json photo.jpg    JSON held to a schema
  python -m app.caption ~/Pictures/trip --jsonl trip.jsonl    resumable batch
  python -m app.caption "shots/**/*.png" --json --no-split     JSON lines, fastest
  python -m app.caption ~/Pictures/trip --write-metadata       alt text, caption, keywords into the photos

model: --model, else $MLX_VLM_PORT_MODEL, else {DEFAULT_MODEL}
  (a hub id or a local folder). If the menubar app is running, its loaded model
  does the work (no load time) unless --no-service.
exit codes: 0 ok, 1 other failure (unwritable --jsonl or --draw, a --json-schema answer
  cut off by --max-tokens, broken pipe, a bug),
  2 usage, 3 bad or missing image, 4 model cannot be loaded, 5 capture failed or not
  permitted, 130 interrupted.
"""
# The options a user sets from the command line (the rest keep their defaults).
SAMPLING_FLAGS = {"max_tokens": "N", "temperature": "T", "top_p": "P", "min_p": "P", "repetition_penalty": "R",
                  "seed": "N"}
IMAGE_FLAGS = ("max_image_tokens", "longest_edge")


class UsageError(Exception):
    pass


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise UsageError(message)


def _flag_type(spec):
    def parse(text: str):
        try:
            return spec.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return value


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> Parser:
    p = Parser(prog="python -m app.caption", description="Caption images on this machine with LFM2-VL or SmolVLM (MLX).",
               epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input")
    src.add_argument("images", nargs="*", metavar="IMAGE",
                     help="image files, folders or globs (quoted, ** recurses); - reads image bytes from stdin")
    src.add_argument("--clipboard", action="store_true", help="caption the image on the clipboard")
    grab = src.add_mutually_exclusive_group()
    grab.add_argument("--screen", action="store_true", help="caption a screenshot of the whole screen")
    grab.add_argument("--region", action="store_true", help="drag a screen region and caption it")
    gen = p.add_argument_group("generation")
    gen.add_argument("-p", "--prompt", help=f"question to ask (default: {DEFAULT_PROMPT!r})")
    gen.add_argument("--system", help="system prompt")
    gen.add_argument("-m", "--model", help="hub id or checkpoint folder (default: see below)")
    defaults, sampling = SamplingOptions(), specs(SamplingOptions)
    for name, metavar in SAMPLING_FLAGS.items():
        default = getattr(defaults, name)
        gen.add_argument(_flag(name), type=_flag_type(sampling[name]), default=default, metavar=metavar,
                         help=sampling[name].help + ("" if default is None else f" (default: {default:g})"))
    gen.add_argument("--detail", choices=[d.lower() for d in DETAILS], type=str.lower,
                     help="how much of the image the model sees, for any model (default: the model's own)")
    image = specs(ImageOptions)
    gen.add_argument("--max-image-tokens", type=_flag_type(image["max_image_tokens"]), metavar="N",
                     help="LFM2-VL: at most N tokens for the image, as one view (smaller = faster)")
    gen.add_argument("--longest-edge", type=_flag_type(image["longest_edge"]), metavar="PX",
                     help=image["longest_edge"].help + " (smaller = faster)")
    gen.add_argument("--no-split", action="store_true", help="one view of the image, no tiles (fastest)")
    gen.add_argument("--json-schema", metavar="FILE",
                     help="answer with JSON valid against the JSON Schema in FILE ({\"type\": \"object\"}: any object)")
    gen.add_argument("--batch-size", type=_positive, metavar="N",
                     help="caption up to N images of a folder together (faster per image; default: as many "
                          "as memory allows, at most 16; 1: one at a time, streamed)")
    det = p.add_argument_group("grounding")
    det.add_argument("--detect", metavar="QUERY",
                     help="find QUERY and print its boxes (label: x1 y1 x2 y2, 0..1; --json: JSON)")
    det.add_argument("--draw", metavar="OUT", help="with --detect: write the image with the boxes drawn")
    out = p.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="one JSON object per image on stdout")
    out.add_argument("--jsonl", metavar="OUT", help="append one JSON line per image to OUT; skip images in it")
    out.add_argument("--copy", action="store_true", help="also put the result on the clipboard")
    out.add_argument("--no-service", action="store_true", help="never use the menubar app's service")
    out.add_argument("--debug", action="store_true", help="show tracebacks")
    metadata.add_flags(p)
    return p


def check(args: argparse.Namespace) -> None:
    if args.detect is not None and args.prompt is not None:
        raise UsageError("--detect and --prompt cannot be combined (--detect writes its own prompt)")
    if args.detect is not None and not args.detect.strip():
        raise UsageError("--detect needs a query, e.g. --detect 'dog'")
    if args.detect is not None and args.json_schema is not None:
        raise UsageError("--detect and --json-schema cannot be combined (--detect holds the answer to its own schema)")
    if args.draw and args.detect is None:
        raise UsageError("--draw needs --detect QUERY")
    if args.draw and os.path.splitext(args.draw)[1].lower() not in DRAW_FORMATS:
        raise UsageError(f"--draw {args.draw}: use a .png, .jpg or .webp file name")
    metadata.check_flags(args, UsageError)


def read_stdin() -> list[Source]:
    if sys.stdin is None or sys.stdin.isatty():
        raise UsageError("'-' reads an image from stdin, but stdin is a terminal (pipe an image in)")
    data = sys.stdin.buffer.read()
    if not data:
        return [Source("-", error="stdin is empty (no image data)", code=Exit.IMAGE)]
    # Shortcuts may pass file paths as text rather than the file's bytes: take those files.
    if len(data) < 65536 and b"\0" not in data:
        try:
            lines = [line.strip() for line in data.decode("utf-8").splitlines() if line.strip()]
        except UnicodeDecodeError:
            lines = []
        if lines and all(os.path.isfile(line) for line in lines):
            return expand(lines)
    return [Source("-", data=data)]


def grab(name: str, what: str, take) -> Source:
    """Capture now (before any model load, so the screenshot is of *now*)."""
    try:
        return Source(name, data=take())
    except capture.NoImageOnClipboard as e:
        return Source(name, error=str(e), code=Exit.IMAGE)
    except capture.CaptureError as e:
        return Source(name, error=f"cannot {what}: {e}", code=Exit.CAPTURE)


def gather(args: argparse.Namespace) -> list[Source]:
    sources: list[Source] = []
    if args.screen or args.region:
        sources.append(grab("screen", "capture the screen", lambda: capture.grab_screen(region=args.region)))
    if args.clipboard:
        sources.append(grab("clipboard", "read the clipboard", capture.clipboard_image_bytes))
    stdin_read = False
    for source in expand(args.images):
        if source.name == "-" and source.path is None and source.data is None and source.error is None:
            if not stdin_read:
                sources += read_stdin()
                stdin_read = True
        else:
            sources.append(source)
    if not sources:
        if sys.stdin is None or sys.stdin.isatty():
            raise UsageError("no image given: name image files or folders, '-' for stdin, --clipboard or --screen")
        sources = read_stdin()  # no arguments but piped input: the obvious thing
    return sources


def read_schema(path: str) -> dict:
    """The JSON Schema in `path`, checked by the grammar engine before any model loads."""
    import json

    try:
        with open(path, "rb") as f:
            schema = json.loads(f.read())
    except FileNotFoundError:
        raise UsageError(f"--json-schema {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"--json-schema {path}: cannot read ({e.strerror or e})") from None
    except ValueError as e:  # JSONDecodeError (line and column) or undecodable bytes
        raise UsageError(f"--json-schema {path}: not JSON ({e})") from None
    if not isinstance(schema, dict):
        raise UsageError(f"--json-schema {path}: must hold a JSON Schema object, e.g. {{\"type\": \"object\"}}")
    from mlx_vlm_port.constrain import check_schema

    try:
        check_schema(schema)
    except ValueError as e:
        raise UsageError(f"--json-schema {path}: {e}") from None
    return schema


def make_job(args: argparse.Namespace) -> Job:
    prompt = DETECT_PROMPT.format(query=args.detect.strip()) if args.detect is not None else (
        args.prompt or DEFAULT_PROMPT)
    if args.write_metadata:
        from captioning.metadata import prompt as metadata_prompt

        prompt = metadata_prompt(args.language.strip())
    sampling = SamplingOptions(**{name: getattr(args, name) for name in SAMPLING_FLAGS})
    # --max-image-tokens N means "at most N tokens for the image": one view. (The library's
    # option is the reference's per-view budget, past which a large image is cut into tiles.)
    one_view = args.no_split or args.max_image_tokens is not None
    image = ImageOptions(**{name: getattr(args, name) for name in IMAGE_FLAGS},
                         do_image_splitting=False if one_view else None)
    if args.detect is not None:
        from captioning.grounding import DETECT_SCHEMA

        schema = DETECT_SCHEMA
    elif args.write_metadata:
        from captioning.metadata import SCHEMA

        schema = SCHEMA
    else:
        schema = read_schema(args.json_schema) if args.json_schema is not None else None
    return Job(prompt, args.system, sampling, image, args.detail.capitalize() if args.detail else None, schema)


def run(args: argparse.Namespace) -> int:
    check(args)
    job = make_job(args)  # a bad --json-schema fails before any capture or model load
    sources = gather(args)
    if args.draw and len(sources) != 1:
        raise UsageError(f"--draw writes one image, but {len(sources)} inputs were given")
    everything, ranks = sources, distributed.group()  # launched by mlx.launch: this rank's share, its own part
    if ranks is not None:
        if not args.jsonl:
            raise UsageError("under mlx.launch, give --jsonl OUT (each rank writes a part, rank 0 merges them)")
        merged = JsonlLog.records(args.jsonl)
        sources = [s for s in distributed.share(sources, ranks.rank(), ranks.size()) if s.key not in merged]
    jsonl = distributed.part_path(args.jsonl, ranks.rank(), ranks.size()) if ranks is not None else args.jsonl
    try:
        log = JsonlLog(jsonl) if jsonl else None
    except OSError as e:
        raise Failure(Exit.FAILED, f"--jsonl {jsonl}: cannot open ({e.strerror or e})") from None
    if log:
        done = [s for s in sources if s in log]
        if done:
            say(f"skipping {len(done)} of {len(sources)} images already in {args.jsonl}", error=False)
        sources = [s for s in sources if s not in log]
    engine = Engine(args.model, use_service=not args.no_service)
    progress = Progress(len(sources))
    out = Output(args, multi=len(sources) > 1, progress=progress)
    writer = metadata.MetadataWriter(args) if args.write_metadata else None
    worst = Exit.OK
    # several images and this process's model: decode them together
    # (not for answers held to a schema or written into photos: the batch path does neither)
    batched = (len(sources) > 1 and args.detect is None and job.json_schema is None and not args.write_metadata
               and args.batch_size != 1 and engine.local())
    try:
        if batched:
            from .batched import caption_batched

            worst = caption_batched(engine.local().captioner, sources, job, args.batch_size, out, log, progress)
        for source in sources if not batched else ():
            progress.step(source.label)
            try:
                if source.error:
                    raise Failure(source.code, source.error)
                if writer and not writer.wanted(source):
                    progress.advance()
                    continue
                record = out.caption(engine, source, job, finish=writer.finish if writer else None)
                if log:
                    log.write({**record, "path": source.key})
            except Failure as e:
                if e.code == Exit.MODEL:
                    raise  # no model, no point in going on
                out.discard()
                say(e.message)
                worst = max(worst, e.code)
            progress.advance()
    finally:
        progress.clear()
        if log:
            log.close()
    if ranks is not None:
        worst = distributed.finish(ranks, args.jsonl, everything, worst)
    if args.copy and out.copied_text().strip():
        try:
            capture.copy_text(out.copied_text().strip())
        except capture.CaptureError as e:
            say(f"--copy: {e}")
            worst = max(worst, Exit.CAPTURE)
    return int(worst)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    if not debug:
        import warnings

        warnings.simplefilter("ignore")  # library chatter is not for Shortcuts' error sheet
    try:
        return run(build_parser().parse_args(argv))
    except UsageError as e:
        say(f"{e} (see --help)")
        return Exit.USAGE
    except Failure as e:
        if debug:
            import traceback

            traceback.print_exc()
        say(e.message)
        return e.code
    except KeyboardInterrupt:
        return Exit.INTERRUPTED
    except BrokenPipeError:  # `| head` closed the pipe: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError:
            pass
        return Exit.FAILED
    except Exception as e:  # a bug: still one line unless --debug
        if debug:
            import traceback

            traceback.print_exc()
        say(f"{type(e).__name__}: {e}" + ("" if debug else " (run with --debug for the traceback)"))
        return Exit.FAILED


if __name__ == "__main__":
    sys.exit(main())

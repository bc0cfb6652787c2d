"""`python -m menubar [--headless] [--model M]` (absolute imports: py2app runs this file as a script)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m menubar",
        description="The captioning menubar app (macOS), or with --headless only its local caption service.")
    parser.add_argument("--headless", action="store_true",
                        help="run only the local caption service the CLI uses (any platform); Ctrl-C stops it")
    parser.add_argument("--model", help="checkpoint folder or hub id (default: the app's saved choice; "
                                        "headless: $MLX_VLM_PORT_MODEL or the 8-bit model)")
    parser.add_argument("--http", nargs="?", const="127.0.0.1:8089", metavar="HOST:PORT",
                        help="headless: also serve the OpenAI-compatible local API (default 127.0.0.1:8089; "
                             "needs the 'api' extra)")
    parser.add_argument("--http-public", action="store_true",
                        help="headless: allow --http on an address that is not loopback (the API key is still "
                             "required)")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="headless: a web origin (https://example.com) whose pages may call the API; "
                             "repeatable")
    parser.add_argument("--max-queue", type=int, default=64, metavar="N",
                        help="headless: requests allowed to wait for the model (more are refused as busy)")
    if argv is None:  # Finder once passed -psn_0_12345 to apps; ignore it if it ever appears
        argv = [a for a in sys.argv[1:] if not a.startswith("-psn_")]
    args = parser.parse_args(argv)
    if args.max_queue < 1:
        parser.error("--max-queue must be at least 1")
    if args.headless:
        from menubar.headless import run as run_headless

        return run_headless(args.model, http=args.http, public=args.http_public,
                            origins=tuple(args.allow_origin), max_queue=args.max_queue)
    if sys.platform != "darwin":
        print("menubar: the menubar app runs on macOS only; `python -m menubar --headless` runs the "
              "caption service here", file=sys.stderr)
        return 1
    try:
        import rumps  # noqa: F401
    except ImportError:
        print("menubar: rumps is not installed; `pip install '.[mac]'` adds it (and pyobjc)", file=sys.stderr)
        return 1
    from menubar.rumps_app import run

    return run(args.model)


if __name__ == "__main__":
    sys.exit(main())

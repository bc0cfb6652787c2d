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
    if argv is None:  # Finder once passed -psn_0_12345 to apps; ignore it if it ever appears
        argv = [a for a in sys.argv[1:] if not a.startswith("-psn_")]
    args = parser.parse_args(argv)
    if args.headless:
        from menubar.headless import run as run_headless

        return run_headless(args.model)
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

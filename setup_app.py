"""py2app recipe for the menubar app (macOS):

    pip install '.[mac]' py2app
    python setup_app.py py2app          # → dist/MLX Caption.app
    python setup_app.py py2app -A       # alias build for development (links to this tree)

Importing this file does nothing; the build runs only as a script, so tests can
check the recipe on any platform.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from menubar import APP_NAME, BUNDLE_ID

VERSION = "0.1.0"
ENTRY = "menubar/__main__.py"  # absolute imports only, as py2app runs it as a plain script


def mlx_metallib() -> list[str]:
    """MLX's Metal kernels. MLX looks for mlx.metallib next to libmlx.dylib, which
    packages=['mlx'] copies as is; also listing the file under resources keeps the
    kernels in the bundle should py2app ever zip the package."""
    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0])
    return [str(p) for p in sorted(root.glob("**/mlx.metallib"))]


PLIST = {
    "CFBundleName": APP_NAME,
    "CFBundleDisplayName": APP_NAME,
    "CFBundleIdentifier": BUNDLE_ID,  # also what makes rumps.notification work (no osascript fallback)
    "CFBundleShortVersionString": VERSION,
    "CFBundleVersion": VERSION,
    "LSUIElement": True,  # a menubar app: no Dock icon, no app menu
    "LSMinimumSystemVersion": "14.0",  # current MLX wheels need macOS 14+
    "NSHumanReadableCopyright": "Apache-2.0",
    # screencapture asks for Screen Recording on the app's behalf; say why.
    "NSScreenCaptureUsageDescription": "To caption the screen region you select.",
}


def options() -> dict:
    return {
        "argv_emulation": False,  # an LSUIElement app has no documents; the Carbon shim also breaks on arm64
        "packages": ["mlx", "mlx_vlm_port", "app", "menubar", "rumps", "PIL", "numpy", "tokenizers",
                     "jinja2", "huggingface_hub"],
        "resources": mlx_metallib(),
        "plist": PLIST,
        "excludes": ["tkinter", "torch", "transformers", "mlx_vlm", "pytest"],
    }


def main() -> None:
    from setuptools import setup

    setup(name=APP_NAME, version=VERSION, app=[ENTRY], options={"py2app": options()},
          setup_requires=["py2app"])


if __name__ == "__main__":
    main()

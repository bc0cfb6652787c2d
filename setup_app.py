"""py2app recipe for the menubar app (macOS):

    pip install -e '.[mac]' py2app
    python setup_app.py py2app          # → dist/MLX Caption.app
    python setup_app.py py2app -A       # alias build for development (links to this tree)

Importing this file does nothing; the build runs only as a script, so tests can
check the recipe on any platform.

Two things py2app 0.28 would otherwise trip over:
- Run next to pyproject.toml, setuptools copies `[project].dependencies` into
  `install_requires`, which py2app refuses ("install_requires is no longer
  supported"). `AppDistribution` drops them: the bundle carries its packages itself.
- `mlx` is a namespace package (no `__init__.py`), which py2app's `packages`
  option cannot locate. MLX also expects its own layout: `core` loads
  `@rpath/libmlx.dylib` from `mlx/lib/` (rpath `@loader_path/lib`), and
  libmlx looks for `mlx.metallib` next to itself (or in a `Resources/` folder
  beside it), not in the bundle's Contents/Resources. So the `mlx` folder is
  copied whole, unchanged, into the bundle's `lib/pythonX.Y/` (where py2app puts
  the `packages` it copies, on the bundle's sys.path), and kept away from
  py2app's module finder.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from menubar import APP_NAME, BUNDLE_ID

VERSION = "0.1.0"
ENTRY = "menubar/__main__.py"  # absolute imports only, as py2app runs it as a plain script

# Packages copied whole: ours, and those with data files or extension modules next to their code.
PACKAGES = ["mlx_vlm_port", "captioning", "app", "menubar", "rumps", "PIL", "pillow_heif", "numpy", "tokenizers",
            "jinja2", "huggingface_hub", "llguidance",
            "pyexiv2"]  # pyexiv2: Write Caption into Photos (its own libexiv2 inside)
INCLUDES: list[str] = []  # everything is found from the entry script and PACKAGES
# mlx travels as a folder (above); the rest are optional imports of our dependencies that the app never uses.
EXCLUDES = ["mlx", "tkinter", "torch", "transformers", "mlx_vlm", "pytest", "hypothesis", "safetensors", "pandas",
            "scipy", "pyarrow", "matplotlib", "IPython", "pydantic"]
# Only on macOS (pyobjc, and rumps which needs it); every other name above resolves on any platform.
MAC_ONLY = {"rumps"}


def mlx_dir() -> Path | None:
    """The installed `mlx` package folder (namespace package: its one search location)."""
    spec = importlib.util.find_spec("mlx")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def mlx_resources() -> list:
    """(folder inside Contents/Resources, [source]) for py2app's `resources`: the mlx package as is,
    so mlx/lib/libmlx.dylib and mlx/lib/mlx.metallib stay side by side."""
    root = mlx_dir()
    if root is None:
        return []
    return [("lib/python%d.%d" % sys.version_info[:2], [str(root)])]


PLIST = {
    "CFBundleName": APP_NAME,
    "CFBundleDisplayName": APP_NAME,
    "CFBundleIdentifier": BUNDLE_ID,  # notifications come from the app (menubar/notify.py picks the route by it)
    "CFBundleShortVersionString": VERSION,
    "CFBundleVersion": VERSION,
    "LSUIElement": True,  # a menubar app: no Dock icon, no app menu
    "LSMinimumSystemVersion": "14.0",  # current MLX wheels need macOS 14+
    "NSHumanReadableCopyright": "Apache-2.0",
    # Shown where macOS asks for Screen Recording on the app's behalf.
    "NSScreenCaptureUsageDescription": "To caption the screen region you select.",
}


def options(alias: bool = False) -> dict:
    return {
        "argv_emulation": False,  # an LSUIElement app has no documents; the Carbon shim also breaks on arm64
        "packages": list(PACKAGES),
        "includes": list(INCLUDES),
        # An alias build imports everything from this venv, mlx included.
        "resources": [] if alias else mlx_resources(),
        "plist": PLIST,
        "excludes": list(EXCLUDES),
    }


def distribution_class():
    """A setuptools Distribution that never carries install_requires (py2app 0.28 refuses any)."""
    from setuptools.dist import Distribution

    class AppDistribution(Distribution):
        def parse_config_files(self, *args, **kwargs):
            super().parse_config_files(*args, **kwargs)  # reads pyproject.toml's dependencies, among others
            self.install_requires = []
            self.extras_require = {}

    return AppDistribution


def setup_kwargs(alias: bool = False) -> dict:
    return dict(name=APP_NAME, version=VERSION, app=[ENTRY], options={"py2app": options(alias)},
                distclass=distribution_class())


def main() -> None:
    from setuptools import setup

    setup(**setup_kwargs(alias="-A" in sys.argv[1:] or "--alias" in sys.argv[1:]))


if __name__ == "__main__":
    main()

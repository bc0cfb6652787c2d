"""The py2app recipe, checked with py2app's own first build steps (they run on any platform),
and the plists the app writes, read back with plistlib."""

from __future__ import annotations

import importlib
import os
import plistlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
py2app_build = pytest.importorskip("py2app.build_app")


@pytest.fixture
def in_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # where `python setup_app.py py2app` runs: next to pyproject.toml
    monkeypatch.syspath_prepend(str(ROOT))
    import setup_app

    return importlib.reload(setup_app)


def distribution(cls, setup_app, argv=("py2app",)):
    """What setuptools.setup() does before running a command: build the Distribution,
    read setup.cfg/pyproject.toml, parse the command line."""
    attrs = setup_app.setup_kwargs()
    attrs.pop("distclass")
    dist = cls(attrs)
    dist.script_name, dist.script_args = "setup_app.py", list(argv)
    dist.parse_config_files()
    dist.parse_command_line()
    return dist


def test_the_recipe_passes_py2apps_option_checks_in_the_repository_root(in_root):
    from setuptools.dist import Distribution

    plain = distribution(Distribution, in_root)
    assert plain.install_requires, "setuptools no longer reads pyproject's dependencies: this test proves nothing"
    with pytest.raises(Exception, match="install_requires is no longer supported"):
        plain.get_command_obj("py2app").ensure_finalized()  # the failure users hit

    dist = distribution(in_root.distribution_class(), in_root)
    assert not dist.install_requires and not dist.extras_require
    command = dist.get_command_obj("py2app")
    command.ensure_finalized()  # py2app's own finalize_options
    assert set(command.packages) == set(in_root.PACKAGES) and "mlx" not in command.packages
    assert "mlx" in command.excludes and command.argv_emulation in (0, False)


def test_every_package_the_recipe_names_resolves_with_py2apps_finder(in_root):
    from modulegraph.util import imp_find_module

    with pytest.raises(ImportError):  # why mlx cannot be a py2app "package": no __init__.py
        imp_find_module("mlx")
    for name in set(in_root.PACKAGES) - in_root.MAC_ONLY:
        path = imp_find_module(name)[1]  # what py2app's collect_packagedirs / get_bootstrap call
        assert os.path.isfile(os.path.join(path, "__init__.py")), name
    # The entry script and our packages import through modulegraph without a missing module of ours.
    from modulegraph.modulegraph import ModuleGraph

    graph = ModuleGraph(path=[str(ROOT)] + sys.path, excludes=in_root.EXCLUDES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("menubar", "menubar.launchagent", "menubar.notify", "app.protocol"):
            graph.import_hook(name)
            node = graph.findNode(name)
            assert node is not None and getattr(node, "filename", None), name
    assert (ROOT / in_root.ENTRY).is_file()
    assert "from ." not in (ROOT / in_root.ENTRY).read_text()  # py2app runs it as a script


def test_mlx_travels_whole_so_its_metal_library_stays_next_to_libmlx(in_root):
    resources = in_root.options()["resources"]
    assert len(resources) == 1
    dest, (src,) = resources[0]
    assert dest == "lib/python%d.%d" % sys.version_info[:2]  # where py2app copies `packages`, on sys.path
    src = Path(src)
    assert src.name == "mlx" and list(src.glob("core.*")), "not the mlx package folder"
    libs = [p for p in (src / "lib").iterdir() if p.name.startswith("libmlx.")]
    assert libs, "core's rpath is @loader_path/lib: libmlx must be in mlx/lib"
    if sys.platform == "darwin":  # the Metal backend: mlx.metallib beside libmlx.dylib
        assert (src / "lib" / "mlx.metallib").is_file()
    assert in_root.options(alias=True)["resources"] == []  # an alias build imports the venv's mlx


def test_info_plist_round_trips_and_says_what_the_app_is(in_root):
    from menubar import BUNDLE_ID

    plist = in_root.PLIST
    assert plistlib.loads(plistlib.dumps(plist)) == plist
    assert plist["CFBundleIdentifier"] == BUNDLE_ID and plist["LSUIElement"] is True
    assert plist["NSScreenCaptureUsageDescription"]
    assert in_root.options()["argv_emulation"] is False


def test_importing_the_recipe_builds_nothing():
    done = subprocess.run([sys.executable, "-c", "import setup_app"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0 and done.stdout == "" and not (ROOT / "build").exists()

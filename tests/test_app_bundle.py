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
        for name in ("menubar", "menubar.launchagent", "menubar.notify", "captioning.protocol"):
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


# --- the LaunchAgent a bundle writes ------------------------------------------------------------
def make_bundle(folder: Path, setup_app) -> Path:
    """The layout py2app produces: Contents/Info.plist, Contents/MacOS/<executable>, Contents/Resources."""
    app = folder / "MLX Caption.app"
    (app / "Contents" / "MacOS").mkdir(parents=True)
    (app / "Contents" / "Resources").mkdir()
    info = {**setup_app.PLIST, "CFBundleExecutable": "MLX Caption"}
    (app / "Contents" / "Info.plist").write_bytes(plistlib.dumps(info))
    (app / "Contents" / "MacOS" / "MLX Caption").write_text("#!/bin/sh\n")
    return app


@pytest.fixture
def frozen(monkeypatch, tmp_path, in_root):
    """Running inside a py2app bundle: boot_app sets sys.frozen and RESOURCEPATH."""
    def run_from(app: Path):
        monkeypatch.setattr(sys, "frozen", "macosx_app", raising=False)
        monkeypatch.setenv("RESOURCEPATH", str(app / "Contents" / "Resources"))
    return run_from


def test_a_bundles_agent_starts_the_bundle_and_logs_where_users_look(frozen, tmp_path, in_root):
    from menubar import BUNDLE_ID
    from menubar.launchagent import LaunchAgent

    app = make_bundle(tmp_path / "dist", in_root)
    frozen(app)
    agent = LaunchAgent(tmp_path / "LaunchAgents" / f"{BUNDLE_ID}.plist", log=tmp_path / "Logs" / "agent.log")
    agent.enable()
    data = plistlib.loads(agent.path.read_bytes())
    assert plistlib.loads(plistlib.dumps(data)) == data == agent.plist()
    assert data["Label"] == BUNDLE_ID and data["RunAtLoad"] is True
    assert data["ProgramArguments"] == [str(app / "Contents" / "MacOS" / "MLX Caption")]
    assert "WorkingDirectory" not in data  # the bundle carries its packages
    assert data["StandardErrorPath"] == str(tmp_path / "Logs" / "agent.log") and (tmp_path / "Logs").is_dir()
    assert not any(".zip" in str(v) for v in data.values())
    assert os.stat(agent.path).st_mode & 0o777 == 0o644


def test_moving_the_app_rewrites_the_agent_at_start(frozen, tmp_path, in_root):
    from menubar.launchagent import LaunchAgent

    path, log = tmp_path / "LaunchAgents" / "agent.plist", tmp_path / "agent.log"
    old = make_bundle(tmp_path / "dist", in_root)
    frozen(old)
    LaunchAgent(path, log=log).enable()  # turned on while the app was in dist/
    new = tmp_path / "Applications" / old.name
    new.parent.mkdir()
    old.rename(new)
    frozen(new)
    agent = LaunchAgent(path, log=log)
    assert agent.enabled() and agent.refresh() is True
    assert plistlib.loads(path.read_bytes())["ProgramArguments"] == [str(new / "Contents" / "MacOS" / "MLX Caption")]
    assert agent.refresh() is False  # up to date: left alone
    agent.disable()
    assert agent.refresh() is False and not agent.enabled()  # off stays off
    path.write_bytes(b"not a plist")
    assert agent.refresh() is True and plistlib.loads(path.read_bytes()) == agent.plist()


def test_from_a_checkout_the_agent_runs_this_python_in_this_checkout(tmp_path):
    from menubar.launchagent import LaunchAgent

    agent = LaunchAgent(tmp_path / "agent.plist", log=tmp_path / "agent.log")
    data = agent.plist()
    assert data["ProgramArguments"] == [sys.executable, "-m", "menubar"]
    assert data["WorkingDirectory"] == str(ROOT)

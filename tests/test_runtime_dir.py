"""Where the service socket lives: every process of the user must pick the same folder."""

from __future__ import annotations

import errno
import os
import sys
import tempfile

import pytest

from captioning import protocol

USER_TEMP = "/var/folders/zz/abc123/T/"


def darwin_confstr(name):
    """confstr(3) on macOS: _CS_DARWIN_USER_TEMP_DIR (65537, <unistd.h>) is the per-user temp
    folder whatever the environment; names it does not know fail with EINVAL."""
    if isinstance(name, str):
        raise ValueError(f"unrecognized configuration name {name!r}")  # os.confstr_names has no such key
    if name == 65537:
        return USER_TEMP
    raise OSError(errno.EINVAL, "Invalid argument")


@pytest.mark.parametrize("tmpdir", [None, "/private/tmp/elsewhere", USER_TEMP])
def test_on_macos_the_socket_folder_does_not_depend_on_tmpdir(monkeypatch, tmpdir):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setattr(os, "confstr", darwin_confstr)
    monkeypatch.delenv("MLX_VLM_PORT_RUNTIME_DIR", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/501")  # exported by some tools on macOS: ignored
    monkeypatch.setattr(tempfile, "tempdir", None)  # tempfile caches its pick
    if tmpdir is None:  # a launchd agent, some Shortcuts runs
        monkeypatch.delenv("TMPDIR", raising=False)
    else:
        monkeypatch.setenv("TMPDIR", tmpdir)
    assert str(protocol.runtime_dir()) == f"{USER_TEMP}mlx-vlm-port-{os.getuid()}"
    assert protocol.socket_path().parent == protocol.runtime_dir()


def test_the_override_wins_and_linux_uses_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("MLX_VLM_PORT_RUNTIME_DIR", str(tmp_path))
    assert protocol.runtime_dir() == tmp_path
    monkeypatch.delenv("MLX_VLM_PORT_RUNTIME_DIR")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert str(protocol.runtime_dir()) == "/run/user/1000/mlx-vlm-port"

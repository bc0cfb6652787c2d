"""`python -m app.caption` driven for real, in subprocesses, on the tiny random checkpoint.

Its captions are gibberish, so these tests check structure: exit codes, what
goes to stdout/stderr, JSON fields, resume, the clipboard round trip. Greedy
decoding (--temperature 0) makes two runs on the same image comparable.
"""

import io
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from app.batch import JsonlLog, Progress, Source, expand
from tests.images import synthetic_image

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--max-tokens", "4", "--temperature", "0", "--no-service"]
RECORD_KEYS = {"path", "caption", "model", "prompt_tokens", "generation_tokens", "seconds"}


def cli(*args, stdin: bytes = b"", env: dict | None = None, flags=(), **kw) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}
    environ.update(env or {})
    return subprocess.run([sys.executable, *flags, "-m", "app.caption", *map(str, args)], cwd=ROOT,
                          input=stdin, capture_output=True, timeout=120, env=environ, **kw)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    synthetic_image(640, 480, 1).save(folder / "a.jpg", quality=90)
    synthetic_image(300, 200, 2).save(folder / "b.png")
    synthetic_image(256, 256, 3, mode="RGBA").save(folder / "c.webp")
    return folder


def records(stdout: bytes) -> list[dict]:
    return [json.loads(line) for line in stdout.decode().splitlines()]


def test_one_path(photos, tiny_path):
    done = cli(photos / "a.jpg", "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    assert done.stdout.endswith(b"\n") and done.stdout.strip()


def test_stdin_and_path_give_the_same_caption_as_json(photos, tiny_path):
    a = photos / "a.jpg"
    done = cli(a, "-", "--json", "--model", tiny_path, *FAST, stdin=a.read_bytes())
    assert done.returncode == 0, done.stderr
    first, second = records(done.stdout)
    assert set(first) == RECORD_KEYS and first["path"] == str(a) and second["path"] == "-"
    assert first["caption"] == second["caption"]
    assert first["model"] == str(tiny_path)
    assert first["prompt_tokens"] > 0 and 0 < first["generation_tokens"] <= 4 and first["seconds"] > 0


def test_several_paths_get_headers(photos, tiny_path):
    done = cli(photos / "a.jpg", photos / "b.png", "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    assert text.startswith(f"==> {photos / 'a.jpg'} <==\n")
    assert f"\n\n==> {photos / 'b.png'} <==\n" in text


def test_no_split_and_options_are_accepted(photos, tiny_path):
    done = cli(photos / "b.png", "--model", tiny_path, *FAST, "--no-split", "--max-image-tokens", "64",
               "--system", "Be brief.", "--min-p", "0.05", "--repetition-penalty", "1.2", "--json",
               "--prompt", "What is this?")
    assert done.returncode == 0, done.stderr
    assert records(done.stdout)[0]["prompt_tokens"] < 100  # one view of at most 64 image tokens


def test_folder_batch_jsonl_resume(photos, tiny_path, tmp_path):
    folder = tmp_path / "batch"
    shutil.copytree(photos, folder)
    (folder / "notes.txt").write_text("not an image, and not picked up")
    (folder / ".hidden.png").write_bytes(b"AppleDouble junk is skipped")
    (folder / "broken.png").write_bytes((photos / "b.png").read_bytes()[:100])
    out = tmp_path / "out" / "captions.jsonl"

    first = cli(folder, "--jsonl", out, "--model", tiny_path, *FAST)
    assert first.returncode == 3  # one bad image: reported, the batch went on
    assert first.stderr.decode() == (
        f"caption: error: {folder / 'broken.png'} is not a readable image (image file is truncated)\n")
    lines = out.read_text().splitlines()
    assert sorted(json.loads(x)["path"] for x in lines) == [str(folder / n) for n in ("a.jpg", "b.png", "c.webp")]
    assert all(set(json.loads(x)) == RECORD_KEYS for x in lines)

    # A crash mid-write leaves a torn last line; the next run cuts it off and redoes its image.
    with open(out, "a") as f:
        f.write('{"path": "' + str(folder / "d.png") + '", "capt')
    synthetic_image(100, 80, 4).save(folder / "d.png")
    second = cli(folder, "--jsonl", out, "--model", tiny_path, *FAST, "--json")
    assert second.returncode == 3
    assert [r["path"] for r in records(second.stdout)] == [str(folder / "d.png")]  # the rest were skipped
    assert "skipping 3 of 5 images already in" in second.stderr.decode()
    parsed = [json.loads(line) for line in out.read_text().splitlines()]  # every line parses again
    assert sorted(r["path"] for r in parsed) == [str(folder / n) for n in ("a.jpg", "b.png", "c.webp", "d.png")]

    third = cli(folder / "a.jpg", folder / "d.png", "--jsonl", out, "--model", tiny_path, *FAST)
    assert third.returncode == 0 and third.stdout == b""  # everything already done


def test_glob_expansion(photos, tiny_path):
    done = cli(str(photos / "*.png"), "--json", "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr
    assert [r["path"] for r in records(done.stdout)] == [str(photos / "b.png")]


def test_detect_in_process(photos, tiny_path, tmp_path):
    out = tmp_path / "drawn.png"
    done = cli(photos / "b.png", "--detect", "square", "--json", "--draw", out, "--model", tiny_path, *FAST)
    assert done.returncode == 0, done.stderr
    record = records(done.stdout)[0]
    assert isinstance(record["boxes"], list)  # gibberish has no boxes; the draw still writes the image
    assert all(not line.startswith("caption: error") for line in done.stderr.decode().splitlines())
    with Image.open(out) as im:
        assert im.size == (300, 200)


def test_help_does_not_import_mlx():
    done = cli("--help", flags=["-X", "importtime"])
    assert done.returncode == 0
    assert "examples:" in done.stdout.decode() and "exit codes:" in done.stdout.decode()
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line}
    assert "mlx_vlm_port.options" in modules  # the flags are read from the options model...
    light = {"mlx_vlm_port", "mlx_vlm_port._blas", "mlx_vlm_port.options"}  # ...which is plain Python
    heavy = {m for m in modules - light
             if m.split(".")[0] in ("mlx", "mlx_vlm_port", "numpy", "PIL", "torch", "transformers")}
    assert not heavy


def test_no_torch_or_transformers_when_captioning(photos, tiny_path):
    done = cli(photos / "b.png", "--model", tiny_path, *FAST, flags=["-X", "importtime"])
    assert done.returncode == 0
    modules = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.decode().splitlines() if "|" in line}
    assert "mlx.core" in modules
    assert not {m for m in modules if m.split(".")[0] in ("torch", "transformers")}


def read_until_closed(leader: int) -> bytes:
    """Everything a child writes to its terminal until it closes it."""
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def test_streams_to_a_terminal(photos, tiny_path):
    piped = cli(photos / "a.jpg", "--model", tiny_path, *FAST)
    leader, follower = pty.openpty()
    environ = {k: v for k, v in os.environ.items() if k != "MLX_VLM_PORT_MODEL"}
    proc = subprocess.Popen([sys.executable, "-m", "app.caption", str(photos / "a.jpg"), "--model",
                             str(tiny_path), *FAST], cwd=ROOT, stdout=follower, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=environ)
    os.close(follower)
    shown = read_until_closed(leader)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == b""
    assert shown.replace(b"\r\n", b"\n") == piped.stdout


def wait_until_reading_stdin(pid: int, limit: float = 30.0) -> None:
    """Past start-up (a signal during imports is Python's business, not ours): the
    kernel says it sleeps in a pipe read."""
    wchan = Path(f"/proc/{pid}/wchan")
    if not wchan.exists():
        pytest.skip("needs /proc/PID/wchan to see the process wait for input")
    deadline = time.monotonic() + limit
    while "pipe" not in wchan.read_text():
        assert time.monotonic() < deadline, "the CLI never started reading stdin"
        time.sleep(0.05)


def test_ctrl_c_exits_130_quietly():
    # A shell without job control starts background jobs with SIGINT ignored, and the
    # child would inherit that: give it the default disposition a terminal user has.
    proc = subprocess.Popen([sys.executable, "-m", "app.caption", "-"], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_until_reading_stdin(proc.pid)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == b"" and out == b""


# --- batch helpers -----------------------------------------------------------------------------

def test_expand_folders_globs_and_duplicates(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("b.PNG", "a.jpg", "sub/c.gif", ".d.png", "e.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [s.path for s in expand([str(tmp_path)])] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.PNG")]
    assert [s.path for s in expand([str(tmp_path / "**" / "*.gif")])] == [str(tmp_path / "sub" / "c.gif")]
    assert len(expand([str(tmp_path / "a.jpg"), str(tmp_path)])) == 2  # a.jpg once
    (empty,) = expand([str(tmp_path / "sub" / "*.png")])
    assert empty.code == 3 and "no image files match" in empty.error


def test_jsonl_log_survives_a_torn_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"path": "/x/a.png", "caption": "a"}\n{"path": "/x/b.png", "cap')
    log = JsonlLog(path)
    assert Source("a.png", path="/x/a.png") in log and Source("b.png", path="/x/b.png") not in log
    log.write({"path": "/x/b.png", "caption": "b"})
    log.close()
    assert path.read_text() == '{"path": "/x/a.png", "caption": "a"}\n{"path": "/x/b.png", "caption": "b"}\n'


@pytest.mark.parametrize("tail", ['{"path": "/x/b.png", "caption": "b"}', "a note of the user's"])
def test_jsonl_log_keeps_a_last_line_that_is_not_a_torn_record(tmp_path, tail):
    path = tmp_path / "log.jsonl"
    path.write_text('{"path": "/x/a.png", "caption": "a"}\n' + tail)  # no newline at the end
    log = JsonlLog(path)
    assert (Source("b.png", path="/x/b.png") in log) == tail.startswith("{")
    log.write({"path": "/x/c.png", "caption": "c"})
    log.close()
    assert path.read_text().splitlines()[1:] == [tail, '{"path": "/x/c.png", "caption": "c"}']


def test_progress_bar_only_on_a_terminal():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = Progress(4, stream)
    bar.step("one.png")
    bar.advance()
    bar.clear()
    assert "[------" in stream.getvalue() and "1/4" in stream.getvalue() and stream.getvalue().endswith("\r\033[K")
    before = stream.getvalue()
    bar.clear()  # nothing drawn now: a second clear must not wipe a caption streaming on that line
    assert stream.getvalue() == before
    quiet = io.StringIO()
    Progress(4, quiet).step("x")
    Progress(1, Tty()).step("x")
    assert quiet.getvalue() == ""


# --- the Linux clipboard, for real under Xvfb -------------------------------------------------

@pytest.fixture
def xdisplay():
    if not sys.platform.startswith("linux"):
        pytest.skip("the X11 clipboard path is Linux-only")
    if not (shutil.which("Xvfb") and shutil.which("xclip")):
        pytest.skip("needs Xvfb and xclip (apt-get install -y xvfb xclip)")
    read, write = os.pipe()
    server = subprocess.Popen(["Xvfb", "-displayfd", str(write), "-nolisten", "tcp", "-screen", "0", "320x240x24"],
                              pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(write)
    number = b""
    while not number.endswith(b"\n"):
        chunk = os.read(read, 16)
        if not chunk:
            server.kill()
            pytest.skip("Xvfb did not start")
        number += chunk
    os.close(read)
    yield {"DISPLAY": f":{int(number)}", "WAYLAND_DISPLAY": ""}
    server.terminate()
    server.wait(timeout=10)


def xclip(env: dict, *args, data: bytes | None = None) -> bytes:
    """Run xclip on the test display. Setting the clipboard forks a process that
    serves it (it ends with the X server), so no pipes are kept for that case."""
    environ = {**os.environ, **env}
    if data is not None:
        subprocess.run(["xclip", "-selection", "clipboard", *args], input=data, env=environ, timeout=10,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return b""
    return subprocess.run(["xclip", "-selection", "clipboard", *args, "-o"], env=environ, timeout=10,
                          capture_output=True).stdout


def test_clipboard_image_caption_and_copy(xdisplay, photos, tiny_path):
    xclip(xdisplay, "-t", "image/png", "-i", data=(photos / "b.png").read_bytes())
    done = cli("--clipboard", "--copy", "--model", tiny_path, *FAST, env=xdisplay)
    assert done.returncode == 0, done.stderr
    assert done.stderr == b"" and done.stdout.strip()
    assert xclip(xdisplay).decode() == done.stdout.decode().strip()  # the caption replaced the image
    same = cli(photos / "b.png", "--model", tiny_path, *FAST)
    assert same.stdout == done.stdout


def test_clipboard_without_an_image(xdisplay, tiny_path):
    done = cli("--clipboard", "--model", tiny_path, env=xdisplay)  # a fresh display: nothing copied yet
    assert done.returncode == 3
    assert done.stderr.decode() == "caption: error: the clipboard has no image (it is empty)\n"
    xclip(xdisplay, "-i", data=b"just some text")
    done = cli("--clipboard", "--model", tiny_path, env=xdisplay)
    assert done.returncode == 3
    assert done.stderr.decode() == "caption: error: the clipboard has no image (it holds text)\n"

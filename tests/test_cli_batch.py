"""`python -m app.caption FOLDER` decoding images in batches: the same records, in
the same order, as one image at a time; bad images reported in their turn."""

import json

import pytest

from tests.images import synthetic_image
from tests.test_cli import FAST, cli, records


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("many")
    for i, (w, h) in enumerate([(640, 480), (90, 300), (256, 256), (500, 120), (320, 240)]):
        synthetic_image(w, h, i).save(folder / f"{i}.png")
    (folder / "2b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")  # between 2 and 3 in sorted order
    return folder


def test_batches_give_the_records_of_one_at_a_time_in_input_order(folder, tiny_path, tmp_path):
    one = cli(folder, "--json", "--batch-size", "1", "--model", tiny_path, *FAST, "--max-tokens", "7")
    two = cli(folder, "--json", "--batch-size", "2", "--jsonl", tmp_path / "out.jsonl", "--model", tiny_path,
              *FAST, "--max-tokens", "7")
    auto = cli(folder, "--json", "--model", tiny_path, *FAST, "--max-tokens", "7")
    names = [str(folder / n) for n in ("0.png", "1.png", "2.png", "3.png", "4.png")]
    for done in (one, two, auto):
        assert done.returncode == 3, done.stderr  # the bad image, reported; the rest captioned
        assert done.stderr.decode().startswith(f"caption: error: {folder / '2b.png'}")
        assert [r["path"] for r in records(done.stdout)] == names

    def same(r):
        return {k: r[k] for k in ("path", "caption", "prompt_tokens", "generation_tokens")}

    assert [same(r) for r in records(two.stdout)] == [same(r) for r in records(one.stdout)]
    assert [same(r) for r in records(auto.stdout)] == [same(r) for r in records(one.stdout)]
    logged = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["path"] for r in logged] == names  # the log in input order too


def test_plain_output_keeps_headers_in_order(folder, tiny_path):
    done = cli(folder / "0.png", folder / "1.png", folder / "3.png", "--batch-size", "3", "--model", tiny_path,
               *FAST)
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode()
    heads = [text.index(f"==> {folder / n} <==") for n in ("0.png", "1.png", "3.png")]
    assert heads == sorted(heads) and text.startswith(f"==> {folder / '0.png'} <==\n")


def test_batch_size_must_be_positive(folder, tiny_path):
    done = cli(folder, "--batch-size", "0", "--model", tiny_path, *FAST)
    assert done.returncode == 2 and b"--batch-size" in done.stderr

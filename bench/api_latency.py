"""`python -m bench.api_latency`: what the local API adds to a request, against calling
the library directly.

Builds (no download) the tiny LFM2-VL checkpoint of the tests, then in one process
alternates, --repeats times each, on seeded synthetic PNGs of one size (a new image
for every call, so no side reuses the previous image's vision work):
  direct  Captioner.run on the PNG bytes decoded by read_image (what the API does
          with a data: URL), one token, greedy;
  worker  the same, submitted to the service's worker thread (what the API hands on);
  api     the same question through POST /v1/chat/completions on a kept-alive
          loopback connection (JSON + base64 data: URL, bearer key, the worker
          queue, its thread hand-off), max_tokens=1, greedy.
The added latency is median(api) - median(direct), wall clock (target: <= 20 ms);
median(api) - median(worker) is the HTTP layer alone, on the same model and thread.
Then GET /v1/models --repeats times on the same connection: the HTTP floor (no model).
This machine may be shared and busy: compare only figures of one run.
"""

from __future__ import annotations

import argparse
import base64
import gc
import http.client
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.api_latency", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=100)
    parser.add_argument("--size", default="256x192", help="image WxH (default 256x192)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import mlx_vlm_port  # noqa: F401  (OpenBLAS before MLX)
    from captioning.captioner import Captioner
    from captioning.images import read_image
    from captioning.job import Job
    from menubar.api_server import ApiServer
    from menubar.jobs import Request
    from menubar.worker import Worker
    from mlx_vlm_port.options import SamplingOptions
    from tests.images import synthetic_image
    from tests.tiny_checkpoint import make_tiny_checkpoint

    folder = Path(tempfile.mkdtemp(prefix="bench-api-"))
    spec = json.loads((ROOT / "tests" / "golden" / "manifest.json").read_text())
    model = str(make_tiny_checkpoint(folder / "tiny", **spec["checkpoints"]["default"]["make_tiny_checkpoint_kwargs"]))
    width, height = (int(v) for v in args.size.split("x"))

    def png(seed: int) -> bytes:
        buf = io.BytesIO()
        synthetic_image(width, height, seed).save(buf, format="PNG")
        return buf.getvalue()

    worker = Worker(model, log=lambda line: None).start()
    worker.load(model)
    while worker.state != "ready":
        time.sleep(0.01)
    api = ApiServer(worker, "127.0.0.1:0", key_file=folder / "api-key", log=lambda line: None).start()
    direct = Captioner(model).load()
    job = Job("What is this?", sampling=SamplingOptions(max_tokens=1, temperature=0))
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}

    def via_api(data: bytes) -> str:
        body = {"model": model, "max_tokens": 1, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()}}]}]}
        conn.request("POST", "/v1/chat/completions", json.dumps(body), headers)
        response = conn.getresponse()
        reply = json.loads(response.read())
        assert response.status == 200, reply
        return reply["choices"][0]["message"]["content"]

    def via_library(data: bytes) -> str:
        return direct.run(read_image("the image", data=data), job, lambda piece: None).text

    def via_worker(data: bytes) -> str:
        done, replies = threading.Event(), []
        request = Request(read_image("the image", data=data), job,
                          sink=lambda m: m["type"] != "piece" and (replies.append(m), done.set()))
        assert worker.submit(request) and done.wait(60) and replies[0]["type"] == "done", replies
        return replies[0]["text"]

    times: dict[str, list[float]] = {"direct": [], "worker": [], "api": []}
    sides = [("direct", via_library), ("worker", via_worker), ("api", via_api)]
    try:
        for i in range(-3, args.repeats):  # three warm-up rounds, not counted
            for k, (name, call) in enumerate(sides[i % 3:] + sides[:i % 3]):  # each side first in turn
                data = png(10 + 3 * i + k)  # never the image before: no side reuses vision work
                tic = time.perf_counter()
                call(data)
                if i >= 0:
                    times[name].append(time.perf_counter() - tic)
        for _ in range(args.repeats):  # the HTTP floor: a round trip that runs no model
            tic = time.perf_counter()
            conn.request("GET", "/v1/models", headers=headers)
            conn.getresponse().read()
            times.setdefault("models", []).append(time.perf_counter() - tic)
    finally:
        conn.close()
        api.close()
        worker.stop()
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    result = {"repeats": args.repeats, "image": args.size, "direct_ms": round(med["direct"], 2),
              "api_ms": round(med["api"], 2), "added_ms": round(med["api"] - med["direct"], 2),
              "api_p90_ms": round(statistics.quantiles(times["api"], n=10)[-1] * 1000, 2),
              "direct_p90_ms": round(statistics.quantiles(times["direct"], n=10)[-1] * 1000, 2),
              "worker_ms": round(med["worker"], 2), "added_over_worker_ms": round(med["api"] - med["worker"], 2),
              "models_roundtrip_ms": round(med["models"], 2)}
    print(json.dumps(result))
    print(f"median per request, {args.repeats} alternating rounds, {args.size} PNG, 1 token: "
          f"library {med['direct']:.1f} ms, API {med['api']:.1f} ms, added {med['api'] - med['direct']:.1f} ms "
          f"(target <= 20 ms: {'PASS' if med['api'] - med['direct'] <= 20 else 'MISS'}); "
          f"the same worker without HTTP {med['worker']:.1f} ms (API adds {med['api'] - med['worker']:.1f} ms); "
          f"GET /v1/models round trip {med['models']:.2f} ms")
    del direct  # this thread's model, freed before interpreter teardown (MLX aborts on late frees)
    gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m menubar --headless`: only the worker and the local service, on any platform."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

from menubar.service import AlreadyRunning, Service
from menubar.worker import Worker


def run(model: str | None = None, *, http: str | None = None, public: bool = False,
        origins: tuple[str, ...] = (), max_queue: int = 64) -> int:
    """Serve until SIGINT/SIGTERM (exit 0) or until the model cannot be loaded (exit 1);
    with `http` ("HOST:PORT") the local API too, on the same worker."""
    from captioning.job import default_model

    model = model or default_model()
    worker = Worker(model, max_queue=max_queue)
    service = Service(worker)
    api = None
    try:
        service.bind()  # before loading: a second server learns in milliseconds that it is not needed
    except AlreadyRunning as e:
        print(f"menubar: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"menubar: cannot open the service socket {service.path}: {e}", file=sys.stderr)
        return 1
    if http is not None:
        from menubar.api_server import ApiServer, ApiUnavailable

        try:
            api = ApiServer(worker, http, public=public, origins=origins)
            api.bind()
        except (ValueError, ApiUnavailable) as e:
            print(f"menubar: {e}", file=sys.stderr)
            service.close()
            return 1

    stop, failed = threading.Event(), threading.Event()

    def on_state(state: str, detail: str) -> None:
        if state == "error":  # the one load failed: nothing to serve with
            failed.set()
            stop.set()

    def on_signal(signum, frame) -> None:
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    worker.add_listener(on_state)
    worker.start()
    worker.load(model)
    service.start()
    if api is not None:
        api.start()
        print(f"menubar: local API at {api.url} (key in {api.key_file})", file=sys.stderr, flush=True)
    print(f"menubar: caption service at {service.path} (model {model}, pid {os.getpid()}); "
          "Ctrl-C stops it", file=sys.stderr, flush=True)
    while not stop.wait(0.5):
        pass
    if failed.is_set():
        worker.wait_idle(2)  # queued requests get the load error as their answer...
        time.sleep(0.2)      # ...and their handlers a moment to forward it
    if api is not None:
        api.close()
    service.close()
    worker.stop(timeout=10)
    code = 1 if failed.is_set() else 0
    if worker.alive:
        # Still inside one long MLX call (a model load, say): interpreter teardown under a
        # running MLX thread can abort, so leave without it. The socket is already gone.
        print("menubar: the worker is still busy; exiting without waiting", file=sys.stderr, flush=True)
        os._exit(code)
    print("menubar: caption service stopped", file=sys.stderr, flush=True)
    return code

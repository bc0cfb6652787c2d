"""The captioning core shared by the CLI (`app/`) and the menubar app (`menubar/`).

    errors.py     exit codes and the one Failure type
    job.py        Job (what to ask of an image) and Result; the detail presets
    images.py     an input's bytes or path → one decoded RGB image, or Failure(3)
    capture.py    the clipboard and the screen (macOS, X11, Wayland)
    grounding.py  boxes from a detection answer, and drawing them
    captioner.py  one loaded model (and its prompt cache) answering Jobs
    protocol.py   the local service's wire format: JSON lines over a Unix socket
    client.py     the service's client
    engine.py     where a job runs: the running service, else a model loaded here

Standard library only at import time: MLX loads with the first model.
"""

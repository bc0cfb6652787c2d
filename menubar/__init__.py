"""The menubar app: a rumps UI, one worker thread that owns the model, and the
local caption service the CLI uses.

    python -m menubar                    # the menubar app (macOS, `mac` extra)
    python -m menubar --headless         # only the local service (any platform)

Only `rumps_app` imports rumps; everything else is plain Python tested on Linux.
"""

APP_NAME = "MLX Caption"
BUNDLE_ID = "io.github.mlx-vlm-port.caption"

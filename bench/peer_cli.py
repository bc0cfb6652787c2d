"""The peer's own CLI (`python -m mlx_vlm.generate ARGS`), run unchanged except
that its streaming detokenizer tolerates the ids the benchmark's small test
tokenizer lacks (random weights emit any of the 65,536 ids; see
worker.tolerant_detokenizer). Used for the peer's cold-start figure:

    python -m bench.peer_cli --model DIR --image IMG --prompt P --max-tokens 1 --temperature 0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    from mlx_vlm.generate import dispatch

    from bench.worker import tolerant_detokenizer

    model = sys.argv[sys.argv.index("--model") + 1] if "--model" in sys.argv else None
    vocab = 65536
    if model and (Path(model) / "config.json").exists():
        cfg = json.loads((Path(model) / "config.json").read_text())
        vocab = (cfg.get("text_config") or {}).get("vocab_size", vocab)
    tolerant_detokenizer(vocab)
    dispatch.main()


if __name__ == "__main__":
    main()

"""bench/json_schema.py on the tiny checkpoint's tokenizer: the answer it replays is
one the grammar accepts (else its per-token figures would time an error state),
the host-cost probe runs, and the report is written from a run's results."""

from bench import json_schema


def test_engines_replay_a_complete_answer(tiny_path):
    result = json_schema.engines(tiny_path / "tokenizer.json", 1024)
    assert result["llguidance"]["complete"] and result["answer_tokens"] > 20
    if "outlines-core" in result:  # optional: only where it is installed
        assert result["outlines-core"]["complete"]


def test_overhead_probe_and_report(tiny, tiny_path):
    _, processor = tiny
    extra = json_schema.overhead(processor, 1024)
    assert extra["tokens"] > 20 and extra["held_us"] > 0
    run = {"free": 2.0, "schema": 1.9}
    results = {"command": "python -m bench.json_schema", "finished": "today", "cpus": 2, "load": ["1", "2"],
               "versions": "python 3", "sizes": {"llguidance": 7.5},
               "decode": {"runs": [run], "free_tps": 2.0, "schema_tps": 1.9, "ratio": 0.95, "new_tokens": 32,
                          "overhead": extra},
               "engines": {"tiny": json_schema.engines(tiny_path / "tokenizer.json", 1024)}}
    text = json_schema.report(results)
    assert "| **with / without** | **0.950** (target >= 0.9: PASS) |" in text
    assert "| tiny (" in text and "| llguidance | 7.5 |" in text

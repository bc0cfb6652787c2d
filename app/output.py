"""What the CLI prints: streamed or whole captions, batch headers, JSON records,
grounding boxes (and the --draw image), plus the one-line error reporter."""

from __future__ import annotations

import json
import sys
from typing import TextIO

from captioning.engine import Engine
from captioning.errors import Exit, Failure
from captioning.job import Job, Result

from .batch import Progress, Source


def say(message: str, error: bool = True) -> None:
    """One line on stderr, whatever the message holds (Shortcuts shows it verbatim)."""
    line = " ".join(str(message).split())
    sys.stderr.write(f"caption: {'error: ' if error else ''}{line}\n")
    sys.stderr.flush()


def record_of(source: Source, result: Result) -> dict:
    """An image's JSON record (printed with --json, logged with --jsonl)."""
    return {"path": source.name, "caption": result.text.strip(), "model": result.model,
            "prompt_tokens": result.prompt_tokens, "generation_tokens": result.generation_tokens,
            "seconds": round(result.seconds, 3)}


class Output:
    def __init__(self, args, multi: bool, progress: Progress, stream: TextIO | None = None):
        self.args, self.multi, self.progress = args, multi, progress
        self.stream = stream or sys.stdout
        # Tokens stream to a terminal as they come; a pipe (Shortcuts, scripts)
        # gets each result whole. JSON and boxes only make sense whole.
        # JSON held to a schema prints only once it is complete; so do metadata fields.
        self.live = (self.stream.isatty() and not args.json and args.detect is None and args.json_schema is None
                     and not getattr(args, "write_metadata", None))
        self.printed: list[str] = []
        self.header: str | None = None
        self.started = False

    def write(self, text: str) -> None:
        self.progress.clear()
        if self.header:
            text, self.header = self.header + text, None
        self.stream.write(text)
        self.stream.flush()
        self.printed.append(text)

    def piece(self, text: str) -> None:
        if not self.live:
            return
        if not self.started:
            text = text.lstrip()  # the model often opens with a space
            if not text:
                return
            self.started = True
        self.write(text)

    def discard(self) -> None:
        """The current image failed: drop its header, end a half-streamed line."""
        if self.started:
            self.write("\n")
        self.header, self.started = None, False

    def copied_text(self) -> str:
        return "".join(self.printed)

    def announce(self, source: Source) -> None:
        """Several images, as text: the next one's output goes under its name."""
        if self.multi and not self.args.json:
            self.header = ("\n" if self.printed else "") + f"==> {source.label} <==\n"

    def caption(self, engine: Engine, source: Source, job: Job, finish=None) -> dict:
        """Caption one source and print it; returns the image's JSON record. `finish(source,
        text, record)`, when given, acts on the answer, may add to the record and returns what to print."""
        self.announce(source)
        self.started = False
        need_image = bool(self.args.draw)
        result = engine.run(source.label, job, self.piece, path=source.path, data=source.data,
                            need_image=need_image)
        text = result.text.strip()
        cut = job.json_schema is not None and result.finish_reason == "length"
        if cut and self.args.detect is None and finish is None:  # (finish repairs a cut answer itself)
            raise Failure(Exit.FAILED, f"{source.label}: the answer was cut off at --max-tokens "
                                       f"{job.sampling.max_tokens} before its JSON was complete (raise --max-tokens)")
        record = record_of(source, result)
        if finish is not None:
            text = finish(source, text, record)
        if self.args.detect is not None:
            record["boxes"] = self.boxes(source, text, result.image, cut)
        elif job.json_schema is not None and finish is None:
            try:
                record["json"] = json.loads(text)
            except ValueError:  # only an answer not held to the schema: a service older than this CLI
                raise Failure(Exit.FAILED, f"{source.label}: the answer is not JSON (if the menubar app is older "
                                           f"than this command, restart it or use --no-service)") from None
        return self.show(record, text=text)

    def show(self, record: dict, source: Source | None = None, text: str | None = None) -> dict:
        """Print one finished record (whole; with `source`, after its header); `text` is
        what to print of it (default: its caption)."""
        text = record["caption"] if text is None else text
        if source is not None:
            self.announce(source)
        if self.args.json:
            self.write(json.dumps(record, ensure_ascii=False) + "\n")
        elif self.args.detect is not None:
            lines = [f"{b['label'] or '?'}: " + " ".join(f"{v:g}" for v in b["bbox"]) for b in record["boxes"]]
            if lines:
                self.write("\n".join(lines) + "\n")
        elif self.started:
            self.write("\n")
        else:
            self.write(text + "\n")
        self.started = False
        self.progress.show()
        return record

    def boxes(self, source: Source, text: str, image, cut: bool) -> list[dict]:
        from captioning.grounding import boxes_from_json, draw_boxes, parse_boxes

        boxes = None
        try:
            boxes = None if cut else boxes_from_json(text)
        except ValueError:  # not held to the schema (a service older than this CLI): read it leniently
            pass
        if boxes is None:
            boxes = parse_boxes(text)
        if cut:  # the complete boxes before the cut still count; say that more may be missing
            say(f"{source.label}: the answer was cut off at --max-tokens {self.args.max_tokens}; "
                f"boxes after the first {len(boxes)} may be missing", error=False)
        if not boxes:
            say(f"{source.label}: no boxes found for {self.args.detect!r} (answer: {text[:80]!r})", error=False)
        if self.args.draw:
            try:
                draw_boxes(image, boxes).save(self.args.draw)
            except (OSError, ValueError) as e:
                raise Failure(Exit.FAILED, f"--draw {self.args.draw}: cannot write the image ({e})") from None
        return [b.to_dict() for b in boxes]

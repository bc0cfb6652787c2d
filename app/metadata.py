"""`--write-metadata`: the caption, alt text, title and keywords written into each
photo (or an XMP sidecar beside it). Before an image is captioned its target is
checked (so a read-only file or a symlink costs no model time) and an image
that already has a description is skipped unless --overwrite; after, the answer
is parsed, written atomically (captioning/safe_write.py) and printed."""

from __future__ import annotations

import os

from captioning.errors import Exit, Failure

from .batch import Source
from .output import say

MODES = ("embed", "sidecar")
SIDECAR_NAMES = ("adobe", "darktable")


def add_flags(parser) -> None:
    g = parser.add_argument_group("photo metadata (needs the metadata extra)")
    g.add_argument("--write-metadata", nargs="?", const="embed", choices=MODES, metavar="embed|sidecar",
                   help="write title, alt text, description and keywords into each photo as XMP (+ IPTC/EXIF "
                        "mirrors), or into an .xmp sidecar beside it (default: embed)")
    g.add_argument("--sidecar-name", choices=SIDECAR_NAMES, default="adobe",
                   help="sidecar naming: adobe IMG.xmp, darktable IMG.JPG.xmp (default: adobe)")
    g.add_argument("--language", default="English", metavar="LANG",
                   help="language of the written metadata (default: English)")
    g.add_argument("--overwrite", action="store_true", help="replace a description the photo already has")
    g.add_argument("--dry-run", action="store_true", help="print what would be written, write nothing")
    g.add_argument("--touch", action="store_true", help="set the file's modification time to now (default: kept)")


def check_flags(args, usage_error) -> None:
    if args.write_metadata is None:
        given = [f for f, v in (("--overwrite", args.overwrite), ("--dry-run", args.dry_run),
                                ("--touch", args.touch), ("--language", args.language != "English"))
                 if v]
        if given:
            raise usage_error(f"{', '.join(given)} only apply with --write-metadata")
        return
    if args.detect is not None or args.prompt is not None or args.json_schema is not None:
        raise usage_error("--write-metadata asks its own question and holds the answer to its own schema; it "
                          "cannot be combined with --detect, --prompt or --json-schema")
    if not args.language.strip():
        raise usage_error("--language needs a language, e.g. --language German")


class MetadataWriter:
    def __init__(self, args):
        from captioning.metadata import require

        require()  # once, before any image, rather than once per image
        self.naming = args.sidecar_name if args.write_metadata == "sidecar" else None
        self.overwrite, self.dry_run, self.touch = args.overwrite, args.dry_run, args.touch
        self.targets: dict[str, object] = {}
        self.cleaned: set[str] = set()

    def wanted(self, source: Source) -> bool:
        """Check the target before any model time is spent: False to skip the image
        (it already has a description), Failure(IMAGE) when it cannot be written."""
        from captioning import metadata, safe_write

        if source.path is None:
            raise Failure(Exit.IMAGE, f"{source.label}: --write-metadata writes into image files; "
                                      "name the file instead")
        if not os.path.isfile(source.path):
            return True  # reading the image reports it
        folder = os.path.dirname(source.path) or "."
        if folder not in self.cleaned and not self.dry_run:
            safe_write.remove_stale(folder)  # temporary files of a killed run
            self.cleaned.add(folder)
        target = metadata.prepare(source.path, source.label, self.naming)
        if target.described and not self.overwrite:
            say(f"{target.label}: already has a description; skipped (--overwrite replaces it)", error=False)
            return False
        self.targets[source.key] = target
        return True

    def finish(self, source: Source, text: str, record: dict) -> str:
        """Write the answer (unless --dry-run), add it to the record; returns what to print."""
        from captioning import metadata

        target = self.targets.pop(source.key)
        fields = metadata.write(target, text, dry_run=self.dry_run, touch=self.touch)
        record["metadata"] = {**fields.to_dict(), "file": os.path.abspath(target.path), "written": not self.dry_run}
        lines = [f"title: {fields.title}", f"alt text: {fields.alt_text}", f"description: {fields.description}",
                 f"keywords: {', '.join(fields.keywords)}",
                 f"{'dry run, would write' if self.dry_run else 'written'}: {target.path}"]
        return "\n".join(lines)

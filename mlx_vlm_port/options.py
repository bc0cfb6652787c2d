"""Options, one model per concern: how to sample the next token, and how much
of an image the model sees. Defaults, limits and help are written here once;
`generate`, the processor, the CLI's flags, the service's request checks and
the menubar's presets all read them from these two dataclasses."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field


class UnsupportedOption(ValueError):
    """An image option of the other family (e.g. max_image_tokens for a SmolVLM checkpoint)."""


@dataclass(frozen=True)
class Spec:
    """What one option accepts: its type, range, help line and (image options) families."""

    kind: type
    help: str
    low: float | None = None
    high: float | None = None
    strict_low: bool = False  # low itself is refused
    families: tuple[str, ...] = ()  # model_types the option applies to; () = every family

    @property
    def what(self) -> str:
        if self.kind is bool:
            return "true or false"
        noun, fmt = ("a whole number", "d") if self.kind is int else ("a number", "g")
        if self.low is not None and self.high is not None:
            return f"{noun} in {'(' if self.strict_low else '['}{self.low:{fmt}}, {self.high:{fmt}}]"
        if self.low is not None:
            return f"{noun} {'>' if self.strict_low else '>='} {self.low:{fmt}}"
        return noun

    def check(self, value):
        """`value` if it is of the right type and in range, else ValueError("expected …")."""
        ok = isinstance(value, self.kind) and (self.kind is bool or not isinstance(value, bool))
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value, ok = float(value), True
        if ok and self.kind is not bool:
            if not math.isfinite(value):  # NaN passes every comparison below
                ok = False
            if self.low is not None and (value <= self.low if self.strict_low else value < self.low):
                ok = False
            if self.high is not None and value > self.high:
                ok = False
        if not ok:
            raise ValueError(f"expected {self.what}, got {value!r}")
        return value

    def parse(self, text: str):
        """A command-line string → checked value."""
        if self.kind is bool:
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(text.lower())
            if value is None:
                raise ValueError(f"expected {self.what}, got {text!r}")
            return value
        try:
            value = self.kind(text)
        except ValueError:
            raise ValueError(f"expected {self.what}, got {text!r}") from None
        return self.check(value)


def _option(default, kind: type, help: str, **limits):
    return field(default=default, metadata={"spec": Spec(kind, help, **limits)})


def specs(cls) -> dict[str, Spec]:
    """name → Spec of an options dataclass, in declaration order."""
    return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls)}


class _Checked:
    def __post_init__(self):
        for name, spec in specs(type(self)).items():
            value = getattr(self, name)
            if value is not None:
                try:
                    object.__setattr__(self, name, spec.check(value))
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None

    @classmethod
    def from_dict(cls, values: dict):
        """Build from a request's fields, checking each; unknown names are the caller's business."""
        return cls(**{k: v for k, v in values.items() if k in specs(cls)})

    def given(self) -> dict:
        """The options set (not None), by name."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def updated(self, **values):
        """These options with the values given (not None) in their place, checked."""
        return dataclasses.replace(self, **{k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class SamplingOptions(_Checked):
    """How tokens are chosen. Defaults are the LFM2-VL model card's; temperature 0 is greedy."""

    max_tokens: int = _option(256, int, "most tokens to generate", low=1)
    temperature: float = _option(0.1, float, "sampling temperature, 0 = greedy", low=0)
    top_p: float = _option(1.0, float, "keep the most likely tokens up to this probability mass (1 = off)",
                           low=0, high=1, strict_low=True)
    min_p: float = _option(0.15, float, "drop tokens less likely than this times the top one", low=0, high=1)
    repetition_penalty: float = _option(1.05, float, "penalise tokens already in the text (1 = off)",
                                        low=0, strict_low=True)
    seed: int | None = _option(None, int, "seed for reproducible sampling", low=0, high=2**64 - 1)  # MLX's: uint64


LFM2_VL, IDEFICS3 = ("lfm2_vl",), ("idefics3",)


@dataclass(frozen=True)
class ImageOptions(_Checked):
    """How much of an image the encoder sees; None keeps the checkpoint's own setting.
    Each option applies to the families its Spec names."""

    min_image_tokens: int | None = _option(None, int, "LFM2-VL: fewest tokens for one view", low=1,
                                           families=LFM2_VL)
    max_image_tokens: int | None = _option(None, int, "LFM2-VL: most tokens for one view", low=1,
                                           families=LFM2_VL)
    min_tiles: int | None = _option(None, int, "LFM2-VL: fewest tiles of a large image", low=1, families=LFM2_VL)
    max_tiles: int | None = _option(None, int, "LFM2-VL: most tiles of a large image", low=1, families=LFM2_VL)
    use_thumbnail: bool | None = _option(None, bool, "LFM2-VL: add a thumbnail view to the tiles",
                                         families=LFM2_VL)
    longest_edge: int | None = _option(None, int, "SmolVLM: resize the longest edge to this before tiling",
                                       low=1, families=IDEFICS3)
    do_image_splitting: bool | None = _option(None, bool, "cut a large image into tiles (false: one view)")

    @staticmethod
    def names_for(family: str) -> tuple[str, ...]:
        """The options a family (model_type) takes."""
        return tuple(n for n, s in specs(ImageOptions).items() if not s.families or family in s.families)

    def for_family(self, family: str, label: str | None = None) -> dict:
        """The options set, checked against `family`; UnsupportedOption names the others."""
        allowed = self.names_for(family)
        unknown = sorted(set(self.given()) - set(allowed))
        if unknown:
            raise UnsupportedOption(f"{', '.join(unknown)} does not apply to {label or family} "
                                    f"checkpoints (their image options: {', '.join(allowed)})")
        return self.given()

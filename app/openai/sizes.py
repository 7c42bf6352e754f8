"""``size``: the model's native size, ``auto``, or a square integer multiple of it.

A DDPM draws at the size it was trained at (8x8 for the digits model). Clients that only offer
OpenAI's sizes (``256x256``, ``1024x1024``) still work: a multiple of the native side is the
native image upscaled by nearest neighbour, which keeps every pixel exactly as drawn, and the
response says so. Anything else is a 400 naming the sizes allowed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import OpenAIError

DEFAULT_MAX_SIDE = 1024  # the largest side served; 1024 is the largest square size OpenAI's clients offer
_SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")


@dataclass(frozen=True)
class SizeChoice:
    native: int  # the model's side in pixels
    factor: int  # nearest-neighbour upscale factor; 1: native

    @property
    def side(self) -> int:
        return self.native * self.factor

    @property
    def text(self) -> str:
        return f"{self.side}x{self.side}"

    def note(self) -> str:
        """Said in ``revised_prompt`` when the image was enlarged."""
        if self.factor == 1:
            return ""
        n = self.native
        return f"; drawn at {n}x{n} and upscaled {self.factor}x to {self.text} by nearest neighbour"


def size_choices(native: int, max_side: int = DEFAULT_MAX_SIDE) -> list[str]:
    """Every ``size`` served, for the OpenAPI document's enum: ``auto`` and each NxN."""
    top = max(native, max_side - max_side % native)
    return ["auto", *(f"{s}x{s}" for s in range(native, top + 1, native))]


def allowed_sizes(native: int, max_side: int = DEFAULT_MAX_SIDE) -> str:
    """The sizes allowed, in words, for the 400 and the docs."""
    top = max(native, max_side - max_side % native)
    examples = [s for s in (native, 256, 512, 1024) if s % native == 0 and native <= s <= top]
    if top not in examples:
        examples.append(top)
    shown = ", ".join(f"{s}x{s}" for s in sorted(set(examples)))
    return f"'auto' ({native}x{native}, native) or NxN with N a multiple of {native} from {native} to {top} ({shown})"


def choose_size(size: str | None, native: int, max_side: int = DEFAULT_MAX_SIDE) -> SizeChoice:
    """``auto`` / None: native; ``NxN`` with N = k * native <= max(max_side, native): upscale k."""
    if size is None or size == "auto":
        return SizeChoice(native, 1)
    match = _SIZE.match(size)
    if match:
        width, height = int(match.group(1)), int(match.group(2))
        if width == height and width % native == 0 and native <= width <= max(max_side, native):
            return SizeChoice(native, width // native)
    raise OpenAIError(400, f"size={size!r} is not served; allowed: {allowed_sizes(native, max_side)}",
                      param="size", code="invalid_size")

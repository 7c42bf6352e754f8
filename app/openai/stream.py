"""OpenAI's image stream: server-sent events the SDK's ``Stream[ImageGenStreamEvent]`` reads.

Each event is ``event: <type>`` plus ``data: <json>`` whose ``type`` repeats the event name:

- ``image_generation.partial_image``: the network's current prediction of the clean image x0
  (eq. 15 of Ho et al.: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)), at up to
  ``partial_images`` evenly spaced steps of each image, ``partial_image_index`` 0, 1, ...;
- ``image_generation.completed``: the final image, one event per image.

The SDK's events hold one image each; for n > 1 the extra field ``image_index`` says which
(and ``seed`` on ``completed``). ``usage`` is required by the SDK's type: a DDPM reads no
tokens, so every count is 0. An error after the stream began is an ``error`` event with
OpenAI's envelope as data, which the SDK raises as ``APIError`` with our message.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .encoding import b64
from .errors import OpenAIError
from .plan import ImagesPlan

PARTIAL = "image_generation.partial_image"
COMPLETED = "image_generation.completed"
_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
          "output_tokens": 0, "total_tokens": 0}


def frame(event: str, data: Any) -> bytes:
    """One server-sent event, as OpenAI's API frames it."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _common(plan: ImagesPlan, created: int) -> dict[str, Any]:
    return {"created_at": created, "output_format": plan.output_format, "size": plan.size.text,
            "background": "opaque", "quality": "auto"}


def partial_event(plan: ImagesPlan, encoded: bytes, *, image_index: int, partial_index: int,
                  created: int) -> bytes:
    return frame(PARTIAL, {"type": PARTIAL, "b64_json": b64(encoded), "partial_image_index": partial_index,
                           "image_index": image_index, **_common(plan, created)})


def completed_event(plan: ImagesPlan, encoded: bytes, *, image_index: int, seed: int, created: int) -> bytes:
    data: dict[str, Any] = {"type": COMPLETED, "b64_json": b64(encoded), "image_index": image_index, "seed": seed,
                            "revised_prompt": plan.revised_prompt, "usage": _USAGE, **_common(plan, created)}
    if plan.safety_identifier:
        data["safety_identifier"] = plan.safety_identifier
    return frame(COMPLETED, data)


def error_event(error: OpenAIError) -> bytes:
    return frame("error", error.body())


def preview_every(steps: int, partial_images: int) -> int:
    """Steps between two x0 previews so that ``partial_images`` of them fall evenly inside the
    chain (at steps/(k+1), 2 steps/(k+1), ...; never at the end, where the image itself comes).
    0: no previews."""
    if partial_images <= 0 or steps <= 1:
        return 0
    return max(1, math.ceil(steps / (partial_images + 1)))


class PartialCounter:
    """Caps the partial images of each image at ``limit`` and numbers them 0, 1, ...
    (the engine previews every k steps until the image is done, which can be once more)."""

    def __init__(self, n: int, limit: int) -> None:
        self.sent = [0] * n
        self.limit = limit

    def next_index(self, image_index: int) -> int | None:
        """The partial_image_index for this image's next partial, or None when it has had enough."""
        if self.sent[image_index] >= self.limit:
            return None
        self.sent[image_index] += 1
        return self.sent[image_index] - 1

"""OpenAI's image stream: server-sent events the SDK's ``Stream[ImageGenStreamEvent]`` reads
(``image_generation.*``), or for an edit its ``Stream[ImageEditStreamEvent]`` (``image_edit.*``).

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
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from ..events import Done, Failed, ImageReady, Progress
from ..generation import Submission
from ..http_errors import detail_of, headers_of, status_of
from ..routes.generate import KEEPALIVE_S
from ..service import Service
from .encoding import b64, encode_image
from .errors import OpenAIError, from_status
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
    kind = f"{plan.events}.partial_image"
    return frame(kind, {"type": kind, "b64_json": b64(encoded), "partial_image_index": partial_index,
                           "image_index": image_index, **_common(plan, created)})


def completed_event(plan: ImagesPlan, encoded: bytes, *, image_index: int, seed: int, created: int) -> bytes:
    kind = f"{plan.events}.completed"
    data: dict[str, Any] = {"type": kind, "b64_json": b64(encoded), "image_index": image_index, "seed": seed,
                            "revised_prompt": plan.revised_prompt, "usage": _USAGE, **_common(plan, created)}
    if plan.safety_identifier:
        data["safety_identifier"] = plan.safety_identifier
    return frame(kind, data)


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


def encode(plan: ImagesPlan, image: Any) -> bytes:
    return encode_image(image, plan.output_format, compression=plan.compression, factor=plan.size.factor)


async def image_stream(service: Service, plan: ImagesPlan, submission: Submission,
                       request: Request) -> AsyncIterator[bytes]:
    """Partial images (x0 predictions) as previews arrive, each image as it finishes, or an error."""
    partials = PartialCounter(plan.n, plan.partial_images)
    try:
        async for event in submission.events(KEEPALIVE_S):
            if event is None:
                yield b": keep-alive\n\n"
                continue
            match event:
                case Progress(previews=previews) if previews:
                    for index, image in previews.items():
                        number = partials.next_index(index)
                        if number is not None:
                            encoded = await run_in_threadpool(encode, plan, image)
                            yield partial_event(plan, encoded, image_index=index, partial_index=number,
                                                created=int(time.time()))
                case ImageReady(index=index, seed=seed, image=image):
                    encoded = await run_in_threadpool(encode, plan, image)
                    yield completed_event(plan, encoded, image_index=index, seed=seed, created=int(time.time()))
                case Done():
                    service.metrics.request_duration.observe(submission.timings()["total_s"])
                    return
                case Failed(error=error):
                    envelope = from_status(status_of(error), detail_of(error), headers=headers_of(error))
                    request.state.outcome = envelope.status  # counted as the client saw it, not as the 200
                    yield error_event(envelope)
                    return
                case _:
                    continue
    finally:
        submission.cancel()  # the client left mid-stream: free the rows

"""The answer to ``POST /v1/images/generations`` in OpenAI's shape (``ImagesResponse``).

``created``, ``data`` (``b64_json`` or ``url``, with ``revised_prompt``), ``output_format``,
``size``, ``background`` (always ``opaque``: a DDPM draws every pixel) and, when the request
named one, ``safety_identifier``. One documented extra object, ``ddpm``, says what was drawn:
model, label, class, seeds, steps, sampler, guidance, native size and upscale factor. The SDK
keeps unknown fields, so ``response.model_extra["ddpm"]`` reads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .encoding import b64
from .plan import ImagesPlan


def ddpm_extra(plan: ImagesPlan, model: str, seeds: Sequence[int], resolved: Mapping[str, Any]) -> dict[str, Any]:
    """What was drawn; ``resolved`` holds the native path's final steps, sampler and guidance."""
    native = plan.size.native
    return {"model": model, "label": plan.label, "seeds": list(seeds), **resolved,
            "native_size": f"{native}x{native}", "upscale": plan.size.factor}


def images_response(plan: ImagesPlan, encoded: Sequence[bytes], *, created: int, extra: Mapping[str, Any],
                    urls: Sequence[str] | None = None) -> dict[str, Any]:
    """The JSON body; ``urls`` (one per image, ``encoded`` then unused) when ``response_format`` is ``url``."""
    if plan.response_format == "url":
        if urls is None or len(urls) != plan.n:
            raise ValueError("response_format=url needs one URL per image")
        data = [{"url": u, "revised_prompt": plan.revised_prompt} for u in urls]
    else:
        data = [{"b64_json": b64(e), "revised_prompt": plan.revised_prompt} for e in encoded]
    body: dict[str, Any] = {"created": created, "data": data, "output_format": plan.output_format,
                            "size": plan.size.text, "background": "opaque", "ddpm": dict(extra)}
    if plan.safety_identifier:
        body["safety_identifier"] = plan.safety_identifier
    return body

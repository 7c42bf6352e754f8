"""Our OpenAI-shaped bytes, read by the official ``openai`` SDK (over an in-memory transport):
what the SDK sends, our request model accepts; our error envelope becomes the SDK's own exception
classes carrying our message; its retry honours our Retry-After; our stream events parse as its
``ImageGenStreamEvent``s. (tests/test_openai_live.py drives a real server the same way.)"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import Any

import httpx2
import numpy as np
import openai
import pytest
from fastapi import FastAPI, HTTPException
from openai.types import ImageGenCompletedEvent, ImageGenPartialImageEvent

from app.openai import OpenAIError, from_status, images_request_model, plan_images
from app.openai.encoding import encode_image
from app.openai.envelope import OpenAIEnvelope
from app.openai.stream import PartialCounter, completed_event, error_event, partial_event, preview_every

from .conftest import tiny_config

Handler = Callable[[httpx2.Request], httpx2.Response]


def client(handler: Handler, *, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(api_key="k", base_url="http://ddpm.test/v1", max_retries=max_retries,
                         http_client=httpx2.Client(transport=httpx2.MockTransport(handler)))


def answer(error: OpenAIError) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(error.status, json=error.body(), headers=error.headers())
    return handler


def test_what_the_sdk_sends_our_request_model_accepts() -> None:
    config = tiny_config()
    Body = images_request_model(config, max_images=4, max_steps=10, max_guidance=5.0)
    sent: list[dict[str, Any]] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        sent.append(json.loads(request.content))
        return httpx2.Response(200, json={"created": 1, "data": []})

    client(handler).images.generate(
        model=config.name, prompt="a 7", n=2, size="16x16", response_format="b64_json", output_format="webp",
        output_compression=80, quality="high", style="natural", background="opaque", moderation="auto",
        user="someone", extra_body={"seed": 3, "steps": 5, "sampler": "ddim", "eta": 0.0, "guidance": 1.0})
    body = Body.model_validate(sent[0])
    plan = plan_images(body, config)
    assert plan.native == {"n": 2, "seed": 3, "steps": 5, "sampler": "ddim", "eta": 0.0, "label": 7, "guidance": 1.0}
    assert (plan.output_format, plan.compression, plan.size.factor) == ("webp", 80, 2)


@pytest.mark.parametrize(("status", "exception"), [
    (400, openai.BadRequestError), (401, openai.AuthenticationError), (404, openai.NotFoundError),
    (413, openai.APIStatusError), (429, openai.RateLimitError), (500, openai.InternalServerError),
    (503, openai.InternalServerError), (504, openai.InternalServerError),
])
def test_each_status_is_the_sdks_exception_with_our_message(status: int, exception: type[Exception]) -> None:
    error = from_status(status, f"our message for {status}", retry_after=3 if status in (429, 503) else None)
    with pytest.raises(exception) as info:
        client(answer(error)).images.generate(prompt="7")
    raised = info.value
    assert isinstance(raised, openai.APIStatusError) and raised.status_code == status
    assert f"our message for {status}" in raised.message
    assert raised.type == error.type and raised.code == error.body()["error"]["code"]
    assert (raised.response.headers.get("retry-after") == "3") == (status in (429, 503))


def test_native_422_detail_becomes_a_400_bad_request() -> None:
    detail = [{"field": "n", "msg": "n: Input should be less than or equal to 4"}]
    with pytest.raises(openai.BadRequestError, match="less than or equal to 4"):
        client(answer(from_status(422, detail))).images.generate(prompt="7")


def test_retry_after_is_taken_from_native_headers_and_rounded_up() -> None:
    assert from_status(429, "full", headers={"Retry-After": "2"}).headers()["Retry-After"] == "2"
    assert OpenAIError(429, "full", retry_after=0.2).headers()["Retry-After"] == "1"
    assert OpenAIError(429, "full", retry_after=2.5).headers()["Retry-After"] == "3"
    assert "Retry-After" not in from_status(400, "bad", headers={"X": "y"}).headers()
    assert OpenAIError(401, "who").headers()["WWW-Authenticate"] == "Bearer"


def test_the_sdk_retries_a_429_after_our_retry_after() -> None:
    times: list[float] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        times.append(time.monotonic())
        if len(times) == 1:
            error = OpenAIError(429, "queue full", retry_after=2)
            return httpx2.Response(429, json=error.body(), headers=error.headers())
        return httpx2.Response(200, json={"created": 1, "data": []})

    result = client(handler, max_retries=1).images.generate(prompt="7")
    assert result.created == 1 and len(times) == 2
    # The SDK's own backoff would be 0.5-1 s; it waited our 2 s.
    assert times[1] - times[0] >= 1.9


# ---- the stream ----

def stream_body(frames: list[bytes]) -> Handler:
    def handler(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=b"".join(frames), headers={"content-type": "text/event-stream"})
    return handler


def test_our_stream_events_parse_as_the_sdks_image_stream() -> None:
    config = tiny_config()
    Body = images_request_model(config, max_images=4, max_steps=10, max_guidance=5.0)
    plan = plan_images(Body.model_validate({"prompt": "3", "stream": True, "partial_images": 2, "n": 2,
                                            "output_format": "jpeg", "size": "32x32", "user": "u"}), config)
    image = np.full((8, 8, 1), 200, np.uint8)
    encoded = encode_image(image, plan.output_format, compression=plan.compression, factor=plan.size.factor)
    frames = [partial_event(plan, encoded, image_index=i, partial_index=p, created=5) for p in (0, 1) for i in (0, 1)]
    frames += [completed_event(plan, encoded, image_index=i, seed=10 + i, created=6) for i in (0, 1)]
    events = list(client(stream_body(frames)).images.generate(prompt="3", stream=True, partial_images=2))
    partials = [e for e in events if isinstance(e, ImageGenPartialImageEvent)]
    done = [e for e in events if isinstance(e, ImageGenCompletedEvent)]
    assert [(e.partial_image_index, (e.model_extra or {})["image_index"]) for e in partials] == [
        (0, 0), (0, 1), (1, 0), (1, 1)]
    assert [((e.model_extra or {})["image_index"], (e.model_extra or {})["seed"]) for e in done] == [(0, 10), (1, 11)]
    for event in events:
        assert (event.output_format, event.size, event.created_at > 0) == ("jpeg", "32x32", True)
        assert event.b64_json == base64.b64encode(encoded).decode()
    assert done[0].usage.total_tokens == 0 and done[0].safety_identifier == "u"
    assert (done[0].model_extra or {})["revised_prompt"] == plan.revised_prompt


def test_an_error_event_mid_stream_is_raised_by_the_sdk_with_our_message() -> None:
    config = tiny_config()
    Body = images_request_model(config, max_images=4, max_steps=10, max_guidance=5.0)
    plan = plan_images(Body.model_validate({"prompt": "3", "stream": True, "partial_images": 1}), config)
    encoded = encode_image(np.zeros((8, 8, 1), np.uint8))
    frames = [partial_event(plan, encoded, image_index=0, partial_index=0, created=1),
              error_event(OpenAIError(504, "deadline passed at step 3 of 10"))]
    stream = client(stream_body(frames)).images.generate(prompt="3", stream=True, partial_images=1)
    first = next(iter(stream))
    assert isinstance(first, ImageGenPartialImageEvent)
    with pytest.raises(openai.APIError, match="deadline passed at step 3 of 10"):
        list(stream)


@pytest.mark.parametrize(("steps", "k", "every", "at"), [
    (20, 3, 5, [5, 10, 15]), (20, 1, 10, [10]), (20, 2, 7, [7, 14]), (3, 3, 1, [1, 2]), (1, 3, 0, []),
    (20, 0, 0, []),
])
def test_partial_images_fall_evenly_inside_the_chain(steps: int, k: int, every: int, at: list[int]) -> None:
    assert preview_every(steps, k) == every
    due = [s for s in range(1, steps) if every and s % every == 0]  # the engine previews every `every` steps
    counter = PartialCounter(1, k)
    sent = [s for s in due if counter.next_index(0) is not None]
    assert sent == at and len(sent) <= k


def test_partial_counter_numbers_each_image_separately() -> None:
    counter = PartialCounter(2, 2)
    assert [counter.next_index(i) for i in (0, 1, 0, 0, 1, 1)] == [0, 0, 1, None, 1, None]


# ---- the envelope middleware, on a bare app ----

def enveloped_app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/images/generations")
    async def generations(body: dict[str, int]) -> dict[str, Any]:
        if body.get("full"):
            raise HTTPException(429, "queue full: 3 images waiting", headers={"Retry-After": "3"})
        if body.get("ours"):
            raise OpenAIError(404, "no such model", param="model", code="model_not_found")
        return {"created": 1, "data": []}

    @app.get("/native")
    async def native() -> None:
        raise HTTPException(429, "queue full")

    async def ours(request: Any, exc: Exception) -> Any:
        assert isinstance(exc, OpenAIError)
        return exc.to_response()

    app.add_exception_handler(OpenAIError, ours)
    app.add_middleware(OpenAIEnvelope)
    return app


def test_envelope_rewrites_native_errors_only_under_the_openai_paths() -> None:
    async def run() -> None:
        transport = httpx2.ASGITransport(app=enveloped_app())
        async with httpx2.AsyncClient(transport=transport, base_url="http://t") as raw:
            sdk = openai.AsyncOpenAI(api_key="k", base_url="http://t/v1", max_retries=0, http_client=raw)
            with pytest.raises(openai.RateLimitError) as full:
                await sdk.images.generate(prompt="7", extra_body={"full": 1})
            assert full.value.message.endswith("queue full: 3 images waiting")
            assert full.value.response.headers["retry-after"] == "3" and full.value.code == "rate_limit_exceeded"
            with pytest.raises(openai.BadRequestError) as bad:  # FastAPI's 422 for a body that is no dict of ints
                await sdk.images.generate(prompt="seven")
            assert bad.value.param == "prompt" and "valid integer" in bad.value.message
            with pytest.raises(openai.NotFoundError) as ours:  # already in the envelope: untouched
                await sdk.images.generate(prompt="7", extra_body={"ours": 1})  # type: ignore[arg-type]
            assert (ours.value.code, ours.value.param, ours.value.message) == (
                "model_not_found", "model", "Error code: 404 - no such model")
            with pytest.raises(openai.NotFoundError):
                await sdk.models.list()  # no such route: routing's 404, enveloped
            assert (await raw.get("/native")).json() == {"detail": "queue full"}  # other paths keep their shape
            ok = await raw.post("/v1/images/generations", json={})
            assert ok.status_code == 200 and ok.json() == {"created": 1, "data": []}

    asyncio.run(run())

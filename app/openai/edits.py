"""``POST /v1/images/edits`` and ``POST /v1/images/variations``: OpenAI's forms on the native editing API.

Each form becomes the native ``/v1/edits`` body (``EditBody``) and runs the native path itself
(``routes.edits.build``, ``submit_rows``): the same checks, the same rows in the same batches,
so with the same seed and parameters the images are byte-identical to ``/v1/edits``'s.

- edits: the prompt picks the class (``prompts.py``); with a ``mask`` (OpenAI's: transparent =
  edit, converted in ``uploads.py``), or an image with transparent pixels, RePaint inpainting of
  that area; otherwise SDEdit of the whole image at ``strength`` (default 0.5).
- variations: an SDEdit of the image at ``strength`` (default 0.5) under the null label (or the
  extra ``label``). Why SDEdit and not the native ``/v1/variations`` (fig. 7): that one continues
  a *sampled* chain from a shared x_t, it has no input image; OpenAI's variations start from the
  client's image, and noising that image to t and denoising it is exactly SDEdit.

(No ``from __future__ import annotations``: FastAPI reads the form models' annotations.)
"""

import base64
import time
from dataclasses import replace
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from model.editing import DEFAULT_INPAINT_STRENGTH, DEFAULT_SDEDIT_STRENGTH
from model.image_input import ImageInputError

from ..edit_requests import EditBody, limits
from ..errors import InvalidRequest, UploadTooLarge
from ..routes.edits import build, submit_rows
from ..routes.generate import outcome
from ..service import Service
from .edit_forms import EditForm, ImageForm, VariationForm
from .encoding import encode_image
from .openapi import ImagesResponseBody, errors
from .plan import ImagesPlan, plan_upload
from .prompts import ClassChoice, choose_class
from .response import ddpm_extra, images_response
from .sizes import DEFAULT_MAX_SIDE
from .stream import image_stream, preview_every
from .uploads import native_inputs


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


async def read_inputs(service: Service, form: ImageForm, mask: bytes | None, *,
                      alpha_is_mask: bool = True) -> tuple[str, str | None]:
    """The upload (and OpenAI's mask) as the native body's base64 image and white = regenerate mask."""
    image = await form.image.read()
    try:
        native_image, native_mask = await run_in_threadpool(
            lambda: native_inputs(image, mask, limits(service), alpha_is_mask=alpha_is_mask))
    except ImageInputError as exc:  # the same statuses as the native API's (app.routes.edits.build)
        reason = str(exc).partition(": ")[2]
        raise UploadTooLarge(str(exc)) if exc.too_large else InvalidRequest(exc.field, reason) from exc
    image_b64 = _b64(native_image)
    assert image_b64 is not None
    return image_b64, _b64(native_mask)


def native_body(form: ImageForm, plan: ImagesPlan, image: str, mask: str | None, **edit: Any) -> EditBody:
    """The native edit the form asks for. The form's own schema should refuse everything the
    native body would; should the two ever disagree (a seed bound once did), the client still
    gets a 400 naming the field, not a 500."""
    try:
        return EditBody(image=image, mask=mask, n=plan.n, seed=form.seed, label=plan.label, guidance=form.guidance,
                        steps=form.steps, sampler=form.sampler, eta=form.eta, resize=form.resize,
                        response_format="base64", **edit)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidRequest(".".join(str(part) for part in error["loc"]), error["msg"]) from exc


async def answer(service: Service, request: Request, plan: ImagesPlan, body: EditBody,
                 drawn: dict[str, Any]) -> JSONResponse:
    """Run the native edit and answer in OpenAI's shape."""
    built = await build(service, request, body)
    r = built.resolved
    request.state.sampler = r.sampler  # the request counter's label
    images = built.ready
    if built.specs:
        images = await outcome(submit_rows(service, request, r, built.specs, progress=False), request)
    encoded = await run_in_threadpool(
        lambda: [encode_image(im, plan.output_format, compression=plan.compression, factor=plan.size.factor)
                 for im in images])
    extra = ddpm_extra(plan, service.name, r.seeds,
                       {"steps": r.steps, "sampler": r.sampler, "guidance": r.guidance, **drawn})
    content = images_response(plan, encoded, created=int(time.time()), extra=extra)
    return JSONResponse(content, headers={"X-Seed": str(r.seeds[0]), "X-Seeds": ",".join(map(str, r.seeds))})


async def stream_answer(service: Service, request: Request, plan: ImagesPlan, body: EditBody) -> StreamingResponse:
    """OpenAI's image_edit.* events: partial images (x0 predictions), then each image."""
    built = await build(service, request, body)
    request.state.sampler = built.resolved.sampler
    submission = submit_rows(service, request, built.resolved, built.specs, progress=True)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **submission.seed_headers()}
    return StreamingResponse(image_stream(service, plan, submission, request), media_type="text/event-stream",
                             headers=headers)


def make_edit_router(service: Service, *, max_side: int = DEFAULT_MAX_SIDE) -> APIRouter:
    router = APIRouter(tags=["OpenAI-compatible"])
    config = service.model.config
    declared = {200: {"model": ImagesResponseBody, "description": "OpenAI's ImagesResponse"},
                **errors(400, 401, 404, 413, 429, 500, 503, 504)}
    streamed = {200: {"model": ImagesResponseBody, "content": {"text/event-stream": {}},
                      "description": "OpenAI's ImagesResponse, or (stream) its image_edit stream events"},
                **errors(400, 401, 404, 413, 429, 500, 503, 504)}

    @router.post("/v1/images/edits", summary="Edit an image (OpenAI's Images API): RePaint or SDEdit",
                 responses=streamed)
    async def image_edits(request: Request, form: Annotated[EditForm, Form(media_type="multipart/form-data")]
                          ) -> Any:
        choice = choose_class(form.prompt, config, name=service.name)
        plan = plan_upload(form, config, choice, name=service.name, max_side=max_side)
        mask = None if form.mask is None else await form.mask.read()
        image, native_mask = await read_inputs(service, form, mask)
        mode = "repaint" if native_mask is not None else "sdedit"
        previews = preview_every(form.steps or service.plan.default_steps, plan.partial_images)
        body = native_body(form, plan, image, native_mask, strength=form.strength, jumps=form.jumps,
                           jump_length=form.jump_length, preview_every=previews)
        plan = _said(plan, f"; {mode} of the {'transparent area' if native_mask else 'whole image'}")
        if plan.stream:
            return await stream_answer(service, request, plan, body)
        default = DEFAULT_INPAINT_STRENGTH if native_mask else DEFAULT_SDEDIT_STRENGTH
        strength = default if form.strength is None else form.strength
        return await answer(service, request, plan, body, {"mode": mode, "strength": strength})

    @router.post("/v1/images/variations", summary="Variations of an image (OpenAI's Images API): SDEdit",
                 responses=declared)
    async def image_variations(request: Request,
                               form: Annotated[VariationForm, Form(media_type="multipart/form-data")]
                               ) -> JSONResponse:
        problem = config.label_problem(form.label)
        if problem:
            raise InvalidRequest("label", problem)
        names = config.class_names
        said = ("the null label (unconditional)" if form.label is None else
                f"class {names[form.label] if names else str(form.label)!r} (label {form.label})")
        plan = plan_upload(form, config, ClassChoice(form.label, f"variation: SDEdit at strength "
                                                                  f"{form.strength:g} under {said}"),
                           name=service.name, max_side=max_side)
        image, _ = await read_inputs(service, form, None, alpha_is_mask=False)
        body = native_body(form, plan, image, None, strength=form.strength)
        return await answer(service, request, plan, body, {"mode": "sdedit", "strength": form.strength})

    return router


def _said(plan: ImagesPlan, note: str) -> ImagesPlan:
    return replace(plan, revised_prompt=plan.revised_prompt + note)

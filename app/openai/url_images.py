"""``GET /v1/images/jobs/{job_id}/images/{index}``: a stored image in the format and size a
``response_format=url`` request asked for.

The job store keeps the native PNG; this route reads it (the caller's key must own the job, as for
``/v1/jobs/{id}/images/{i}``: another key's job is a 404) and re-encodes it exactly as ``b64_json``
would have been encoded (``encoding.encode_image``: the same upscale, format and quality), so a
URL's bytes equal the ``b64_json`` of the same request. Errors are in OpenAI's envelope (the path
is under ``/v1/images``).

(No ``from __future__ import annotations``: FastAPI reads the parameters' annotations.)
"""

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from model.images import decode_png

from ..http import request_owner
from ..job_service import JobService
from ..service import Service
from .encoding import MEDIA_TYPES, OutputFormat, encode_image
from .openapi import errors
from .stored import REENCODE_PATH


def reencode(png: bytes, output_format: OutputFormat, compression: int, factor: int) -> bytes:
    if output_format == "png" and factor == 1:
        return png  # the stored bytes are already the answer
    return encode_image(decode_png(png), output_format, compression=compression, factor=factor)


def add_reencoding_route(router: APIRouter, service: Service, jobs: JobService, *, max_factor: int) -> None:
    store, settings = jobs.store, service.settings

    @router.get(REENCODE_PATH, response_class=Response, summary="An image of a response_format=url request",
                responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}}, **errors(400, 401, 404, 409, 410)})
    async def stored_image(request: Request, job_id: str = Path(max_length=64), index: int = Path(ge=0),
                           output_format: OutputFormat = "png",
                           output_compression: int = Query(100, ge=0, le=100),
                           upscale: int = Query(1, ge=1, le=max_factor)) -> Response:
        png = await run_in_threadpool(store.image, job_id, index, request_owner(request, settings.keys))
        data = await run_in_threadpool(reencode, png, output_format, output_compression, upscale)
        return Response(data, media_type=MEDIA_TYPES[output_format], headers={
            "Cache-Control": f"private, max-age={int(settings.job_ttl_s)}, immutable"})

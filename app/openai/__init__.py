"""The OpenAI-compatible API (``/v1/images/generations``, ``/edits``, ``/variations``, ``/v1/models``):
the pieces that do not depend on the server's wiring, one concept a module.

- ``request``: the body, OpenAI's fields plus the DDPM's (``images_request_model``)
- ``plan``: the request resolved against the model into native generation fields (``plan_images``)
- ``prompts``: prompt -> class (``choose_class``); ``sizes``: size -> upscale (``choose_size``)
- ``encoding``: png (identical to ``/generate``), jpeg, webp; ``response``: ``ImagesResponse``
- ``stream``: OpenAI's image stream events; ``models``: the model list
- ``stored``: ``response_format=url`` as a job in the job store; ``url_images``: its re-encoded images
- ``edits``: ``/v1/images/edits`` and ``/v1/images/variations`` on the native editing API;
  ``edit_forms``: their multipart bodies; ``uploads``: OpenAI's mask (transparent = edit) to ours
- ``errors``: OpenAI's error envelope (``OpenAIError``, ``from_status``, ``from_validation``)
- ``envelope``: the middleware that puts every error under ``/v1/images`` and ``/v1/models`` in it
- ``router``: the routes, and ``install(app, service, dependencies=...)``, which ``create_app`` calls
- ``openapi``: the bodies as the OpenAPI document shows them
"""

from .errors import OpenAIError, from_status, from_validation
from .plan import ImagesPlan, plan_images
from .request import ImagesRequest, images_request_model
from .router import install

__all__ = ["ImagesPlan", "ImagesRequest", "OpenAIError", "from_status", "from_validation", "images_request_model",
           "install", "plan_images"]

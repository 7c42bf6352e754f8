"""``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's shape: the one served model.

``created`` is the checkpoint's training date (its provenance ``date``) when it has one, else
the time the server started; ``owned_by`` is ``ddpm-serve``. An unknown id is a 404
``model_not_found``, as in OpenAI's API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from model import ModelConfig

from .errors import OpenAIError

OWNER = "ddpm-serve"


def created_at(config: ModelConfig, fallback: int) -> int:
    """Unix seconds of the checkpoint's provenance date, else ``fallback``."""
    date = (config.provenance or {}).get("date")
    if isinstance(date, str):
        try:
            return int(datetime.fromisoformat(date).timestamp())
        except ValueError:
            pass
    return fallback


def model_object(name: str, *, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


def model_list(name: str, *, created: int) -> dict[str, Any]:
    return {"object": "list", "data": [model_object(name, created=created)]}


def find_model(name: str, model_id: str, *, created: int) -> dict[str, Any]:
    """The served model as OpenAI's ``Model``, or a 404 ``model_not_found`` for any other id."""
    if model_id != name:
        raise OpenAIError(404, f"The model '{model_id}' does not exist; this server serves '{name}'",
                          param="model", code="model_not_found")
    return model_object(name, created=created)

"""The HTTP server: FastAPI in front of a step-level continuous-batching engine."""

from .api import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]

"""The worker: leased claims, input fetching, backend calls, terminal transitions."""

from .inputs import InputFetchError, InputLoader
from .worker import Worker, pick_seeds

__all__ = ["InputFetchError", "InputLoader", "Worker", "pick_seeds"]

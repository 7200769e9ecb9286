"""The worker: leased claims, input fetching, backend calls, terminal transitions."""

from .inputs import InputError, InputLoader
from .worker import Worker, pick_seeds

__all__ = ["InputError", "InputLoader", "Worker", "pick_seeds"]

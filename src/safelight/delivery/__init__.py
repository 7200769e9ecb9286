"""Callback delivery: the outbox sender, its retry policy, and request signing."""

from .deliverer import CallbackDeliverer, RetryPolicy
from .signing import signature_headers

__all__ = ["CallbackDeliverer", "RetryPolicy", "signature_headers"]

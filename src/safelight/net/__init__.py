"""Safe outbound HTTP. Every request to a user-supplied URL (callbacks, input images, URL uploads)
goes through this package: http(s) only, DNS resolved once and vetted, connection pinned to the
vetted IP, redirects re-checked, byte and time limits, images checked by content with a pixel limit.
"""

from .client import CALLBACK_MAX_RESPONSE_BYTES, FetchResult, fetch, make_client, post_json
from .errors import BadStatus, FetchError, FetchTimeout, ImageError, ResponseTooLarge, UnsafeURLError
from .images import ACCEPTED_TYPES, decode_image, fetch_image, sniff_image_type
from .policy import OutboundPolicy, address_refusal
from .urls import Resolver, check_url, default_resolver, parse_url

__all__ = [
    "ACCEPTED_TYPES",
    "CALLBACK_MAX_RESPONSE_BYTES",
    "BadStatus",
    "FetchError",
    "FetchResult",
    "FetchTimeout",
    "ImageError",
    "OutboundPolicy",
    "Resolver",
    "ResponseTooLarge",
    "UnsafeURLError",
    "address_refusal",
    "check_url",
    "decode_image",
    "default_resolver",
    "fetch",
    "fetch_image",
    "make_client",
    "parse_url",
    "post_json",
    "sniff_image_type",
]

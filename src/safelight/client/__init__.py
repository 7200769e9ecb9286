"""Safelight's Python SDK: one client for Safelight and kie.ai (only `base_url` differs).

    from safelight.client import Client, ZImageInput

    with Client() as client:  # SAFELIGHT_API_KEY / SAFELIGHT_BASE_URL, or KIE_API_KEY for kie.ai
        task = client.run("z-image", ZImageInput(prompt="a lighthouse at dusk", aspect_ratio="16:9"))
        print(client.download(task, "out"))

This package imports nothing from the server; `models.py` is generated from its catalog.
See docs/sdk.md.
"""

from safelight import __version__

from ._async import AsyncClient
from ._base import KIE_BASE_URL, KIE_UPLOAD_URL, SAFELIGHT_DEFAULT_URL
from ._sync import Client
from .errors import (
    APIConnectionError,
    AuthenticationError,
    GenerationFailedError,
    InputValidationError,
    InsufficientCreditsError,
    MaintenanceError,
    ModelDisabledError,
    NotFoundError,
    NotSupportedError,
    RateLimitError,
    SafelightError,
    ServerError,
    SignatureError,
    TaskNotFoundError,
    ValidationError,
    WaitTimeoutError,
)
from .models import (
    CATALOG,
    INPUT_SCHEMAS,
    MODEL_IDS,
    Flux2FlexImageToImageInput,
    Flux2FlexTextToImageInput,
    Flux2ProImageToImageInput,
    Flux2ProTextToImageInput,
    IdeogramCharacterEditInput,
    IdeogramCharacterInput,
    IdeogramCharacterRemixInput,
    IdeogramV3EditInput,
    IdeogramV3ReframeInput,
    IdeogramV3RemixInput,
    IdeogramV3TextToImageInput,
    Imagen4FastInput,
    Imagen4Input,
    Imagen4UltraInput,
    InputModel,
    NanoBanana2Input,
    NanoBananaEditInput,
    NanoBananaInput,
    NanoBananaProInput,
    ZImageInput,
)
from .task import Task, TaskEvent
from .webhooks import verify_callback

__all__ = [
    "CATALOG",
    "INPUT_SCHEMAS",
    "KIE_BASE_URL",
    "KIE_UPLOAD_URL",
    "MODEL_IDS",
    "SAFELIGHT_DEFAULT_URL",
    "APIConnectionError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "Flux2FlexImageToImageInput",
    "Flux2FlexTextToImageInput",
    "Flux2ProImageToImageInput",
    "Flux2ProTextToImageInput",
    "GenerationFailedError",
    "IdeogramCharacterEditInput",
    "IdeogramCharacterInput",
    "IdeogramCharacterRemixInput",
    "IdeogramV3EditInput",
    "IdeogramV3ReframeInput",
    "IdeogramV3RemixInput",
    "IdeogramV3TextToImageInput",
    "Imagen4FastInput",
    "Imagen4Input",
    "Imagen4UltraInput",
    "InputModel",
    "InputValidationError",
    "InsufficientCreditsError",
    "MaintenanceError",
    "ModelDisabledError",
    "NanoBanana2Input",
    "NanoBananaEditInput",
    "NanoBananaInput",
    "NanoBananaProInput",
    "NotFoundError",
    "NotSupportedError",
    "RateLimitError",
    "SafelightError",
    "ServerError",
    "SignatureError",
    "Task",
    "TaskEvent",
    "TaskNotFoundError",
    "ValidationError",
    "WaitTimeoutError",
    "ZImageInput",
    "__version__",
    "verify_callback",
]

"""Settings: every knob is a SAFELIGHT_* environment variable (or a CLI flag that sets one).

Which backend serves which model lives in the routing file named by SAFELIGHT_CONFIG
(`safelight.routing`); without one every model runs on the sandbox backend.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Environment variables renamed since 0.1: old name -> new name. The old one still works, with a warning.
DEPRECATED_ENV = {
    "SAFELIGHT_WORKER_CONCURRENCY": "SAFELIGHT_SANDBOX_CONCURRENCY",
    "SAFELIGHT_MAX_ATTEMPTS": "SAFELIGHT_MAX_CLAIMS",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAFELIGHT_", extra="ignore", populate_by_name=True)

    # Where the embedded store and local result files live.
    data_dir: Path = Path(".safelight")
    # Empty means the embedded SQLite file under data_dir.
    database_url: str = ""
    # Base URL clients reach this server on; result and upload URLs are built from it.
    public_url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000

    # The routing file (safelight.toml): backends and each model's route. Empty: all on the sandbox.
    # Its variable keeps the name users already set: SAFELIGHT_CONFIG.
    routing_file: str = Field("", validation_alias=AliasChoices("routing_file", "SAFELIGHT_CONFIG"))

    # Worker
    sandbox_concurrency: int = Field(4, ge=1, description="tasks in flight on the built-in sandbox backend")
    lease_seconds: float = Field(60.0, gt=0)
    # A task claimed this many times without finishing (its workers died) fails, refunded.
    max_claims: int = Field(3, ge=1)
    task_timeout_seconds: float = Field(600.0, gt=0)

    # Results
    result_url_ttl_seconds: int = 24 * 3600
    download_url_ttl_seconds: int = 20 * 60
    # Result files are deleted this long after their task completed (kie keeps generated media 14 days);
    # the task record stays, with empty resultUrls.
    result_retention_seconds: int = Field(14 * 24 * 3600, ge=0)
    # How often the server runs the retention sweep (`safelight sweep` runs it once by hand).
    retention_sweep_interval_seconds: float = Field(3600.0, ge=0)
    # Uploaded files: kept (and their links valid) for 3 days, as on kie; at most this many bytes.
    upload_retention_seconds: int = 3 * 24 * 3600
    upload_max_bytes: int = 100 * 1024 * 1024

    # Where result files and uploads live: empty for <data_dir>/files, another directory, or
    # s3://bucket/prefix for S3-compatible storage (the `s3` extra; safelight.storage.s3).
    storage_url: str = ""
    # The endpoint of MinIO, Ceph, R2, ... (empty: AWS), and path-style addressing (endpoint/bucket/key);
    # unset, path-style is on exactly when an endpoint is set.
    s3_endpoint_url: str = ""
    s3_path_style: bool | None = None
    # Region and credentials come from the standard AWS variables; without a key pair, obstore's own
    # chain applies (web identity, ECS, instance metadata), and presigned URLs are not available.
    s3_region: str = Field("", validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    s3_access_key_id: str = Field("", validation_alias="AWS_ACCESS_KEY_ID")
    s3_secret_access_key: SecretStr = Field(SecretStr(""), validation_alias="AWS_SECRET_ACCESS_KEY")
    s3_session_token: SecretStr = Field(SecretStr(""), validation_alias="AWS_SESSION_TOKEN")
    # Result and upload URLs: "proxied" (Safelight's own signed /files/ links, streamed from storage)
    # or "presigned" (S3 presigned GET URLs, fetched from the bucket directly; needs S3 and a key pair).
    file_urls: Literal["proxied", "presigned"] = "proxied"

    # Inputs fetched by the worker (reference images).
    input_max_bytes: int = 10 * 1024 * 1024
    input_timeout_seconds: float = 30.0
    input_max_pixels: int = 50_000_000
    # Private targets allowed for outbound requests (callbacks, input URLs): CIDRs and host names,
    # comma-separated, e.g. "127.0.0.1/32,::1/128". Empty: only public addresses.
    outbound_allow: str = ""

    # Callbacks: at least once, signed, retried with exponential backoff and full jitter.
    callback_timeout_seconds: float = Field(15.0, gt=0)
    callback_concurrency: int = Field(16, ge=1)
    # At most this many of those slots serve one account at a time, taken round-robin, so one
    # account's slow or dead receivers never hold back another's callbacks.
    callback_per_account: int = Field(4, ge=1)
    callback_retry_base_seconds: float = Field(5.0, gt=0)
    callback_retry_cap_seconds: float = Field(3600.0, gt=0)
    # Keep retrying at least this long after the task ended (kie documents no policy; 24 h+ is ours).
    callback_retry_window_seconds: float = Field(26 * 3600.0, gt=0)
    callback_max_attempts: int = Field(200, ge=1)

    # Bounded queues: createTask answers 429 (nothing created or charged) while an account has this
    # many unfinished tasks, or the whole server has SAFELIGHT_MAX_QUEUED (counted at most 1 s ago).
    max_queued_per_account: int = Field(1000, ge=1)
    max_queued: int = Field(100_000, ge=1)

    # Request limits; 0 disables the per-key rate limit (kie allows 20 creates / 10 s).
    rate_limit_per_key: int = 0
    rate_limit_window_seconds: float = 10.0
    max_body_bytes: int = 1024 * 1024
    # A request body must arrive within this many seconds of the first read, with no gap between
    # chunks longer than the idle limit; otherwise HTTP 408 and the connection is closed.
    body_timeout_seconds: float = Field(30.0, gt=0)
    body_idle_timeout_seconds: float = Field(10.0, gt=0)

    # The OpenAI Images routes (/v1/images/*) hold the answer until the task ends, at most this long;
    # after it they answer 504 naming the task, which keeps running (recordInfo shows its images).
    openai_wait_seconds: float = Field(300.0, gt=0, le=3600)

    # Prices in credits per image, overriding the catalog's defaults: {"z-image": 1}.
    prices: dict[str, int] = Field(default_factory=dict)

    # Logs: "text" (the default) or "json" (one object per line, from every logger).
    log_format: Literal["text", "json"] = "text"
    # When set, GET /metrics (and a worker's --metrics-port) ask for `Authorization: Bearer <token>`.
    metrics_token: str = ""

    # Demo key printed on the first start of an empty embedded server.
    bootstrap_demo_key: bool = True
    demo_credits: int = 1000

    @model_validator(mode="before")
    @classmethod
    def _deprecated_variables(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for old, new in DEPRECATED_ENV.items():
            field_name = new.removeprefix("SAFELIGHT_").lower()
            if old in os.environ and field_name not in data and new not in os.environ:
                warnings.warn(f"{old} is deprecated; set {new} instead", DeprecationWarning, stacklevel=2)
                data = {**data, field_name: os.environ[old]}
        return data

    @field_validator("public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'safelight.db').resolve()}"

    @property
    def files_dir(self) -> Path:
        return self.data_dir / "files"

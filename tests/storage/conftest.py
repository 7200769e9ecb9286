"""A real S3 protocol server on loopback (moto's server mode) and a fresh bucket per test."""

from __future__ import annotations

import datetime
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from pydantic import SecretStr

from safelight.config import Settings

try:  # S3 storage is the `s3` extra (obstore); moto[server] is in the `dev` extra.
    import moto.server as moto_server
    import obstore  # noqa: F401
except ImportError:  # a partial install skips the S3 tests; in CI they fail to import, loudly
    if not os.environ.get("CI"):
        collect_ignore_glob = ["test_s3_*.py"]

ACCESS_KEY = "AKIDSAFELIGHTTEST"
SECRET_KEY = "safelight-test-secret"
REGION = "us-east-1"
MOTO_ACCOUNT = "123456789012"  # moto's default account, where unsigned and unknown-key requests land


@dataclass(frozen=True)
class Bucket:
    endpoint: str
    name: str

    def url(self, prefix: str = "safelight") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def settings(self, base: Settings, *, prefix: str = "safelight", file_urls: str = "proxied") -> Settings:
        """`base` on this bucket, with the test credentials."""
        return base.model_copy(update={
            "storage_url": self.url(prefix), "s3_endpoint_url": self.endpoint, "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY, "s3_secret_access_key": SecretStr(SECRET_KEY), "file_urls": file_urls})

    def env(self, *, prefix: str = "safelight", file_urls: str = "proxied") -> dict[str, str]:
        """The same, as a process's environment variables."""
        return {"SAFELIGHT_STORAGE_URL": self.url(prefix), "SAFELIGHT_S3_ENDPOINT_URL": self.endpoint,
                "SAFELIGHT_FILE_URLS": file_urls, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_REGION": REGION}

    def object_keys(self) -> list[str]:
        """Every key in the bucket, as the S3 API lists it (prefix included)."""
        from moto.s3.models import s3_backends

        return sorted(s3_backends[MOTO_ACCOUNT]["global"].buckets[self.name].keys.keys())

    def backdate(self, key: str, seconds: float) -> None:
        """Make an object look `seconds` old (S3 has no call for it; this reaches into moto's state)."""
        from moto.s3.models import s3_backends

        stored = s3_backends[MOTO_ACCOUNT]["global"].buckets[self.name].keys[key]
        stored.last_modified = stored.last_modified - datetime.timedelta(seconds=seconds)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 and a free port, for the whole session."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        if server._server is not None:  # stop() leaves the listening socket open
            server._server.server_close()


@pytest.fixture
def bucket(moto_endpoint) -> Bucket:
    """A new, empty bucket on the moto server."""
    name = f"safelight-{uuid.uuid4().hex[:16]}"
    httpx.put(f"{moto_endpoint}/{name}").raise_for_status()
    return Bucket(moto_endpoint, name)

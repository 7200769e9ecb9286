"""Recognising our own file links: by path and a genuine signature, whatever host they name; a URL
that only looks like ours is not ours, and goes through the outbound guard like any other."""

from __future__ import annotations

import time

import pytest

from safelight.net import OutboundPolicy
from safelight.storage import LocalStorage, UrlSigner
from safelight.worker import InputLoader
from safelight.worker.inputs import InputFetchError
from tests.helpers import png_bytes

SECRET = "a-shared-secret"


def test_a_genuine_link_is_ours_whatever_host_it_names():
    api = UrlSigner(SECRET, "https://api.example.com")
    worker = UrlSigner(SECRET, "http://127.0.0.1:8000")  # started without SAFELIGHT_PUBLIC_URL
    url = api.url("uploads/1/refs/a b.png", 600)
    link = worker.own_link(url)
    assert link is not None and link.key == "uploads/1/refs/a b.png" and not link.presigned
    assert not link.expired() and link.expires_at >= time.time() + 590
    assert worker.key_from_url(url.replace("https://api.example.com", "http://10.1.2.3:9")) == "uploads/1/refs/a b.png"
    # Behind a proxy that serves us under a path, and with a key that itself contains "files/".
    proxied = UrlSigner(SECRET, "https://example.com/safelight")
    tricky = proxied.url("uploads/1/files/x.png", 60)
    assert tricky.startswith("https://example.com/safelight/files/uploads/1/files/x.png?")
    assert worker.key_from_url(tricky) == "uploads/1/files/x.png"


def test_an_expired_genuine_link_is_still_recognised_as_expired():
    signer = UrlSigner(SECRET, "http://127.0.0.1:8000")
    link = signer.own_link(signer.url("results/t/0.png", 60, now=time.time() - 3600))
    assert link is not None and link.expired()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/files/uploads/1/x.png?expires=9999999999&signature=" + "0" * 64,
    "http://127.0.0.1:8000/files/uploads/1/x.png",
    "http://127.0.0.1:8000/files/uploads/1/x.png?expires=soon&signature=abc",
    "http://127.0.0.1:8000/files/uploads/1/x.png?expires=1&signature=%C3%A9t%C3%A9",  # non-ASCII
    "ftp://127.0.0.1/files/uploads/1/x.png?expires=1&signature=abc",
    "http://[::1/files/x",  # not even a URL
    "not a url",
])
def test_a_url_that_only_looks_like_ours_is_not_ours(url):
    assert UrlSigner(SECRET, "http://127.0.0.1:8000").own_link(url) is None


def test_another_secret_is_another_server():
    ours, theirs = UrlSigner(SECRET, "http://a.example"), UrlSigner("another", "http://a.example")
    assert ours.own_link(theirs.url("uploads/1/x.png", 60)) is None


def test_the_same_signature_on_another_key_is_not_ours():
    signer = UrlSigner(SECRET, "http://a.example")
    url = signer.url("uploads/1/x.png", 60)
    assert signer.own_link(url.replace("uploads/1/x.png", "uploads/2/x.png")) is None


def test_presigned_links_need_a_store_that_presigns():
    with pytest.raises(ValueError):
        UrlSigner(SECRET, "http://a.example", presign=True)
    signer = UrlSigner(SECRET, "http://a.example")
    assert signer.link("uploads/1/x.png", 60).startswith("http://a.example/files/uploads/1/x.png?")


async def test_a_worker_without_a_public_url_reads_an_api_replicas_upload_from_storage(tmp_path):
    # The regression behind issue 12: the worker's own public URL is the default, the input is an
    # API replica's upload URL on a loopback address. It must come from storage, never over HTTP.
    storage = LocalStorage(tmp_path / "files")
    image = png_bytes(16, 8)
    await storage.put("uploads/7/refs/in.png", image)
    api = UrlSigner(SECRET, "http://127.0.0.1:45678")
    loader = InputLoader(storage=storage, signer=UrlSigner(SECRET, "http://127.0.0.1:8000"),
                         policy=OutboundPolicy.from_string(""), max_bytes=1 << 20, max_pixels=10_000)
    data, mime, decoded = await loader.load("input.input_urls[0]", api.url("uploads/7/refs/in.png", 60))
    assert (data, mime, decoded.size) == (image, "image/png", (16, 8))

    expired = api.url("uploads/7/refs/in.png", 60, now=time.time() - 3600)
    with pytest.raises(InputFetchError, match="is a link to this server that has expired or is not valid"):
        await loader.load("input.input_urls[0]", expired)
    with pytest.raises(InputFetchError, match="points to a file that no longer exists"):
        await loader.load("input.input_urls[0]", api.url("uploads/7/refs/gone.png", 60))
    small = InputLoader(storage=storage, signer=loader.signer, policy=loader.policy, max_bytes=10, max_pixels=10_000)
    with pytest.raises(InputFetchError, match="is larger than 0 MB"):
        await small.load("input.input_urls[0]", api.url("uploads/7/refs/in.png", 60))

    # A forged signature: not ours, so it is fetched through the guard, which refuses loopback.
    forged = api.url("uploads/7/refs/in.png", 60)[:-4] + "beef"
    with pytest.raises(InputFetchError, match=r"^input.input_urls\[0\] is not allowed: 127.0.0.1 is a loopback"):
        await loader.load("input.input_urls[0]", forged)

"""S3Storage against a real S3 protocol server (moto on loopback): the Storage interface, retention
listing, presigned URLs, and recognising our own presigned URLs by their signature."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from pydantic import SecretStr

from safelight.config import Settings
from safelight.storage import LocalStorage, Storage, StorageConfigError, StorageKeyError, open_storage
from safelight.storage.retention import SweepReport, sweep
from safelight.storage.s3 import MAX_PRESIGN_SECONDS, S3Credentials, S3Location, S3Storage, verify_presigned_get
from tests.helpers import png_bytes
from tests.storage.conftest import ACCESS_KEY, REGION, SECRET_KEY, Bucket

CREDENTIALS = S3Credentials(ACCESS_KEY, SECRET_KEY)


def s3(bucket: Bucket, prefix: str = "safelight", **kw) -> S3Storage:
    return S3Storage(S3Location.parse(bucket.url(prefix)), region=REGION, endpoint_url=bucket.endpoint,
                     credentials=kw.pop("credentials", CREDENTIALS), **kw)


async def test_put_get_exists_delete(bucket):
    storage = s3(bucket)
    image = png_bytes(8, 8)
    assert not await storage.exists("uploads/1/a/x.png")
    await storage.put("uploads/1/a/x.png", image)
    assert await storage.exists("uploads/1/a/x.png")
    assert await storage.get("uploads/1/a/x.png") == image
    assert bucket.object_keys() == ["safelight/uploads/1/a/x.png"]  # under the prefix
    await storage.put("uploads/1/a/x.png", b"replaced")
    assert await storage.get("uploads/1/a/x.png") == b"replaced"
    await storage.delete("uploads/1/a/x.png")
    await storage.delete("uploads/1/a/x.png")  # missing: not an error
    assert not await storage.exists("uploads/1/a/x.png")
    with pytest.raises(FileNotFoundError):
        await storage.get("uploads/1/a/x.png")
    assert await storage.open("uploads/1/a/x.png") is None


async def test_open_streams_in_chunks(bucket):
    storage = s3(bucket)
    data = bytes(range(256)) * 4096 + b"tail"  # 1 MiB and a bit
    await storage.put("results/t/0-w/0.png", data)
    opened = await storage.open("results/t/0-w/0.png")
    assert opened is not None and opened.size == len(data) and opened.path is None
    chunks = [chunk async for chunk in opened.chunks]
    assert len(chunks) > 1 and all(isinstance(chunk, bytes) for chunk in chunks)
    assert b"".join(chunks) == data


@pytest.mark.parametrize("key", ["../x", "a/../../x", "/etc/passwd", "", "a//b", "a/./b", "a/"])
async def test_keys_that_are_not_plain_relative_paths_are_refused(bucket, key):
    storage = s3(bucket)
    for call in (storage.put(key, b"x"), storage.get(key), storage.open(key), storage.exists(key),
                 storage.delete(key)):
        with pytest.raises(StorageKeyError):
            await call
    with pytest.raises(StorageKeyError):
        storage.presign(key, 60)


async def test_delete_prefix_removes_one_tasks_results_only(bucket):
    storage = s3(bucket)
    await storage.put("results/abc/1-w/0.png", b"x" * 10)
    await storage.put("results/abc/2-v/0.png", b"y" * 5)
    await storage.put("results/abcd/1-w/0.png", b"keep")
    assert await storage.delete_prefix("results/abc") == 15
    assert bucket.object_keys() == ["safelight/results/abcd/1-w/0.png"]
    assert await storage.delete_prefix("results/none") == 0


async def test_many_deletes_are_batched(bucket):
    storage = s3(bucket)
    keys = [f"uploads/1/p/{index}.bin" for index in range(30)]
    await asyncio.gather(*(storage.put(key, b"z") for key in keys))
    await storage.delete_many(keys + ["uploads/1/p/missing.bin"])
    assert bucket.object_keys() == []


async def test_older_than_lists_old_objects_under_a_prefix(bucket):
    storage = s3(bucket)
    await storage.put("uploads/1/a/old.png", b"old!")
    await storage.put("uploads/2/new.png", b"n")
    await storage.put("results/t/0-w/0.png", b"r")
    bucket.backdate("safelight/uploads/1/a/old.png", 4 * 86400)
    bucket.backdate("safelight/results/t/0-w/0.png", 4 * 86400)
    assert await storage.older_than("uploads", time.time() - 3 * 86400) == [("uploads/1/a/old.png", 4)]
    assert sorted(await storage.older_than("uploads", time.time() + 60)) == [("uploads/1/a/old.png", 4),
                                                                            ("uploads/2/new.png", 1)]


async def test_the_retention_sweep_deletes_old_uploads_in_the_bucket(bucket, tmp_path):
    storage = s3(bucket)
    await storage.put("uploads/1/a/old.png", b"old!")
    await storage.put("uploads/1/a/new.png", b"new")
    bucket.backdate("safelight/uploads/1/a/old.png", 4 * 86400)

    class NoTasks:
        async def expired_results(self, completed_before_ms: int, limit: int) -> list[str]:
            return []

        async def mark_files_deleted(self, task_ids, completed_before_ms: int) -> int:
            return 0

    report = await sweep(NoTasks(), storage, Settings(data_dir=tmp_path))
    assert report == SweepReport(tasks=0, result_bytes=0, uploads=1, upload_bytes=4)
    assert bucket.object_keys() == ["safelight/uploads/1/a/new.png"]


async def test_a_bucket_without_prefix(bucket):
    storage = s3(bucket, prefix="")
    await storage.put("uploads/1/x.png", b"x")
    assert bucket.object_keys() == ["uploads/1/x.png"]
    url = storage.presign("uploads/1/x.png", 60)
    assert urlsplit(url).path == f"/{bucket.name}/uploads/1/x.png"
    assert storage.presigned_key(url)[0] == "uploads/1/x.png"


# --- presigned URLs ----------------------------------------------------------------------------------


async def test_presigned_urls_fetch_straight_from_the_bucket(bucket):
    storage = s3(bucket)
    image = png_bytes(4, 4)
    await storage.put("uploads/1/refs/my file+1.png", image)
    await storage.put("uploads/1/refs/page.html", b"<script>alert(1)</script>")
    url = storage.presign("uploads/1/refs/my file+1.png", 3600)
    assert url.startswith(f"{bucket.endpoint}/{bucket.name}/safelight/uploads/1/refs/")
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
        assert response.status_code == 200 and response.content == image
        assert response.headers["content-type"] == "image/png"
        page = await client.get(storage.presign("uploads/1/refs/page.html", 60))
        assert page.headers["content-type"] == "application/octet-stream"
        assert page.headers["content-disposition"] == "attachment"


def test_presigned_urls_are_recognised_by_their_signature(bucket):
    storage = s3(bucket)
    before = int(time.time())
    url = storage.presign("uploads/1/refs/a b.png", 600)
    key, expires_at = storage.presigned_key(url)
    assert key == "uploads/1/refs/a b.png" and before + 599 <= expires_at <= time.time() + 601

    query = parse_qs(urlsplit(url).query)
    signature = query["X-Amz-Signature"][0]
    flipped = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    forged = [
        url.replace(signature, flipped),
        url.replace("X-Amz-Expires=600", "X-Amz-Expires=6000"),  # a longer life, same signature
        url.replace("a%20b.png", "b%20b.png"),  # another file, same signature
        url.replace("uploads/1/", "uploads/2/"),  # another account's file
        url.replace(bucket.name, bucket.name + "x"),  # another bucket
        url.replace("127.0.0.1", "localhost"),  # another host
        url.split("?")[0],  # unsigned
        url + "&X-Amz-Signature=" + signature,  # a repeated parameter
    ]
    for bad in forged:
        assert storage.presigned_key(bad) is None, bad
    # Another secret: the same URL shape, not ours.
    stranger = s3(bucket, credentials=S3Credentials(ACCESS_KEY, "another-secret"))
    assert stranger.presigned_key(url) is None
    assert stranger.presigned_key(stranger.presign("uploads/1/refs/a b.png", 60)) is not None
    assert storage.presigned_key(stranger.presign("uploads/1/refs/a b.png", 60)) is None


def test_presigned_urls_live_at_most_seven_days(bucket):
    storage = s3(bucket)
    url = storage.presign("uploads/1/x.png", 30 * 86400)
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == [str(MAX_PRESIGN_SECONDS)]
    assert storage.presigned_key(url) is not None


def test_our_sigv4_check_accepts_botocores_presigned_urls(bucket):
    # An independent implementation of the same signature (botocore, which moto brings along).
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.config import Config

    client = botocore_session.get_session().create_client(
        "s3", region_name=REGION, endpoint_url=bucket.endpoint, aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY, config=Config(signature_version="s3v4", s3={"addressing_style": "path"}))
    try:
        url = client.generate_presigned_url("get_object", Params={"Bucket": bucket.name,
                                                                  "Key": "safelight/uploads/1/p/a b(1)~.png"},
                                            ExpiresIn=900)
    finally:
        client.close()
    parts = urlsplit(url)
    from urllib.parse import unquote

    expires_at = verify_presigned_get(parts.netloc, unquote(parts.path), parts.query, CREDENTIALS, REGION)
    assert expires_at is not None and abs(expires_at - (time.time() + 900)) < 5
    assert s3(bucket).presigned_key(url) == ("uploads/1/p/a b(1)~.png", expires_at)
    assert verify_presigned_get(parts.netloc, unquote(parts.path), parts.query,
                                S3Credentials(ACCESS_KEY, "wrong"), REGION) is None


def test_without_a_key_pair_there_are_no_presigned_urls(bucket):
    storage = s3(bucket, credentials=None)
    assert storage.presigner is None
    assert storage.presigned_key(s3(bucket).presign("uploads/1/x.png", 60)) is None


# --- settings ----------------------------------------------------------------------------------------


def test_open_storage_follows_the_settings(bucket, tmp_path):
    base = Settings(data_dir=tmp_path / "data")
    assert isinstance(open_storage(base), LocalStorage)
    assert open_storage(base).root == (tmp_path / "data" / "files").resolve()  # type: ignore[attr-defined]
    elsewhere = open_storage(base.model_copy(update={"storage_url": str(tmp_path / "elsewhere")}))
    assert elsewhere.root == (tmp_path / "elsewhere").resolve()  # type: ignore[attr-defined]
    storage: Storage = open_storage(bucket.settings(base))
    assert isinstance(storage, S3Storage) and storage.path_style and storage.presigner is storage
    assert storage.description == f"s3://{bucket.name}/safelight at {bucket.endpoint}"
    aws = open_storage(bucket.settings(base).model_copy(update={"s3_endpoint_url": ""}))
    assert isinstance(aws, S3Storage) and not aws.path_style  # AWS: virtual-hosted style
    assert aws.presign("k/x.png", 60).startswith(f"https://{bucket.name}.s3.{REGION}.amazonaws.com/safelight/k/")


@pytest.mark.parametrize(("update", "message"), [
    ({"storage_url": "s3://"}, "SAFELIGHT_STORAGE_URL names an invalid bucket ''"),
    ({"storage_url": "s3://Bad_Bucket/x"}, "SAFELIGHT_STORAGE_URL names an invalid bucket 'Bad_Bucket'"),
    ({"storage_url": "s3://bucket/a/../b"}, "SAFELIGHT_STORAGE_URL has an invalid prefix 'a/../b'"),
    ({"storage_url": "gs://bucket/x"}, "SAFELIGHT_STORAGE_URL must be a directory or s3://bucket/prefix"),
    ({"s3_secret_access_key": SecretStr("")}, "set both AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or neither"),
    ({"storage_url": "", "file_urls": "presigned"}, "SAFELIGHT_FILE_URLS=presigned needs S3 storage"),
    ({"s3_access_key_id": "", "s3_secret_access_key": SecretStr(""), "file_urls": "presigned"},
     "SAFELIGHT_FILE_URLS=presigned needs S3 storage"),
])
def test_unusable_storage_settings_say_why(bucket, tmp_path, update, message):
    settings = bucket.settings(Settings(data_dir=tmp_path)).model_copy(update=update)
    with pytest.raises(StorageConfigError, match="^" + message.replace("(", r"\(").replace(".", r"\.")):
        open_storage(settings)


def test_settings_read_the_standard_aws_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("SAFELIGHT_STORAGE_URL", "s3://media/safelight")
    monkeypatch.setenv("SAFELIGHT_S3_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("SAFELIGHT_S3_PATH_STYLE", "false")
    monkeypatch.setenv("SAFELIGHT_FILE_URLS", "presigned")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "minio")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio-secret")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    settings = Settings(data_dir=tmp_path)
    assert (settings.storage_url, settings.s3_endpoint_url, settings.s3_path_style, settings.file_urls,
            settings.s3_access_key_id, settings.s3_region) == ("s3://media/safelight", "http://127.0.0.1:9000",
                                                               False, "presigned", "minio", "eu-central-1")
    assert settings.s3_secret_access_key.get_secret_value() == "minio-secret"
    assert "minio-secret" not in repr(settings)
    storage = open_storage(settings)
    assert isinstance(storage, S3Storage) and not storage.path_style and storage.region == "eu-central-1"
    assert "minio-secret" not in repr(storage.__dict__)

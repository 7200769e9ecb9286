"""The SDK against a real Safelight server on loopback (sandbox backend), and the upload routes it uses."""

import base64
import io

import httpx
import pytest
from PIL import Image

from safelight.client import AsyncClient, Flux2ProImageToImageInput, ValidationError
from tests.helpers import png_bytes


@pytest.fixture
async def sdk(live_server):
    client = AsyncClient(api_key=live_server.api_key, base_url=live_server.base_url)
    try:
        yield client
    finally:
        await client.aclose()


def image_size(path):
    with Image.open(path) as image:
        return image.size


async def test_all_four_models_run_and_download(sdk, tmp_path, image_server):
    reference = f"{image_server}/img/800x600.png"
    cases = [
        ("z-image", {"prompt": "sdk z-image", "aspect_ratio": "9:16"}, [(768, 1344)]),
        ("flux-2/pro-image-to-image", Flux2ProImageToImageInput(
            input_urls=[reference], prompt="sdk flux", aspect_ratio="auto", resolution="1K"), [(1152, 896)]),
        ("google/imagen4-fast", {"prompt": "sdk imagen", "num_images": "2", "seed": 11}, [(1344, 768)] * 2),
        ("ideogram/character", {"prompt": "sdk ideogram", "reference_image_urls": [reference],
                                "image_size": "square"}, [(512, 512)]),
    ]
    for model, model_input, sizes in cases:
        task = await sdk.run(model, model_input, poll=0.05, max_poll=0.1, timeout=30)
        assert task.succeeded, (model, task.fail_msg)
        paths = await sdk.download(task, tmp_path / model.replace("/", "_"))
        assert [image_size(path) for path in paths] == sizes
    last = await sdk.get_task(task.task_id)
    assert last.model == "ideogram/character" and last.input["prompt"] == "sdk ideogram"
    assert await sdk.credits() == 1000 - 1 - 5 - 8 - 18


async def test_validation_errors_map_to_typed_exceptions(sdk):
    with pytest.raises(ValidationError) as info:
        await sdk.create_task("z-image", {"prompt": "x", "aspect_ratio": "2:1"})
    assert "input.aspect_ratio must be one of" in str(info.value)


async def test_uploaded_files_work_as_task_inputs(sdk, tmp_path, image_server):
    local = tmp_path / "portrait.png"
    local.write_bytes(png_bytes(300, 400))
    from_path = await sdk.upload(local)
    from_bytes = await sdk.upload(png_bytes(640, 360), file_name="wide.png")
    from_url = await sdk.upload(f"{image_server}/img/500x500.png")
    for url in (from_path, from_bytes, from_url):
        assert url.startswith(sdk.base_url + "/files/uploads/")
    # auto follows the first reference: 640x360 is 16:9
    task = await sdk.run("flux-2/pro-image-to-image", {"input_urls": [from_bytes, from_path, from_url],
                                                      "prompt": "combine the uploads", "aspect_ratio": "auto",
                                                      "resolution": "1K"}, poll=0.05, max_poll=0.1, timeout=30)
    assert task.succeeded, task.fail_msg
    assert [image_size(p) for p in await sdk.download(task, tmp_path / "out")] == [(1344, 768)]


async def test_upload_routes_follow_kie_shapes_and_refuse_bad_input(live_server, image_server):
    async with live_server.client() as client:
        data_url = "data:image/png;base64," + base64.b64encode(png_bytes(10, 10)).decode()
        body = (await client.post("/api/file-base64-upload", json={
            "base64Data": data_url, "uploadPath": "images/user-uploads", "fileName": "dot.png"})).json()
        assert body["success"] is True and body["code"] == 200 and body["msg"] == "File uploaded successfully"
        data = body["data"]
        assert (data["fileName"], data["filePath"], data["mimeType"], data["fileSize"]) == (
            "dot.png", "images/user-uploads/dot.png", "image/png", len(png_bytes(10, 10)))
        downloaded = await client.get(data["downloadUrl"])
        assert downloaded.status_code == 200 and Image.open(io.BytesIO(downloaded.content)).size == (10, 10)

        refused = [
            ("/api/file-base64-upload", {"base64Data": data_url}, "Missing required parameter: uploadPath"),
            ("/api/file-base64-upload", {"base64Data": "@@@", "uploadPath": "a"}, "not valid base64"),
            ("/api/file-base64-upload", {"base64Data": data_url, "uploadPath": "/a/"}, "uploadPath must be"),
            ("/api/file-base64-upload", {"base64Data": data_url, "uploadPath": "a/../../b"}, "uploadPath must be"),
            ("/api/file-base64-upload", {"base64Data": data_url, "uploadPath": "a", "fileName": "../x.png"},
             "fileName must be"),
            ("/api/file-url-upload", {"fileUrl": "http://169.254.169.254/latest", "uploadPath": "a"},
             "fileUrl is not allowed"),
            ("/api/file-url-upload", {"fileUrl": "file:///etc/passwd", "uploadPath": "a"}, "http or https"),
            ("/api/file-url-upload", {"fileUrl": f"{image_server}/missing.png", "uploadPath": "a"},
             "could not be fetched"),
        ]
        for path, payload, expected in refused:
            reply = (await client.post(path, json=payload)).json()
            assert reply["success"] is False and reply["code"] == 400 and expected in reply["msg"], (payload, reply)
        missing_file = (await client.post("/api/file-stream-upload", data={"uploadPath": "a"},
                                          files={"other": ("x", b"y")})).json()
        assert missing_file["code"] == 400 and "file" in missing_file["msg"]

    async with httpx.AsyncClient(base_url=live_server.base_url) as anonymous:
        reply = (await anonymous.post("/api/file-base64-upload", json={"base64Data": "AA==", "uploadPath": "a"}))
        assert reply.json() == {"success": False, "code": 401, "msg": "Authentication failed: Invalid API Key"}


async def test_uploads_are_private_to_their_account(live_server):
    other = await live_server.runtime.store.accounts.create_key("other-uploader", credits=10)
    async with live_server.client() as mine, live_server.client(other.key) as theirs:
        payload = {"base64Data": base64.b64encode(png_bytes(4, 4)).decode(), "uploadPath": "p", "fileName": "a.png"}
        mine_url = (await mine.post("/api/file-base64-upload", json=payload)).json()["data"]["downloadUrl"]
        payload["base64Data"] = base64.b64encode(png_bytes(6, 6)).decode()
        theirs_url = (await theirs.post("/api/file-base64-upload", json=payload)).json()["data"]["downloadUrl"]
        assert mine_url != theirs_url  # same uploadPath and name, separate namespaces: no overwrite
        assert Image.open(io.BytesIO((await mine.get(mine_url)).content)).size == (4, 4)


async def test_non_image_uploads_are_served_as_attachments(live_server):
    async with live_server.client() as client:
        payload = {"base64Data": base64.b64encode(b"<script>alert(1)</script>").decode(), "uploadPath": "p",
                   "fileName": "page.html"}
        url = (await client.post("/api/file-base64-upload", json=payload)).json()["data"]["downloadUrl"]
        served = await client.get(url)
        assert served.headers["content-disposition"] == "attachment"
        assert served.headers["x-content-type-options"] == "nosniff"

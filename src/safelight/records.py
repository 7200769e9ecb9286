"""The kie task record: recordInfo's `data`, and the `data` of a callback body."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from safelight.storage import UrlSigner


def build_task_record(row: Mapping[str, Any], signer: UrlSigner, url_ttl_seconds: int) -> dict[str, Any]:
    state = row["state"]
    result_json = None
    if state == "success" and row["result"]:
        result = json.loads(row["result"])
        # Retention may have removed the files; the record itself stays.
        urls = [] if row["files_deleted"] else [signer.url(key, url_ttl_seconds) for key in result["files"]]
        result_json = json.dumps({"resultUrls": urls, "seeds": result.get("seeds", [])}, separators=(",", ":"))
    complete = row["complete_time"]
    started = row["start_time"] or row["create_time"]
    return {
        "taskId": row["id"],
        "model": row["model"],
        "state": state,
        "param": row["param"],
        "resultJson": result_json,
        "failCode": row["fail_code"],
        "failMsg": row["fail_msg"],
        "costTime": (complete - started) if complete else None,
        "completeTime": complete,
        "createTime": row["create_time"],
        "updateTime": row["update_time"],
        "progress": row["progress"] if row["progress"] is not None else (100 if state == "success" else 0),
        "creditsConsumed": row["credits_consumed"],
    }

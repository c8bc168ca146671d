"""Reading a request body: the size limit, then JSON, with every way a body can be malformed answered by a 400
(or 413) naming the problem, never a 5xx."""
from __future__ import annotations

import json
from typing import Any

from fastapi import Request

from toolace_r.serve.schema import ApiError


async def read_json_body(request: Request, max_bytes: int) -> Any:
    """The body as JSON, refusing oversize bodies before reading them whole (Content-Length) or while reading."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body is {declared} bytes; the limit is {max_bytes}", code="body_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise ApiError(413, f"request body exceeds the limit of {max_bytes} bytes", code="body_too_large")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ApiError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    try:  # JSON may escape a lone UTF-16 surrogate ("\ud800"); tokenizers cannot encode it (was a 500)
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, "request body holds a lone UTF-16 surrogate escape (e.g. \\ud800) in a string; "
                            "send valid Unicode text", code="invalid_json") from None
    return body


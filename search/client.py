"""``lavimo-search query --server URL``: one query through a running search page's JSON API (``POST
/api/search``), so a query costs an HTTP round trip instead of a model load. Standard library only (urllib)."""

from __future__ import annotations

import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from .inputs import MAX_UPLOAD_BYTES, SERVER_MOTION_TYPES, Query

TIMEOUT_S = 600
#: the longest answer read back (bytes): a page of results is a few kB
MAX_ANSWER_BYTES = 16 << 20


def form_fields(q: Query, keyid: str | None = None) -> dict[str, str]:
    """The API's form fields for ``q`` (docs/search.md, "JSON API"): text / keyid, k, offset, against, window
    (``fps``, an AMASS .npz motion's rate, is not a field: the server takes .npy motions only)."""
    f: dict[str, str] = {"k": str(q.k), "offset": str(q.offset)}
    if q.text is not None:
        f["text"] = q.text
    if keyid is not None:
        f["keyid"] = keyid
    if q.against is not None:
        f["against"] = q.against
    for name in ("start", "end"):
        if getattr(q, name) is not None:
            f[name] = repr(float(getattr(q, name)))
    if q.crop is not None:
        f["crop"] = ",".join(str(int(c)) for c in q.crop)
    return f


def check_upload(path: Path, kind: str, cap: int = MAX_UPLOAD_BYTES) -> None:
    """Refuse, before anything is read or sent, a local file the server would refuse: larger than its upload cap
    (``stat`` only) or an AMASS ``.npz`` motion (the server takes .npy motions; a local query reads .npz).
    ValueError naming the file."""
    if kind == "motion" and path.suffix.lower() not in SERVER_MOTION_TYPES:
        raise ValueError(f"{path}: motion: the search server takes {', '.join(SERVER_MOTION_TYPES)} motions, not "
                         f"{path.suffix or 'no extension'}; run this query without --server (a local query reads "
                         "AMASS .npz)")
    size = path.stat().st_size
    if size > cap:
        raise ValueError(f"{path}: {kind}: {size} bytes, over the search server's upload cap of {cap >> 20} MiB; "
                         "run this query without --server")


def multipart(fields: dict[str, str], file: Path | None, kind: str | None) -> tuple[bytes, str]:
    """(body, content type) of a multipart form with ``fields`` and an optional ``file`` of ``kind``."""
    boundary = "lavimo" + secrets.token_hex(12)
    parts = []
    if file is not None:
        fields = dict(fields, kind=str(kind))
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
                     + value.encode("utf-8") + b"\r\n")
    if file is not None:
        fname = urllib.parse.quote(Path(file).name)
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{fname}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + Path(file).read_bytes() + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def remote_query(url: str, q: Query, keyid: str | None = None, timeout: float = TIMEOUT_S) -> dict[str, Any]:
    """``q`` (checked) asked of the server at ``url`` -> its JSON answer (the same shape as
    :func:`lavimo.search.query.run_query`'s, hits with ``preview_url`` instead of server paths). Raises ValueError
    with the server's one-line message for a refused query, or saying the server cannot be reached."""
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"--server {url!r}: expected http://HOST:PORT")
    file, kind = (q.video, "video") if q.video is not None else (q.motion, "motion")
    if file is not None:
        check_upload(Path(file), kind)
    body, ctype = multipart(form_fields(q, keyid), file, kind if file is not None else None)
    req = urllib.request.Request(url.rstrip("/") + "/api/search", data=body, method="POST",
                                 headers={"Content-Type": ctype, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read(MAX_ANSWER_BYTES))
    except urllib.error.HTTPError as exc:
        try:
            msg = json.loads(exc.read(1 << 16)).get("error")
        except (ValueError, AttributeError):
            msg = None
        raise ValueError(f"{url}: HTTP {exc.code}: {msg or exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:  # refused, unreachable, timed out
        raise ValueError(f"{url}: cannot reach the search server ({getattr(exc, 'reason', exc)}); start it with "
                         "'lavimo-search serve --index IDX'") from None

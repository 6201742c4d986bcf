"""The search page: a local FastAPI app (uvicorn) over one index and its checkpoint.

- ``GET /``: the page (a text box, a video or motion file upload, top-k results as playing previews with their
  scores, captions and sources). ``GET /?text=...&k=5`` renders results on the server (works without script).
- ``POST /api/search`` (multipart form): ``text`` or ``file`` (+ ``kind`` "video" | "motion"), ``k``,
  ``captions`` (motion -> text), ``start``/``end`` (video window, s) -> JSON ``{"query", "results"}``.
- ``GET /preview/{n}``: the preview mp4 of the n-th indexed motion (for feature databases rendered on the first
  request, outside the query lock, and served from that file afterwards).

Safety (docs/security.md, "The search page and index"): binds 127.0.0.1 by default; a request whose ``Host``
header is not an allowed name (the bound address, ``localhost``, ``127.0.0.1``, ``::1`` and what
``--allow-host`` / ``LAVIMO_SEARCH_ALLOWED_HOSTS`` add) is answered 421 (DNS rebinding); request bodies are
limited to :data:`MAX_UPLOAD_BYTES` plus :data:`FORM_OVERHEAD_BYTES` as they arrive, with or without a
Content-Length (chunked bodies too: the form parser stops at the cap, HTTP 413); uploads are limited in type
(extensions :data:`VIDEO_TYPES` / :data:`MOTION_TYPES`, HTTP 415), stored under a name of the server's choosing
and deleted after the query, and read as untrusted files (videos: ``lavimo.core.mp4.probe_video``); no request ever
names a file the server reads (previews are addressed by their number in the index, and served only from inside
the index directory, whatever its JSON says; a feature index's previews are rendered only from ``<keyid>.npy``
inside the feature folder the index records, :meth:`lavimo.search.index.Index.feature_file`); every string on the page is escaped (``html.escape``
server-side, ``textContent`` in the script); bad input is an HTTP 4xx with a message, and the server keeps
serving.
"""

import html
import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

from lavimo.core.keyids import child_path

from . import preview
from .index import PREVIEWS, source_text
from .query import run_query

log = logging.getLogger(__name__)

MAX_UPLOAD_BYTES = 64 << 20
#: what a request body may hold beyond the upload itself (multipart headers, the other form fields)
FORM_OVERHEAD_BYTES = 64 << 10
#: Host names every server answers to (the bound address is added); more with --allow-host or this variable
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")
ALLOWED_HOSTS_ENV = "LAVIMO_SEARCH_ALLOWED_HOSTS"
VIDEO_TYPES = (".mp4", ".mov", ".m4v", ".webm", ".mkv", ".avi", ".mpg", ".mpeg", ".ogv")
MOTION_TYPES = (".npy",)
MAX_K = 50
MAX_TEXT = 1000

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>LAVIMO motion search</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
form{display:flex;gap:.5em;flex-wrap:wrap;align-items:center;margin-bottom:1em}
#text{flex:1;min-width:20em;padding:.4em;font-size:1em}
#results{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em}
.card video{width:100%;background:#000;border-radius:4px}
.score{font-weight:bold}.keyid{color:#666;font-family:monospace}.src{color:#777;font-size:.8em;word-break:break-all}
#error{color:#b00;font-weight:bold}
</style></head><body>
<h1>LAVIMO motion search</h1>
<p>{summary}</p>
<form id="form" method="get" action="/">
<input id="text" name="text" placeholder="a person hops on the left leg" value="{text}">
<label>k <input id="k" name="k" type="number" min="1" max="{max_k}" value="{k}" style="width:4em"></label>
<label>or a file <input id="file" name="file" type="file" accept="{accept}"></label>
<button id="go" type="submit">Search</button>
</form>
<div id="error">{error}</div>
<div id="status"></div>
<div id="results">{results}</div>
<script>
const form = document.getElementById('form');
form.addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const fd = new FormData();
  const file = document.getElementById('file').files[0];
  if (file) { fd.append('file', file); fd.append('kind', /\\.npy$/i.test(file.name) ? 'motion' : 'video'); }
  else { fd.append('text', document.getElementById('text').value); }
  fd.append('k', document.getElementById('k').value);
  const err = document.getElementById('error'), out = document.getElementById('results');
  err.textContent = ''; out.replaceChildren(); document.getElementById('status').textContent = 'searching...';
  try {
    const r = await fetch('/api/search', {method: 'POST', body: fd});
    const data = await r.json();
    document.getElementById('status').textContent = '';
    if (!r.ok) { err.textContent = data.error || ('HTTP ' + r.status); return; }
    for (const hit of data.results) out.appendChild(card(hit));
    out.dataset.done = '1';
  } catch (e) { err.textContent = String(e); document.getElementById('status').textContent = ''; }
});
function el(tag, cls, text) { const e = document.createElement(tag); if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text; return e; }
function card(hit) {
  const c = el('div', 'card'); c.dataset.keyid = hit.keyid;
  if (hit.preview_url) { const v = el('video'); v.src = hit.preview_url; v.autoplay = true; v.loop = true;
    v.muted = true; v.playsInline = true; v.controls = true; c.appendChild(v); }
  c.appendChild(el('div', 'score', hit.score.toFixed(3) + ' '));
  c.lastChild.appendChild(el('span', 'keyid', hit.keyid));
  for (const t of (hit.captions || []).slice(0, 3)) c.appendChild(el('div', 'cap', t));
  if (hit.caption) c.appendChild(el('div', 'cap', hit.caption));
  if (hit.source_text) c.appendChild(el('div', 'src', hit.source_text));
  return c;
}
</script></body></html>"""


class SearchService:
    """The model, the index and two locks: ``lock`` (one query encodes at a time) and ``render_lock`` (one preview
    renders at a time; queries go on meanwhile)."""

    def __init__(self, retriever: Any, index: Any):
        self.retriever, self.index = retriever, index
        self.lock = threading.Lock()
        self.render_lock = threading.Lock()

    def query(self, **kw: Any) -> dict[str, Any]:
        with self.lock:
            res = run_query(self.retriever, self.index, **kw)
        for hit in res["results"]:
            if "source" in hit:
                n = self.index.position(hit["keyid"])
                # the index's preview (checked by run_query; server paths stay on the server), else a feature file
                has = hit.pop("preview", None) is not None or self.index.feature_file(n) is not None
                hit["preview_url"] = f"/preview/{n}" if has else None
                hit["source_text"] = source_text(hit["source"])
        return res

    def preview_file(self, n: int) -> Path | None:
        """The preview mp4 of motion ``n``: the index's file, else (feature databases) rendered on the first
        request into ``IDX/previews/<keyid>.mp4`` and remembered as the entry's preview, so the next requests
        (a browser sends several range requests per video) serve the file without rendering again. Renders
        hold ``render_lock``, not the query lock."""
        p = self._existing_preview(n)
        if p is not None:
            return p
        idx = self.index
        e = idx.entry(n)
        source = idx.feature_file(n)  # a string path to <keyid>.npy inside the recorded feature folder, or None
        if source is None or idx.root is None:
            return None
        with self.render_lock:
            p = self._existing_preview(n)  # rendered by another request while this one waited
            if p is not None:
                return p
            out = preview.render_preview(source, child_path(idx.root / PREVIEWS, f"{e.keyid}.mp4"))
            e.preview = f"{PREVIEWS}/{e.keyid}.mp4"  # relative to the index directory, as build_index writes it
        return out

    def _existing_preview(self, n: int) -> Path | None:
        p = self.index.preview_path(n)
        return Path(p) if p is not None and Path(p).is_file() else None


def host_name(header: str) -> str:
    """The host of a ``Host`` header, lower case, without the port and one trailing dot: "LOCALHOST:8000" ->
    "localhost", "localhost.:8000" -> "localhost", "[::1]:8000" -> "::1" ("localhost.evil" stays itself)."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    h = h.rsplit(":", 1)[0] if h.count(":") == 1 else h
    return h[:-1] if h.endswith(".") else h  # "localhost." is the fully qualified localhost (one dot only)


def allowed_hosts(bound: str | None = None, extra: Sequence[str] = ()) -> tuple[str, ...]:
    """The Host names the page answers to: :data:`DEFAULT_ALLOWED_HOSTS`, the bound address ``bound`` (unless
    a wildcard address), ``extra`` and the comma list in ``$LAVIMO_SEARCH_ALLOWED_HOSTS``."""
    names = list(DEFAULT_ALLOWED_HOSTS)
    if bound and bound not in ("0.0.0.0", "::", ""):
        names.append(bound)
    names += list(extra) + os.environ.get(ALLOWED_HOSTS_ENV, "").split(",")
    return tuple(dict.fromkeys(host_name(n) for n in names if n.strip()))


class _HostCheck:
    """ASGI middleware: HTTP requests whose ``Host`` is not in ``hosts`` get 421 (a page on another site that a
    DNS name rebound to this address cannot use it)."""

    def __init__(self, app, hosts: Sequence[str]):
        self.app, self.hosts = app, frozenset(host_name(h) for h in hosts)

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), "")
            if host_name(host) not in self.hosts:
                from starlette.responses import JSONResponse

                resp = JSONResponse({"error": "this server does not answer to that Host header (start it with "
                                              "--allow-host NAME to add one)"}, status_code=421)
                return await resp(scope, receive, send)
        return await self.app(scope, receive, send)


class _TooLarge(Exception):
    pass


class _HTTPError(Exception):
    """An HTTP 4xx answered as ``{"error": message}``."""

    def __init__(self, status: int, message: str):
        self.status, self.message = status, message


def _k(value: Any) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise _HTTPError(400, "k must be an integer") from None
    if not 1 <= k <= MAX_K:
        raise _HTTPError(400, f"k must be in 1..{MAX_K}")
    return k


def _text(value: Any) -> str:
    t = str(value or "").strip()
    if not t:
        raise _HTTPError(400, "type a query text or choose a file")
    if len(t) > MAX_TEXT:
        raise _HTTPError(400, f"query text longer than {MAX_TEXT} characters")
    return t


def _render(index: Any, max_upload_bytes: int, text: str = "", k: int = 5, results: list | None = None,
            error: str = "") -> str:
    """The page (:data:`_PAGE`) with its summary of ``index``, the query and its result cards, every string
    escaped."""
    cards = []
    for hit in results or []:
        video = (f'<video src="{html.escape(hit["preview_url"])}" autoplay loop muted playsinline controls>'
                 f"</video>" if hit.get("preview_url") else "")
        caps = "".join(f'<div class="cap">{html.escape(c)}</div>' for c in hit.get("captions", [])[:3])
        cards.append(f'<div class="card" data-keyid="{html.escape(hit["keyid"])}">{video}<div class="score">'
                     f'{hit["score"]:.3f} <span class="keyid">{html.escape(hit["keyid"])}</span></div>{caps}'
                     f'<div class="src">{html.escape(hit.get("source_text", ""))}</div></div>')
    db = index.meta.get("database")  # index.json's: any JSON value (an edited index must not make a 500)
    db = db if isinstance(db, dict) else {}
    splits = db.get("splits") if isinstance(db.get("splits"), list) else []
    summary = (f"{len(index)} motions from {html.escape(str(db.get('kind', '?')))} "
               f"{html.escape(', '.join(map(str, splits)))}; video and .npy motion uploads up to "
               f"{max_upload_bytes >> 20} MiB")
    page = _PAGE
    for key, val in (("{summary}", summary), ("{text}", html.escape(text)), ("{k}", str(int(k))),
                     ("{max_k}", str(MAX_K)), ("{accept}", html.escape(",".join(VIDEO_TYPES + MOTION_TYPES))),
                     ("{error}", html.escape(error)), ("{results}", "".join(cards))):
        page = page.replace(key, val)
    return page


async def _read_form(request: Any, max_upload_bytes: int):
    """The multipart form of ``request``, its body capped at ``max_upload_bytes`` + :data:`FORM_OVERHEAD_BYTES`
    (by Content-Length, and counted as it arrives: chunked bodies too): 413 past it, 400 when malformed."""
    from starlette.requests import Request

    too_large = _HTTPError(413, f"upload larger than {max_upload_bytes >> 20} MiB")
    body_cap = max_upload_bytes + FORM_OVERHEAD_BYTES
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > body_cap:
        raise too_large
    received = 0

    async def capped_receive():
        nonlocal received
        message = await request.receive()
        if message.get("type") == "http.request":
            received += len(message.get("body", b""))
            if received > body_cap:
                raise _TooLarge
        return message

    try:
        return await Request(request.scope, capped_receive).form(max_files=1, max_fields=16)
    except _TooLarge:
        raise too_large from None
    except _HTTPError:
        raise
    except Exception as exc:  # noqa: BLE001 - malformed multipart body
        raise _HTTPError(400, f"unreadable form ({type(exc).__name__})") from exc


def _upload_query(form: Any, name: str) -> tuple[str, str, dict[str, Any]]:
    """(extension, kind, window) of an uploaded file ``name``: ``kind`` "video" or "motion" (the form's, else by
    extension) with an extension of that kind (415 otherwise), the window ``start``/``end`` in seconds."""
    ext = os.path.splitext(name)[1].lower()
    kind = str(form.get("kind") or ("motion" if ext in MOTION_TYPES else "video"))
    allowed = {"video": VIDEO_TYPES, "motion": MOTION_TYPES}.get(kind)
    if allowed is None:
        raise _HTTPError(400, "kind must be video or motion")
    if ext not in allowed:
        raise _HTTPError(415, f"{kind} uploads must be one of {', '.join(allowed)}; got {ext or 'no extension'}")
    window = {}
    for key in ("start", "end"):
        if form.get(key) not in (None, ""):
            try:
                window[key] = float(form.get(key))
            except (TypeError, ValueError):
                raise _HTTPError(400, f"{key} must be a number of seconds") from None
    return ext, kind, window


async def _search_upload(svc: SearchService, upload: Any, form: Any, k: int, captions: bool,
                         max_upload_bytes: int) -> dict[str, Any]:
    """A query by an uploaded video or motion file: stored under a name of the server's choosing (at most
    ``max_upload_bytes``, 413 past it), queried, deleted; errors name the upload's own file name."""
    from starlette.concurrency import run_in_threadpool

    name = str(upload.filename)
    ext, kind, window = _upload_query(form, name)
    fd, tmp = tempfile.mkstemp(prefix="lavimo-upload-", suffix=ext)
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > max_upload_bytes:
                    raise _HTTPError(413, f"upload larger than {max_upload_bytes >> 20} MiB")
                fh.write(chunk)
        if size == 0:
            raise _HTTPError(400, f"{name}: empty file")
        kw = {"video": Path(tmp)} if kind == "video" else {"motion": Path(tmp), "captions": captions}
        try:
            return await run_in_threadpool(svc.query, k=k, **kw, **window)
        except ValueError as exc:  # BadInputError is a ValueError
            raise _HTTPError(400, str(exc).replace(tmp, name)) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


def create_app(retriever: Any, index: Any, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               hosts: Sequence[str] | None = None):
    """The FastAPI app (module docstring). ``hosts``: the Host names it answers to (default
    :func:`allowed_hosts`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
    from starlette.concurrency import run_in_threadpool

    svc = SearchService(retriever, index)
    app = FastAPI(title="LAVIMO motion search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.add_middleware(_HostCheck, hosts=allowed_hosts() if hosts is None else tuple(hosts))

    @app.exception_handler(_HTTPError)
    async def _http_error(_req, exc: _HTTPError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _any_error(_req, exc: Exception):  # never a traceback to the client; the server keeps serving
        log.exception("request failed")
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page(text: str = "", k: str = "5"):
        if not text:
            return HTMLResponse(_render(index, max_upload_bytes))
        try:
            kk = _k(k)
            res = svc.query(text=_text(text), k=kk)
            return HTMLResponse(_render(index, max_upload_bytes, text, kk, res["results"]))
        except _HTTPError as exc:
            return HTMLResponse(_render(index, max_upload_bytes, text, 5, error=exc.message),
                                status_code=exc.status)

    @app.post("/api/search")
    async def api_search(request: Request):
        form = await _read_form(request, max_upload_bytes)
        k = _k(form.get("k", 5))
        upload = form.get("file")
        captions = str(form.get("captions", "")).lower() in ("1", "true", "on", "yes")
        if upload is None or isinstance(upload, str) or not getattr(upload, "filename", ""):
            if captions:
                raise _HTTPError(400, "captions (motion -> text) needs a motion file")
            text = _text(form.get("text"))
            return await run_in_threadpool(svc.query, text=text, k=k)
        return await _search_upload(svc, upload, form, k, captions, max_upload_bytes)

    @app.get("/preview/{n}")
    def preview_video(n: int):
        if not 0 <= n < len(index):
            raise _HTTPError(404, "no such result")
        try:
            p = svc.preview_file(n)
        except (OSError, ValueError) as exc:  # BadInputError is a ValueError; the reason stays in the log:
            # it could tell which files exist
            log.warning("preview %d: %s", n, exc)
            raise _HTTPError(404, "this motion has no preview") from exc
        if p is None:
            raise _HTTPError(404, "this motion has no preview")
        # a shard's video member is copied as is: never let a browser sniff it as anything but video
        return FileResponse(p, media_type="video/mp4", headers={"X-Content-Type-Options": "nosniff"})

    return app


def serve(retriever: Any, index: Any, host: str = "127.0.0.1", port: int = 8000,
          allow_hosts: Sequence[str] = ()) -> None:
    """Run the page with uvicorn until interrupted. ``allow_hosts``: Host names to answer to besides the bound
    address and localhost (:func:`allowed_hosts`)."""
    import uvicorn

    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: the page is reachable from other machines", host)
    hosts = allowed_hosts(host, allow_hosts)
    print(f"LAVIMO search: http://{host}:{port}/ ({len(index)} motions; Host names {', '.join(hosts)}; Ctrl-C "
          "stops)", flush=True)
    uvicorn.run(create_app(retriever, index, hosts=hosts), host=host, port=port, log_level="warning")


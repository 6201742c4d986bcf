"""The search page: a local FastAPI app (uvicorn) over one index and its checkpoint (docs/search.md, "The search
page").

- ``GET /``: the page (Jinja2, ``templates/page.html``, autoescape on; ``static/page.css``, ``static/page.js``):
  modes text / video / motion, drag and drop, trim and crop of an uploaded clip, example queries, the latency,
  result actions (more like this, captions, similar videos, .npy download) and paging. The address holds the query
  (``?q=TEXT&mode=text&page=N&k=K`` or ``?keyid=ID&mode=more|captions|videos``; ``?text=`` too) and is rendered on
  the server (works without script).
- ``POST /api/search`` (multipart or urlencoded form): exactly one of ``text``, ``file`` (+ ``kind`` "video" |
  "motion", ``start``/``end`` seconds, ``crop`` "x,y,size") or ``keyid``; ``k``, ``offset`` or ``page``,
  ``against`` ("motion" | "video" | "text"), ``captions`` -> JSON ``{"query", "results", "latency_ms"}``.
- ``GET /preview/{n}``, ``GET /skeleton/{n}`` (the n-th motion's preview / 256 px skeleton preview, rendered on
  the first request outside the query lock and served from that file afterwards), ``GET /motion/{n}.npy``,
  ``GET /api/examples``.

Concurrency: an upload is decoded in a worker thread outside the model lock; only the encoder call holds it
(:class:`SearchService`), so a slow upload never holds up other queries.

Safety (docs/security.md, "The search page and index"): binds 127.0.0.1 by default; a request whose ``Host``
header is not an allowed name (the bound address, ``localhost``, ``127.0.0.1``, ``::1`` and what
``--allow-host`` / ``LAVIMO_SEARCH_ALLOWED_HOSTS`` add) is answered 421 (DNS rebinding); request bodies are
limited to :data:`MAX_UPLOAD_BYTES` plus :data:`FORM_OVERHEAD_BYTES` as they arrive, with or without a
Content-Length (chunked bodies too: the form parser stops at the cap, HTTP 413); uploads are limited in type
(extensions ``VIDEO_TYPES`` / :data:`MOTION_TYPES`, HTTP 415), stored under a name of the server's choosing
and deleted after the query, and read as untrusted files (videos: ``lavimo.core.mp4.probe_video``); no request ever
names a file the server reads (previews and motions are addressed by their number in the index, and served only
from inside the index directory or its recorded database, whatever its JSON says:
:meth:`lavimo.search.index.Index.preview_path`, :meth:`lavimo.search.index.Index.feature_file`,
:mod:`lavimo.search.motionfile`); every string on the page is escaped (Jinja2 autoescape server-side,
``textContent`` in the script); a query text over 1,000 characters is a 400; bad input is an HTTP 4xx with a
message, and the server keeps serving.
"""

import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from lavimo.core import mp4
from lavimo.core.keyids import is_keyid

from . import preview
from .index import source_text
from .motionfile import MotionReader, npy_bytes
from .inputs import (ALLOWED_AGAINST, MAX_DEPTH, MAX_TEXT, MAX_UPLOAD_BYTES, SERVER_MOTION_TYPES, VIDEO_TYPES,
                     Query, check_query, check_text, parse_crop)
from .query import answer, decode_query, encode_query, video_vector

log = logging.getLogger(__name__)

#: what a request body may hold beyond the upload itself (multipart headers, the other form fields; a query text of
#: up to 100k characters still reaches the text check and gets its clear 400)
FORM_OVERHEAD_BYTES = 64 << 10
#: Host names every server answers to (the bound address is added); more with --allow-host or this variable
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")
ALLOWED_HOSTS_ENV = "LAVIMO_SEARCH_ALLOWED_HOSTS"
MOTION_TYPES = SERVER_MOTION_TYPES
MAX_K = 50
#: example queries shown on the page: captions of this many motions spread over the index
EXAMPLES = 6
HERE = Path(__file__).resolve().parent
#: how long a preview request waits for another preview's render before it is answered 503 (Retry-After)
RENDER_WAIT_S = 5.0
RETRY_AFTER_S = 5


class RenderBusy(RuntimeError):
    """Another preview holds the render lock past :data:`RENDER_WAIT_S` (answered 503 with Retry-After)."""


class SearchService:
    """The model, the index and two locks: ``lock`` (held around the encoder call only: decoding an upload, reading
    a motion and searching the index happen outside it, so a slow upload never holds up other queries) and
    ``render_lock`` (one preview renders at a time; queries go on meanwhile)."""

    def __init__(self, retriever: Any, index: Any, max_upload_bytes: int = MAX_UPLOAD_BYTES):
        self.retriever, self.index, self.max_upload_bytes = retriever, index, max_upload_bytes
        self.lock = threading.Lock()
        self.render_lock = threading.Lock()
        self._stored_width: int | None = None
        self.motions = MotionReader(index)  # the shard set's manifest read once per service
        db = index.meta.get("database")
        #: whether the index's database holds motions (skeleton previews and .npy downloads): one answer per index
        self.has_motion = isinstance(db, dict) and db.get("kind") in ("shards", "features")

    def query(self, q: Query) -> dict[str, Any]:
        """A checked query -> the JSON answer (:func:`lavimo.search.query.answer`) with page fields per hit:
        ``preview_url`` / ``skeleton_url`` / ``motion_url`` (addressed by row: no server path leaves the server),
        ``source_text``, ``has_video``, and ``latency_ms.total`` (this call, waiting for the lock included)."""
        t0 = time.perf_counter()
        d = decode_query(self.retriever, self.index, q)  # no lock: file decoding runs beside other queries
        with self.lock:
            t1 = time.perf_counter()
            vector = encode_query(self.retriever, d)
            encode_s = time.perf_counter() - t1
        res = answer(self.index, d, vector, encode_s)
        for hit in res["results"]:
            self._page_fields(hit)
        res["latency_ms"]["total"] = round((time.perf_counter() - t0) * 1000, 2)
        return res

    def _page_fields(self, hit: dict[str, Any]) -> None:
        n = hit["row"]
        if "source" in hit:
            stored = hit.pop("preview", None)
            # the index's preview (checked by Index.preview_path; server paths stay on the server), else a feature
            # file rendered on request
            has = stored is not None or self.index.feature_file(n) is not None
            hit["preview_url"] = f"/preview/{n}" if has else None
            hit["preview_width"] = self._width(stored) if stored is not None else preview.SKELETON_SIZE
            hit["source_text"] = source_text(hit["source"])
            hit["has_video"] = video_vector(self.index, n) is not None
        hit["skeleton_url"] = f"/skeleton/{n}" if self.has_motion else None
        hit["motion_url"] = f"/motion/{n}.npy" if self.has_motion else None

    def _width(self, stored: str) -> int:
        """The frame width of the index's stored previews (probed once, from the first: one index's previews come
        from one source); 0 when it cannot be read."""
        if self._stored_width is None:
            try:
                self._stored_width = int(mp4.probe_video(stored).width)
            except (OSError, ValueError):
                self._stored_width = 0
        return self._stored_width

    def preview_file(self, n: int) -> Path | None:
        """The preview mp4 of motion ``n``: the index's file, else (feature databases) its skeleton preview
        (:meth:`skeleton_file`: the one file ``/skeleton/{n}`` serves too, rendered once on the first request of
        either, under ``render_lock``, and served from that file afterwards)."""
        p = self._existing_preview(n)
        if p is not None:
            return p
        if self.index.feature_file(n) is None:  # a path to <keyid>.npy inside the recorded feature folder, or None
            return None
        return self.skeleton_file(n)

    @contextlib.contextmanager
    def _rendering(self) -> Iterator[None]:
        """Hold ``render_lock``, waiting at most :data:`RENDER_WAIT_S` (a request thread is one of the pool's
        that queries need too): RenderBusy when another render still holds it."""
        if not self.render_lock.acquire(timeout=RENDER_WAIT_S):
            raise RenderBusy("another preview is being rendered")
        try:
            yield
        finally:
            self.render_lock.release()

    def skeleton_file(self, n: int) -> Path | None:
        """Motion ``n``'s skeleton preview at :data:`lavimo.search.preview.SKELETON_SIZE` pixels
        (:func:`lavimo.search.preview.skeleton_preview`): the file an indexing-time render or an earlier request
        wrote, else rendered now from the index's own motion (:meth:`lavimo.search.motionfile.MotionReader.features`),
        under ``render_lock``. None when the database does not hold the motion."""
        idx = self.index
        if idx.root is None:
            return None
        keyid = idx.keyid(n)
        p = preview.skeleton_preview_path(idx.root, keyid)
        if p.is_file():
            return p
        with self._rendering():
            if p.is_file():
                return p
            feats = self.motions.features(n)
            return None if feats is None else preview.skeleton_preview(feats, idx.root, keyid)

    def _existing_preview(self, n: int) -> Path | None:
        p = self.index.preview_path(n)
        return Path(p) if p is not None and Path(p).is_file() else None

    def examples(self, count: int = EXAMPLES) -> list[str]:
        """Up to ``count`` example query texts: the first caption of motions spread evenly over the index."""
        n = len(self.index)
        out: list[str] = []
        for i in sorted({int(j * n / count) for j in range(count)} if n else set()):
            caps = self.index.entry(i).captions
            if caps and caps[0] not in out and len(caps[0]) <= MAX_TEXT:
                out.append(caps[0])
        return out


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
    """An HTTP 4xx (or 503) answered as ``{"error": message}`` with ``headers``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        self.status, self.message, self.headers = status, message, headers


def _busy() -> _HTTPError:
    """503 with Retry-After: another preview is being rendered."""
    return _HTTPError(503, "another preview is being rendered; retry shortly", {"Retry-After": str(RETRY_AFTER_S)})


def _k(value: Any) -> int:
    try:
        k = int(value)
    except (TypeError, ValueError):
        raise _HTTPError(400, "k must be an integer") from None
    if not 1 <= k <= MAX_K:
        raise _HTTPError(400, f"k must be in 1..{MAX_K}")
    return k


def _int(value: Any, name: str, default: int) -> int:
    if value in (None, ""):
        return default
    try:
        return int(str(value))
    except ValueError:
        raise _HTTPError(400, f"{name} must be an integer") from None


def _text(value: Any) -> str:
    """A query text (:func:`lavimo.search.inputs.check_text`): an empty one or one over :data:`MAX_TEXT` characters
    (a 100k-character paste included) is a 400 saying so; never truncated, never read as template syntax."""
    try:
        return check_text(value)
    except ValueError as exc:
        raise _HTTPError(400, str(exc)) from None


def _row(index: Any, keyid: Any) -> int:
    """The row of an indexed motion named by ``keyid`` (a result's action), 404 when it is not indexed."""
    row = index.position(str(keyid)) if is_keyid(keyid) else None
    if row is None:
        raise _HTTPError(404, "no such motion in this index")
    return row


def _checked(q: Query, index: Any) -> Query:
    try:
        return check_query(q, len(index), check_files=False)
    except ValueError as exc:
        raise _HTTPError(400, str(exc)) from None


#: the page's modes -> what a query of that mode searches (row actions: "more", "captions", "videos")
MODES = ("text", "video", "motion")
ACTIONS = {"more": "motion", "captions": "text", "videos": "video"}


def _templates():
    """The Jinja2 environment of ``search/templates`` (autoescape on for every template: a query, a caption or a
    keyid is always text on the page; a query holding ``{{ }}`` or ``{results}`` is searched as typed)."""
    from jinja2 import Environment, FileSystemLoader, select_autoescape

    return Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                       trim_blocks=True, lstrip_blocks=True)


def _summary(index: Any, max_upload_bytes: int) -> dict[str, Any]:
    db = index.meta.get("database")  # index.json's: any JSON value (an edited index must not make a 500)
    db = db if isinstance(db, dict) else {}
    splits = db.get("splits") if isinstance(db.get("splits"), list) else []
    return {"count": len(index), "kind": str(db.get("kind", "?")), "splits": ", ".join(map(str, splits)),
            "max_upload_mib": max_upload_bytes >> 20}


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
    extension) with an extension of that kind (415 otherwise), the window ``start``/``end`` in seconds and a
    video's ``crop`` ("x,y,size" pixels)."""
    ext = os.path.splitext(name)[1].lower()
    kind = str(form.get("kind") or ("motion" if ext in MOTION_TYPES else "video"))
    allowed = {"video": VIDEO_TYPES, "motion": MOTION_TYPES}.get(kind)
    if allowed is None:
        raise _HTTPError(400, "kind must be video or motion")
    if ext not in allowed:
        raise _HTTPError(415, f"{kind} uploads must be one of {', '.join(allowed)}; got {ext or 'no extension'}")
    window: dict[str, Any] = {}
    for key in ("start", "end"):
        if form.get(key) not in (None, ""):
            try:
                window[key] = float(form.get(key))
            except (TypeError, ValueError):
                raise _HTTPError(400, f"{key} must be a number of seconds") from None
    if form.get("crop") not in (None, "") and kind == "video":
        try:
            window["crop"] = parse_crop(str(form.get("crop")))
        except ValueError as exc:
            raise _HTTPError(400, str(exc)) from None
    return ext, kind, window


async def _search_upload(svc: SearchService, upload: Any, form: Any, k: int, offset: int,
                         against: str | None) -> dict[str, Any]:
    """A query by an uploaded video or motion file: stored under a name of the server's choosing (at most the
    server's cap, 413 past it), decoded in a worker thread outside the model lock, queried, deleted; errors name
    the upload's own file name."""
    from starlette.concurrency import run_in_threadpool

    name = str(upload.filename)
    ext, kind, window = _upload_query(form, name)
    fd, tmp = tempfile.mkstemp(prefix="lavimo-upload-", suffix=ext)
    try:
        size = 0
        with os.fdopen(fd, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                size += len(chunk)
                if size > svc.max_upload_bytes:
                    raise _HTTPError(413, f"upload larger than {svc.max_upload_bytes >> 20} MiB")
                fh.write(chunk)
        if size == 0:
            raise _HTTPError(400, f"{name}: empty file")
        q = Query(video=Path(tmp)) if kind == "video" else Query(motion=Path(tmp))
        q.k, q.offset, q.against = k, offset, against
        q.start, q.end, q.crop = window.get("start"), window.get("end"), window.get("crop")
        q = _checked(q, svc.index)
        try:
            return await run_in_threadpool(svc.query, q)
        except ValueError as exc:  # BadInputError is a ValueError
            raise _HTTPError(400, str(exc).replace(tmp, name)) from exc
    finally:
        Path(tmp).unlink(missing_ok=True)


async def _api_search(svc: SearchService, request: Any) -> dict[str, Any]:
    """``POST /api/search`` (module docstring): exactly one of ``text``, ``file`` or ``keyid`` (a text and a file
    together is a 400: the page's mode decides, nothing is silently dropped)."""
    form = await _read_form(request, svc.max_upload_bytes)
    try:  # the form's upload is a spooled temp file: closed however the query ends
        return await _answer_form(svc, form)
    finally:
        await form.close()


async def _answer_form(svc: SearchService, form: Any) -> dict[str, Any]:
    """:func:`_api_search` once its form is read."""
    from starlette.concurrency import run_in_threadpool

    k = _k(form.get("k", 5))
    offset = _int(form.get("offset"), "offset", 0)
    if form.get("page") not in (None, ""):
        offset = (max(1, _int(form.get("page"), "page", 1)) - 1) * k
    against = str(form.get("against")) if form.get("against") not in (None, "") else None
    if str(form.get("captions", "")).lower() in ("1", "true", "on", "yes"):
        against = "text"
    upload = form.get("file")
    has_file = upload is not None and not isinstance(upload, str) and bool(getattr(upload, "filename", ""))
    has_text = str(form.get("text") or "").strip() != ""
    has_key = form.get("keyid") not in (None, "")
    if has_file + has_text + has_key > 1:
        raise _HTTPError(400, "give one query: a text, a file or a keyid (the page's mode decides which)")
    if has_file:
        return await _search_upload(svc, upload, form, k, offset, against)
    if has_key:
        q = Query(row=_row(svc.index, form.get("keyid")), k=k, offset=offset, against=against)
    else:
        if against == "text":
            raise _HTTPError(400, "captions (motion -> text) need a motion file or a keyid")
        q = Query(text=_text(form.get("text")), k=k, offset=offset, against=against)
    q = _checked(q, svc.index)
    try:
        return await run_in_threadpool(svc.query, q)
    except ValueError as exc:
        raise _HTTPError(400, str(exc)) from exc


def _page_query(svc: SearchService, params: Any) -> tuple[dict[str, Any], Query | None]:
    """The query in a page address (shareable: ``?q=TEXT&mode=text&page=N&k=K`` or ``?keyid=ID&mode=more|captions|
    videos&page=N``; ``text=`` is read as ``q=``) -> (the page's state, the checked query or None)."""
    mode = str(params.get("mode") or "text")
    text = str(params.get("q") or params.get("text") or "")
    keyid = str(params.get("keyid") or "")
    state = {"q": text, "mode": mode, "keyid": keyid, "k": 5, "page": 1}
    if mode not in MODES and mode not in ACTIONS:
        raise _HTTPError(400, f"mode must be one of {', '.join(MODES + tuple(ACTIONS))}")
    state["k"] = _k(params.get("k") or 5)
    state["page"] = max(1, _int(params.get("page"), "page", 1))
    offset = (state["page"] - 1) * state["k"]
    if offset + state["k"] > MAX_DEPTH:
        raise _HTTPError(400, f"page {state['page']} is past the first {MAX_DEPTH} results")
    if mode in ACTIONS and keyid:
        q = Query(row=_row(svc.index, keyid), k=state["k"], offset=offset, against=ACTIONS[mode])
    elif mode == "text" and text:
        q = Query(text=_text(text), k=state["k"], offset=offset)
    else:
        return state, None
    return state, _checked(q, svc.index)


def create_app(retriever: Any, index: Any, max_upload_bytes: int = MAX_UPLOAD_BYTES,
               hosts: Sequence[str] | None = None):
    """The FastAPI app (module docstring). ``hosts``: the Host names it answers to (default
    :func:`allowed_hosts`)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
    from fastapi.staticfiles import StaticFiles

    svc = SearchService(retriever, index, max_upload_bytes)
    env = _templates()
    app = FastAPI(title="LAVIMO motion search", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = svc
    app.add_middleware(_HostCheck, hosts=allowed_hosts() if hosts is None else tuple(hosts))
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    examples = svc.examples()
    info = {"summary": _summary(index, max_upload_bytes), "examples": examples, "max_k": MAX_K,
            "max_text": MAX_TEXT, "video_types": ",".join(VIDEO_TYPES), "motion_types": ",".join(MOTION_TYPES),
            "has_video": bool(getattr(retriever, "has_video", False)), "against": ALLOWED_AGAINST}

    def render(status: int = 200, **kw: Any):
        return HTMLResponse(env.get_template("page.html").render(**info, **kw), status_code=status)

    @app.exception_handler(_HTTPError)
    async def _http_error(_req, exc: _HTTPError):
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _any_error(_req, exc: Exception):  # never a traceback to the client; the server keeps serving
        log.exception("request failed")
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request):
        state = {"q": str(request.query_params.get("q") or request.query_params.get("text") or ""),
                 "mode": "text", "keyid": "", "k": 5, "page": 1}
        try:
            state, q = _page_query(svc, request.query_params)
            res = svc.query(q) if q is not None else None
            return render(state=state, res=res)
        except _HTTPError as exc:
            return render(exc.status, state=state, res=None, error=exc.message)
        except ValueError as exc:
            return render(400, state=state, res=None, error=str(exc))

    @app.post("/api/search")
    async def api_search(request: Request):
        return await _api_search(svc, request)

    @app.get("/api/examples")
    def api_examples():
        return {"examples": examples}

    def _n(n: int) -> int:
        if not 0 <= n < len(index):
            raise _HTTPError(404, "no such result")
        return n

    def _video(p: Path | None):
        if p is None:
            raise _HTTPError(404, "this motion has no preview")
        # a shard's video member is copied as is: never let a browser sniff it as anything but video
        return FileResponse(p, media_type="video/mp4", headers={"X-Content-Type-Options": "nosniff"})

    @app.get("/preview/{n}")
    def preview_video(n: int):
        return _preview_response(svc.preview_file, "preview", n)

    @app.get("/skeleton/{n}")
    def skeleton_video(n: int):
        return _preview_response(svc.skeleton_file, "skeleton preview", n)

    def _preview_response(find, what: str, n: int):
        try:
            p = find(_n(n))
        except RenderBusy as exc:
            raise _busy() from exc
        except (OSError, ValueError) as exc:  # BadInputError is a ValueError; the reason stays in the log:
            # it could tell which files exist
            log.warning("%s %d: %s", what, n, exc)
            raise _HTTPError(404, "this motion has no preview") from exc
        return _video(p)

    @app.get("/motion/{n}.npy")
    def motion_npy(n: int):
        try:
            feats = svc.motions.features(_n(n))
        except (OSError, ValueError) as exc:
            log.warning("motion %d: %s", n, exc)
            feats = None
        if feats is None:
            raise _HTTPError(404, "this index's database does not hold this motion")
        keyid = index.keyid(n)
        name = keyid if is_keyid(keyid) else f"motion-{n}"
        return Response(npy_bytes(feats), media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}.npy"',
                                 "X-Content-Type-Options": "nosniff"})

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


"""Where a shard set lives: a local directory, an http(s) base URL or a ``pipe:`` command. The one rule
(docs/scaling.md, "Shards from URLs").

The file ``NAME`` of a set ``SHARDS`` (``{split}.json``, ``stats.npz``, ``{split}-NNNNNN.tar``) is
``http(s)://HOST/PATH/NAME`` for an http(s) base URL (a trailing ``/`` dropped), the standard output of the shell
command ``CMD`` with every ``{}`` replaced by ``NAME`` for ``pipe:CMD`` (which must exit 0), else
``SHARDS/NAME``. :func:`shard_location` resolves a command line's ``--shards`` (other schemes, a ``pipe:``
without ``{}``, a tar URL or a base URL with ``?`` / ``#`` are refused); :func:`shard_set` is the readers'.

``NAME`` is checked where the URL or command is built (:func:`check_file_name`: a letter or digit, then
``[A-Za-z0-9_-]*``, then ``.tar`` / ``.json`` / ``.npz``, the whole string): an untrusted manifest can never make
a reader fetch another host or path, run another command or pass an option to one.

Reading, within ``LAVIMO_FETCH_TIMEOUT`` seconds (:func:`fetch_timeout`): tars stream through
:func:`open_shard` (:class:`ProcessStream`: ``curl`` without a shell for http(s), ``/bin/sh -c`` for ``pipe:``,
each in its own process group; a read waiting longer than the timeout for a byte, or a non-zero exit, raises
:class:`FetchError` naming the URL or command; ``close()`` kills the process group). Manifests and ``stats.npz``
are read whole by :func:`fetch_bytes` (at most :data:`SMALL_FILE_MAX_BYTES`, within the timeout overall; an
http 404 is FileNotFoundError); the sha256 of the manifest bytes fetched are remembered
(:func:`fetched_manifest_sha256`) for ``run.json``. Nothing is written anywhere.
"""


from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

from lavimo.core.errors import BadInputError

log = logging.getLogger(__name__)

#: the placeholder of a ``pipe:`` command, replaced by the file name
PLACEHOLDER = "{}"
#: the file names a location gives URLs for (manifests, stats.npz, tars)
#: the file names a location gives URLs for (manifests, stats.npz, tars); always used with ``fullmatch``
FILE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*\.(tar|json|npz)")
#: seconds a manifest / stats.npz fetch may take, and a tar read may wait for a byte (environment
#: LAVIMO_FETCH_TIMEOUT overrides)
FETCH_TIMEOUT = 30.0
#: the largest manifest / stats.npz read from a URL or command
SMALL_FILE_MAX_BYTES = 64 << 20
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_HTTP = ("http://", "https://")
_ERR_TAIL = 300  # characters of a failing command's stderr shown in its error


class FetchError(OSError):
    """A remote file could not be read (connection refused, timeout, HTTP error, failing command, too large);
    the message names the URL or command."""


class CommandFailed(FetchError):
    """A ``pipe:`` command exited with a non-zero status (the file may simply be absent)."""


_warned_timeouts: set[str] = set()


def fetch_timeout() -> float:
    """Seconds allowed for one small-file fetch, and for a tar read to wait for its next byte:
    ``LAVIMO_FETCH_TIMEOUT`` when set to a finite number > 0, else :data:`FETCH_TIMEOUT`. A value that is not
    (``inf``, ``nan``, ``0``, ``-1``, ``abc``) falls back to the default with a warning naming the variable
    (logged once per value), so a bad setting never crashes a reader deep in the loader."""
    raw = os.environ.get("LAVIMO_FETCH_TIMEOUT", "").strip()
    if not raw:
        return FETCH_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value > 0:
        return value
    if raw not in _warned_timeouts:
        _warned_timeouts.add(raw)
        log.warning("LAVIMO_FETCH_TIMEOUT=%r is not a finite number of seconds > 0; using the default %g s",
                    raw, FETCH_TIMEOUT)
    return FETCH_TIMEOUT


def check_file_name(name: object) -> str:
    """``name`` when it is a plain shard-set file name (the whole of it matches :data:`FILE_NAME_RE`: a letter or
    digit first, no trailing newline), else BadInputError."""
    if not isinstance(name, str) or not FILE_NAME_RE.fullmatch(name):
        raise BadInputError(None, "name", f"{name!r} is not a plain shard-set file name "
                                          "('<letter or digit><letters, digits, _ or ->.tar|json|npz')")
    return name


def url_problem(spec: str) -> str | None:
    """Why the http(s) base URL ``spec`` cannot be a shard set's base (a query or fragment: ``BASE/NAME`` would
    land inside it), else None."""
    if spec.startswith(_HTTP) and ("?" in spec or "#" in spec):
        return ("a shard set's base URL cannot have a query (?...) or fragment (#...): the file names are "
                "appended to its path; use a pipe: command, e.g. 'pipe:curl -sfL \"https://host/shards/{}?token=...\"'")
    return None


def is_url(value: object) -> bool:
    """Whether ``value`` is an http(s) or ``pipe:`` URL (of one file) rather than a local path."""
    return isinstance(value, str) and value.startswith(_HTTP + ("pipe:",))


def is_remote(spec: object) -> bool:
    """Whether ``spec`` is a remote shard-set location: a :class:`RemoteShards`, an http(s) base URL (not a tar
    URL or brace pattern) or a ``pipe:`` command holding :data:`PLACEHOLDER`."""
    if isinstance(spec, RemoteShards):
        return True
    if not isinstance(spec, str):
        return False
    if spec.startswith(_HTTP):
        return "{" not in spec and not spec.rstrip("/").endswith(".tar")
    return spec.startswith("pipe:") and PLACEHOLDER in spec


@dataclass(frozen=True)
class RemoteShards:
    """A shard set behind an http(s) base URL or a ``pipe:`` command template (module docstring).

    ``str()`` is the location as given; ``loc / NAME`` and :meth:`url` give the URL (or ``pipe:`` command) of a
    file of the set."""

    spec: str

    def __post_init__(self) -> None:
        if not is_remote(self.spec):
            raise ValueError(f"{self.spec!r}: not an http(s) base URL or a pipe: command with {PLACEHOLDER}")
        problem = url_problem(self.spec)
        if problem:
            raise ValueError(f"{self.spec!r}: {problem}")

    def __str__(self) -> str:
        return self.spec

    @property
    def is_pipe(self) -> bool:
        """True for a ``pipe:`` command, False for an http(s) URL."""
        return self.spec.startswith("pipe:")

    def url(self, name: str) -> str:
        """The URL (or ``pipe:`` command) of the set's file ``name`` (checked by :func:`check_file_name`)."""
        name = check_file_name(name)
        if self.is_pipe:
            return self.spec.replace(PLACEHOLDER, name)
        return f"{self.spec.rstrip('/')}/{name}"

    def __truediv__(self, name: str) -> str:
        return self.url(name)

    def read_bytes(self, name: str, max_bytes: int = SMALL_FILE_MAX_BYTES) -> bytes:
        """The whole file ``name`` (:func:`fetch_bytes`); the sha256 of a manifest's (``*.json``) bytes is
        remembered for :func:`fetched_manifest_sha256`."""
        url = self.url(name)
        raw = fetch_bytes(url, max_bytes=max_bytes)
        if name.endswith(".json"):
            _remember_manifest(url, raw)
        return raw

    def exists(self, name: str) -> bool:
        """Whether the set holds ``name``: False for an http 404 or a ``pipe:`` command that exits non-zero;
        other failures (dead server, timeout) raise :class:`FetchError`. Reads the file."""
        try:
            self.read_bytes(name)
        except (FileNotFoundError, CommandFailed):
            return False
        return True


_MANIFEST_SHA: dict[str, list[tuple[str, str | None]]] = {}  # url -> [(sha256 of the bytes, content key)]
_MANIFEST_KEEP = 4  # fetches remembered per url
_MANIFEST_URLS = 64  # urls remembered


def _content_key(obj: object) -> str | None:
    try:
        return hashlib.sha256(json.dumps(obj, sort_keys=True, allow_nan=True).encode("utf-8")).hexdigest()
    except (TypeError, ValueError, RecursionError):
        return None


def _remember_manifest(url: str, raw: bytes) -> None:
    try:
        key = _content_key(json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, ValueError, RecursionError):
        key = None
    entries = _MANIFEST_SHA.pop(url, [])
    entries = [*entries, (hashlib.sha256(raw).hexdigest(), key)][-_MANIFEST_KEEP:]
    _MANIFEST_SHA[url] = entries  # most recently fetched url last
    while len(_MANIFEST_SHA) > _MANIFEST_URLS:
        del _MANIFEST_SHA[next(iter(_MANIFEST_SHA))]


def fetched_manifest_sha256(url: str, manifest: object) -> str | None:
    """The sha256 of the bytes of the manifest ``url`` this process fetched (:meth:`RemoteShards.read_bytes`)
    whose JSON content equals ``manifest`` (the dict parsed from them; the newest such fetch), or None when no
    such fetch is remembered. Nothing is fetched: ``run.json`` records the hash of the bytes training used."""
    key = _content_key(manifest)
    if key is None:
        return None
    for digest, fetched_key in reversed(_MANIFEST_SHA.get(url, [])):
        if fetched_key == key:
            return digest
    return None


def shard_location(spec: str | os.PathLike | RemoteShards) -> Path | RemoteShards:
    """The location ``--shards`` names (module docstring): a :class:`RemoteShards` for an http(s) base URL or a
    ``pipe:`` command with ``{}``, else a local directory as a Path. Raises BadInputError for a ``pipe:``
    command without ``{}``, a tar URL or brace pattern given as the set's base URL, a base URL with a query or
    fragment, or another URL scheme."""
    if isinstance(spec, (RemoteShards, Path)):
        return spec
    spec = os.fspath(spec)
    if is_remote(spec):
        problem = url_problem(spec)
        if problem:
            raise BadInputError(spec, None, problem)
        return RemoteShards(spec)
    if spec.startswith("pipe:"):
        raise BadInputError(spec, None, f"a pipe: shard location needs the placeholder {PLACEHOLDER} for the file "
                                        f"name, e.g. 'pipe:aws s3 cp s3://bucket/shards/{PLACEHOLDER} -'")
    if spec.startswith(_HTTP):
        raise BadInputError(spec, None, "give the shard set's base URL (the directory holding {split}.json, "
                                        "stats.npz and the tars), not a tar URL or brace pattern")
    if _SCHEME_RE.match(spec):
        raise BadInputError(spec, None, "only http://, https:// and pipe: locations are read (for other storage "
                                        f"use a command, e.g. 'pipe:aws s3 cp s3://bucket/shards/{PLACEHOLDER} -')")
    return Path(spec)


#: a shard set's location once resolved (:func:`shard_set`): a local directory or a :class:`RemoteShards`
ShardSet = Union[Path, RemoteShards]


def shard_set(spec: str | os.PathLike | RemoteShards) -> ShardSet:
    """``spec`` resolved once, for the readers: a :class:`RemoteShards` when :func:`is_remote` (checked as by
    :func:`shard_location`), else the local directory ``Path(spec)``. The command lines resolve ``--shards``
    with :func:`shard_location`, which also refuses other URL schemes and a ``pipe:`` without ``{}``."""
    return shard_location(spec) if is_remote(spec) else Path(spec)


# ----------------------------------------------------------------------------------------------- reading
def open_shard(url: str | os.PathLike) -> BinaryIO:
    """A binary stream of one tar: a local file (a path that exists is never taken for a URL, even with a
    ``:``), an http(s) URL or ``pipe:`` command through :func:`open_remote` (a stall timeout on every read,
    ``close()`` ends the process), else webdataset's ``gopen`` (the other schemes webdataset knows, for brace
    patterns and url lists given to the loader)."""
    url = os.fspath(url)
    if os.path.isfile(url):
        return open(url, "rb")
    if url.startswith(_HTTP + ("pipe:",)):
        return open_remote(url)
    import webdataset as wds

    return wds.gopen(url, "rb")


def open_remote(url: str, *, timeout: float | None = None) -> BinaryIO:
    """A buffered binary stream of an http(s) URL (``curl``, no shell) or a ``pipe:`` command's output (``/bin/sh
    -c``): a :class:`ProcessStream` whose reads wait at most ``timeout`` seconds (default :func:`fetch_timeout`)
    for a byte. Raises :class:`FetchError` when curl is not installed or the process cannot start."""
    timeout = fetch_timeout() if timeout is None else float(timeout)
    if url.startswith("pipe:"):
        argv = ["/bin/sh", "-c", url[len("pipe:"):]]
    elif url.startswith(_HTTP):
        curl = shutil.which("curl")
        if curl is None:
            raise FetchError(f"{url}: reading tars from http(s) needs the curl program, which is not installed "
                             "(install curl, e.g. apt-get install curl, or use a pipe: command)")
        secs = f"{timeout:.3f}"
        argv = [curl, "-f", "-s", "-S", "-L", "-N", "--proto", "=http,https", "--proto-redir", "=http,https",
                "--connect-timeout", secs, "--speed-limit", "1", "--speed-time", str(max(1, math.ceil(timeout))),
                "--", url]
    else:
        raise ValueError(f"{url!r}: not an http(s) or pipe: URL")
    return io.BufferedReader(ProcessStream(argv, url, timeout), buffer_size=1 << 16)


def _tail(err: bytes | bytearray) -> str:
    return " ".join(bytes(err).decode("utf-8", "replace").split())[-_ERR_TAIL:]


class ProcessStream(io.RawIOBase):
    """The standard output of a process (``argv``, its own process group) as a raw binary stream, for the tar
    named ``url`` (shown in every error).

    - :meth:`readinto` waits at most ``timeout`` seconds for a byte, else raises :class:`FetchError` ("no data
      for T s");
    - at the end of the output the process must exit 0 within ``timeout``: a non-zero status raises
      :class:`CommandFailed` (``pipe:``) or :class:`FetchError` (curl) with the end of its stderr (kept bounded);
    - :meth:`close` (also at the end of a ``with`` block or when garbage-collected) kills the process group
      (SIGTERM, SIGKILL after :attr:`TERM_WAIT` s) and reaps it, so no process outlives the stream."""

    #: seconds between SIGTERM and SIGKILL in :meth:`close`
    TERM_WAIT = 0.2

    def __init__(self, argv: list[str], url: str, timeout: float):
        super().__init__()
        self.url, self.timeout = url, float(timeout)
        self._what = "the command" if url.startswith("pipe:") else "curl"
        self._err = bytearray()
        self._done = False
        self._error: FetchError | None = None
        try:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, start_new_session=True, bufsize=0)
        except OSError as exc:
            raise FetchError(f"{url}: cannot start {self._what} ({exc})") from exc
        self._out_fd = self._proc.stdout.fileno()
        self._err_fd = self._proc.stderr.fileno()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._out_fd, selectors.EVENT_READ)
        self._sel.register(self._err_fd, selectors.EVENT_READ)

    @property
    def name(self) -> str:
        return self.url

    def readable(self) -> bool:
        return True

    def _stall(self) -> FetchError:
        tail = _tail(self._err)
        return FetchError(f"{self.url}: no data for {self.timeout:g} s (stalled; LAVIMO_FETCH_TIMEOUT)"
                          + (f" ({tail})" if tail else ""))

    def _read_err(self) -> None:
        block = os.read(self._err_fd, 1 << 16)
        if block:
            self._err = (self._err + block)[-4 * _ERR_TAIL:]
        else:
            self._sel.unregister(self._err_fd)

    def readinto(self, buffer) -> int:
        if self.closed:
            raise ValueError("read of a closed stream")
        if self._error is not None:
            raise self._error
        if self._done:
            return 0
        deadline = time.monotonic() + self.timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._error = self._stall()
                raise self._error
            ready = {key.fd for key, _ in self._sel.select(remaining)}
            if self._err_fd in ready:
                self._read_err()
            if self._out_fd in ready:
                data = os.read(self._out_fd, len(buffer))
                if data:
                    buffer[:len(data)] = data
                    return len(data)
                self._sel.unregister(self._out_fd)
                self._finish()
                return 0

    def _finish(self) -> None:
        """The end of the output: drain stderr and wait for the exit status (both within the timeout)."""
        deadline = time.monotonic() + self.timeout
        try:
            while self._err_fd in {key.fd for key in self._sel.get_map().values()}:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                for _ in self._sel.select(remaining):
                    self._read_err()
            rc = self._proc.wait(timeout=max(0.01, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._error = FetchError(f"{self.url}: {self._what} did not exit within {self.timeout:g} s after the "
                                     "end of its output (LAVIMO_FETCH_TIMEOUT)")
            raise self._error from None
        if rc != 0:
            tail = _tail(self._err)
            cls = CommandFailed if self._what == "the command" else FetchError
            self._error = cls(f"{self.url}: {self._what} exited with status {rc}" + (f" ({tail})" if tail else ""))
            raise self._error
        self._done = True

    def close(self) -> None:
        if self.closed:
            return
        try:
            proc = self._proc
            if proc.poll() is None:
                for sig, wait in ((signal.SIGTERM, self.TERM_WAIT), (signal.SIGKILL, 5.0)):
                    try:
                        os.killpg(proc.pid, sig)
                    except (ProcessLookupError, PermissionError):
                        pass
                    try:
                        proc.wait(timeout=wait)
                        break
                    except subprocess.TimeoutExpired:
                        continue
            self._sel.close()
            proc.stdout.close()
            proc.stderr.close()
        finally:
            super().close()


def fetch_bytes(url: str, *, max_bytes: int = SMALL_FILE_MAX_BYTES, timeout: float | None = None) -> bytes:
    """The whole content of an http(s) URL or a ``pipe:`` command's output, at most ``max_bytes`` and within
    ``timeout`` seconds overall (default :func:`fetch_timeout`).

    Raises FileNotFoundError (http 404), :class:`CommandFailed` (a ``pipe:`` command exiting non-zero) or
    :class:`FetchError` (anything else: refused connection, timeout, other HTTP status, too large), each naming
    ``url``."""
    timeout = fetch_timeout() if timeout is None else float(timeout)
    if url.startswith("pipe:"):
        return _fetch_pipe(url, max_bytes, timeout)
    if url.startswith(_HTTP):
        return _fetch_http(url, max_bytes, timeout)
    raise ValueError(f"{url!r}: not an http(s) or pipe: URL")


class _Deadline:
    """Shuts down the sockets of one http fetch when its deadline passes (a blocked read then returns), so a
    server answering a byte now and then cannot stretch a fetch beyond its timeout (the socket timeout alone
    applies per read)."""

    def __init__(self, timeout: float):
        self.end = time.monotonic() + timeout
        self.fired = False
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(timeout, self.fire)
        self._timer.daemon = True
        self._timer.start()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.fired:
                self._shut(sock)

    @staticmethod
    def _shut(sock: socket.socket) -> None:
        try:
            socket.socket.shutdown(sock, socket.SHUT_RDWR)  # also for an ssl socket: wakes a blocked read
        except OSError:
            pass

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            for sock in self._socks:
                self._shut(sock)

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def cancel(self) -> None:
        self._timer.cancel()


def _opener(deadline: _Deadline):
    """A urllib opener whose http(s) connections register their socket with ``deadline``."""
    import http.client
    import urllib.request

    def watched(base):
        class Conn(base):
            def connect(self):
                super().connect()
                deadline.add(self.sock)
        return Conn

    http_conn, https_conn = watched(http.client.HTTPConnection), watched(http.client.HTTPSConnection)

    class HTTP(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(http_conn, req)

    class HTTPS(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(https_conn, req, context=getattr(self, "_context", None))

    return urllib.request.build_opener(HTTP(), HTTPS())


def _fetch_http(url: str, max_bytes: int, timeout: float) -> bytes:
    import http.client
    import urllib.error
    import urllib.request

    late = f"{url}: not read within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)"
    deadline = _Deadline(timeout)
    req = urllib.request.Request(url, headers={"User-Agent": "lavimo"})
    try:
        with _opener(deadline).open(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"{url}: {int(length)} bytes, more than the {max_bytes} allowed for this file")
            sock = getattr(getattr(resp.fp, "raw", None), "_sock", None)
            data = bytearray()
            while True:
                remaining = deadline.remaining()
                if remaining <= 0 or deadline.fired:
                    raise FetchError(late)
                if isinstance(sock, socket.socket):
                    sock.settimeout(remaining)
                block = resp.read1(min(1 << 16, max_bytes + 1 - len(data)))
                if deadline.fired:
                    raise FetchError(late)
                if not block:
                    return bytes(data)
                data += block
                if len(data) > max_bytes:
                    raise FetchError(f"{url}: more than the {max_bytes} bytes allowed for this file")
    except FetchError:
        raise
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise FileNotFoundError(f"{url}: not found (HTTP 404)") from exc
        raise FetchError(f"{url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError) or deadline.fired:
            raise FetchError(f"{url}: no answer within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)") from exc
        raise FetchError(f"{url}: cannot connect ({reason})") from exc
    except TimeoutError as exc:
        raise FetchError(f"{url}: no answer within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if deadline.fired:
            raise FetchError(late) from exc
        raise FetchError(f"{url}: cannot read it ({type(exc).__name__}: {exc})") from exc
    finally:
        deadline.cancel()


def _fetch_pipe(url: str, max_bytes: int, timeout: float) -> bytes:
    """A ``pipe:`` command's whole output through :class:`ProcessStream`, each read waiting at most what is left
    of ``timeout`` (so the command has ``timeout`` seconds in all, its exit included)."""
    late = f"{url}: the command did not finish within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)"
    deadline = time.monotonic() + timeout
    out, buf = bytearray(), bytearray(1 << 16)
    with ProcessStream(["/bin/sh", "-c", url[len("pipe:"):]], url, timeout) as stream:
        while True:
            stream.timeout = deadline - time.monotonic()
            try:
                if stream.timeout <= 0:
                    raise FetchError(late)
                n = stream.readinto(buf)
            except CommandFailed:
                raise
            except FetchError:
                raise FetchError(late) from None
            if not n:
                return bytes(out)
            out += buf[:n]
            if len(out) > max_bytes:
                raise FetchError(f"{url}: more than the {max_bytes} bytes allowed for this file")


def sha256_remote(url: str, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a remote tar, streamed once through :func:`open_shard` (nothing stored).
    Raises OSError naming ``url`` when it cannot be read to its end."""
    from lavimo.core.hashing import sha256_stream

    try:
        with open_shard(url) as fh:
            return sha256_stream(fh, chunk)
    except FetchError:
        raise  # names the url already
    except OSError as exc:
        raise FetchError(f"{url}: cannot read it ({' '.join(str(exc).split())[:300]})") from exc

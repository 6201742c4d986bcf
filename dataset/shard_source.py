"""Where a shard set lives: a local directory, an http(s) URL base or a ``pipe:`` command. The one rule.

``--shards`` of ``train.py`` / ``evaluate.py`` (and :func:`dataset.stream.make_loader`, the manifest and
``stats.npz`` readers of :mod:`dataset.shard_format`, the sha256 check before training, the gallery's clip
extractor) take a shard set location ``SHARDS``; the file ``NAME`` of the set (``{split}.json``, ``stats.npz``,
``{split}-NNNNNN.tar``) is:

- ``http://HOST/PATH`` or ``https://HOST/PATH`` (the set's base URL, not a tar): ``http://HOST/PATH/NAME`` (a
  trailing ``/`` of the base is dropped, one ``/`` is added);
- ``pipe:CMD`` where ``CMD`` holds the placeholder ``{}``: the standard output of the shell command ``CMD`` with
  every ``{}`` replaced by ``NAME``, e.g. ``pipe:curl -sfL https://host/shards/{}`` or
  ``pipe:aws s3 cp s3://bucket/shards/{} -``. The command must exit 0 (a non-zero exit is an error naming it);
- anything else: a local directory, ``SHARDS/NAME``, exactly as before. Other URL schemes (``s3://``,
  ``gs://``, ``file://``, ...) are refused with a hint to use ``pipe:``.

``NAME`` is always checked here, where the URL or command is built: only ``[A-Za-z0-9_-]+`` followed by
``.tar``, ``.json`` or ``.npz`` (no ``/``, no ``..``, no ``:``, no shell characters). Shard names come from the
manifest, which is untrusted: it can never make a reader fetch another host or path or run another command
(:func:`dataset.shard_format.manifest_shards` refuses such names too).

Reading:

- tars are streamed by webdataset's ``gopen`` (:func:`open_shard`): ``curl`` for http(s) (with its connection
  timeout and retries), a shell for ``pipe:``; local files are opened as files;
- the small files (manifests, ``stats.npz``) are read whole by :func:`fetch_bytes`: ``urllib`` for http(s), the
  shell command for ``pipe:``, at most :data:`SMALL_FILE_MAX_BYTES` bytes and within ``LAVIMO_FETCH_TIMEOUT``
  seconds (default :data:`FETCH_TIMEOUT`). A dead server, a timeout or a failing command raises
  :class:`FetchError` (an OSError naming the URL or command); an http 404 raises FileNotFoundError.

Nothing is written anywhere: remote files are streamed or held in memory.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from core.errors import BadInputError

#: the placeholder of a ``pipe:`` command, replaced by the file name
PLACEHOLDER = "{}"
#: the file names a location gives URLs for (manifests, stats.npz, tars)
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_-]+\.(tar|json|npz)$")
#: seconds a manifest / stats.npz fetch may take (environment LAVIMO_FETCH_TIMEOUT overrides)
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


def fetch_timeout() -> float:
    """Seconds allowed for one small-file fetch: ``LAVIMO_FETCH_TIMEOUT`` when set to a positive number, else
    :data:`FETCH_TIMEOUT`."""
    try:
        value = float(os.environ.get("LAVIMO_FETCH_TIMEOUT", ""))
    except ValueError:
        return FETCH_TIMEOUT
    return value if value > 0 else FETCH_TIMEOUT


def check_file_name(name: object) -> str:
    """``name`` when it is a plain shard-set file name (:data:`FILE_NAME_RE`), else BadInputError."""
    if not isinstance(name, str) or not FILE_NAME_RE.match(name):
        raise BadInputError(None, "name", f"{name!r} is not a plain shard-set file name "
                                          "('<letters, digits, _ or ->.tar|json|npz')")
    return name


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
        """The whole file ``name`` (:func:`fetch_bytes`)."""
        return fetch_bytes(self.url(name), max_bytes=max_bytes)

    def exists(self, name: str) -> bool:
        """Whether the set holds ``name``: False for an http 404 or a ``pipe:`` command that exits non-zero;
        other failures (dead server, timeout) raise :class:`FetchError`. Reads the file."""
        try:
            self.read_bytes(name)
        except (FileNotFoundError, CommandFailed):
            return False
        return True


def shard_location(spec: str | os.PathLike | RemoteShards) -> Path | RemoteShards:
    """The location ``--shards`` names (module docstring): a :class:`RemoteShards` for an http(s) base URL or a
    ``pipe:`` command with ``{}``, else a local directory as a Path. Raises BadInputError for a ``pipe:``
    command without ``{}``, a tar URL or brace pattern given as the set's base URL, or another URL scheme."""
    if isinstance(spec, (RemoteShards, Path)):
        return spec
    spec = os.fspath(spec)
    if is_remote(spec):
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


# ----------------------------------------------------------------------------------------------- reading
def open_shard(url: str | os.PathLike) -> BinaryIO:
    """A binary stream of one tar: a local file (a path that exists is never taken for a URL, even with a
    ``:``), else webdataset's ``gopen`` (http(s) through curl, ``pipe:`` through a shell, the other schemes
    webdataset knows for brace patterns and url lists given to the loader; their errors surface as OSError on
    read or close)."""
    url = os.fspath(url)
    if os.path.isfile(url):
        return open(url, "rb")
    import webdataset as wds

    return wds.gopen(url, "rb")


def fetch_bytes(url: str, *, max_bytes: int = SMALL_FILE_MAX_BYTES, timeout: float | None = None) -> bytes:
    """The whole content of an http(s) URL or a ``pipe:`` command's output, at most ``max_bytes`` and within
    ``timeout`` seconds (default :func:`fetch_timeout`).

    Raises FileNotFoundError (http 404), :class:`CommandFailed` (a ``pipe:`` command exiting non-zero) or
    :class:`FetchError` (anything else: refused connection, timeout, other HTTP status, too large), each naming
    ``url``."""
    timeout = fetch_timeout() if timeout is None else float(timeout)
    if url.startswith("pipe:"):
        return _fetch_pipe(url, max_bytes, timeout)
    if url.startswith(_HTTP):
        return _fetch_http(url, max_bytes, timeout)
    raise ValueError(f"{url!r}: not an http(s) or pipe: URL")


def _fetch_http(url: str, max_bytes: int, timeout: float) -> bytes:
    import http.client
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    req = urllib.request.Request(url, headers={"User-Agent": "lavimo"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - http(s) only (checked above)
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise FetchError(f"{url}: {int(length)} bytes, more than the {max_bytes} allowed for this file")
            data = bytearray()
            while True:
                if time.monotonic() > deadline:
                    raise FetchError(f"{url}: not read within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)")
                block = resp.read(min(1 << 16, max_bytes + 1 - len(data)))
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
        if isinstance(reason, TimeoutError):
            raise FetchError(f"{url}: no answer within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)") from exc
        raise FetchError(f"{url}: cannot connect ({reason})") from exc
    except TimeoutError as exc:
        raise FetchError(f"{url}: no answer within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise FetchError(f"{url}: cannot read it ({type(exc).__name__}: {exc})") from exc


def _kill(proc: subprocess.Popen) -> None:
    """Kill the process group this module started for a ``pipe:`` command (its shell and the shell's children)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _fetch_pipe(url: str, max_bytes: int, timeout: float) -> bytes:
    cmd = url[len("pipe:"):]
    deadline = time.monotonic() + timeout
    try:
        proc = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,  # noqa: S602
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        raise FetchError(f"{url}: cannot start the command ({exc})") from exc
    out, err = bytearray(), bytearray()
    sel = selectors.DefaultSelector()
    try:
        sel.register(proc.stdout, selectors.EVENT_READ)
        sel.register(proc.stderr, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                _kill(proc)
                raise FetchError(f"{url}: the command did not finish within {timeout:g} s (LAVIMO_FETCH_TIMEOUT)")
            for key, _ in sel.select(remaining):
                block = os.read(key.fd, 1 << 16)
                if not block:
                    sel.unregister(key.fileobj)
                elif key.fileobj is proc.stdout:
                    out += block
                    if len(out) > max_bytes:
                        _kill(proc)
                        raise FetchError(f"{url}: more than the {max_bytes} bytes allowed for this file")
                else:
                    err = (err + block)[-4 * _ERR_TAIL:]
        try:
            rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _kill(proc)
            raise FetchError(f"{url}: the command did not finish within {timeout:g} s "
                             "(LAVIMO_FETCH_TIMEOUT)") from None
    finally:
        sel.close()
        if proc.poll() is None:
            _kill(proc)
        proc.stdout.close()
        proc.stderr.close()
    if rc != 0:
        tail = " ".join(err.decode("utf-8", "replace").split())[-_ERR_TAIL:]
        raise CommandFailed(f"{url}: the command exited with status {rc}" + (f" ({tail})" if tail else ""))
    return bytes(out)


def sha256_remote(url: str, chunk: int = 1 << 20) -> tuple[str, int]:
    """(hex sha256, size in bytes) of a remote tar, streamed once through :func:`open_shard` (nothing stored).
    Raises OSError naming ``url`` when it cannot be read to its end."""
    from core.hashing import sha256_stream

    try:
        with open_shard(url) as fh:
            return sha256_stream(fh, chunk)
    except OSError as exc:
        raise FetchError(f"{url}: cannot read it ({' '.join(str(exc).split())[:300]})") from exc

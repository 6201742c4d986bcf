"""A training run directory: layout, provenance record and the metrics table.

Layout (see the README)::

    RUN/config.json                  {"model": LavimoConfig, "train": TrainConfig, "trainer": options}
    RUN/run.json                     provenance: git commit, package versions, command, shard manifests and
                                     what was verified of every shard (sha256 computed, matched or "skipped")
    RUN/metrics.csv                  one row per validation
    RUN/tb/                          TensorBoard event files
    RUN/checkpoints/last.safetensors  latest weights (model.save_checkpoint)
    RUN/checkpoints/last.state.safetensors     optimiser/scheduler/scaler/RNG/loader position for --resume
    RUN/checkpoints/best.safetensors  weights with the best validation score
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import os
import platform
import re
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable

from lavimo.core.atomic import temp_target, write_json, write_text
from lavimo.core.errors import BadInputError, SetupError, is_disk_full
from lavimo.core.hashing import sha256_file
from lavimo.core.jsonconfig import read_json_file

log = logging.getLogger(__name__)

PACKAGES = ("torch", "torchvision", "open_clip_torch", "transformers", "webdataset", "numpy", "safetensors",
            "sentence-transformers", "tensorboard", "lavimo")


class RunDir:
    """Paths of one run directory (nothing is created until :meth:`create`)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    config = property(lambda self: self.root / "config.json")
    info = property(lambda self: self.root / "run.json")
    metrics = property(lambda self: self.root / "metrics.csv")
    tb = property(lambda self: self.root / "tb")
    ckpt_dir = property(lambda self: self.root / "checkpoints")
    last = property(lambda self: self.root / "checkpoints" / "last.safetensors")
    last_state = property(lambda self: self.root / "checkpoints" / "last.state.safetensors")
    best = property(lambda self: self.root / "checkpoints" / "best.safetensors")
    debug = property(lambda self: self.root / "debug")

    def create(self) -> "RunDir":
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        self.tb.mkdir(parents=True, exist_ok=True)
        return self


@contextlib.contextmanager
def writing(path: Path, run: RunDir):
    """Turn an OSError while writing ``path`` into a SetupError naming it (a full disk says how to go on)."""
    try:
        yield
    except OSError as exc:
        if is_disk_full(exc):
            hint = (f"then rerun with --resume (the last complete checkpoint, {run.last_state}, is kept)"
                    if run.last_state.is_file() else
                    "then start again without --resume (no complete checkpoint was written)")
            raise SetupError(f"{path}: no space left on device while writing it; free disk space (or choose "
                             f"another --out), {hint}") from exc
        raise SetupError(f"{path}: cannot write it ({exc.strerror or exc}); check the run directory "
                         f"{run.root} (permissions, free space)") from exc


def start_run(run: RunDir, config: dict[str, Any], *, shards: str | os.PathLike, manifests: dict[str, dict],
              verified: dict[str, dict[str, dict]] | None, extra: dict[str, Any], streamed: bool = False) -> None:
    """Rank 0's first writes of a session: the run directory (what a killed run left half-written removed,
    never counted, never read), ``config.json`` (``config``) and ``run.json`` (:func:`write_run_info`)."""
    with writing(run.root, run):
        run.create()
        remove_stale_temp_files(run)
    with writing(run.config, run):
        write_json(run.config, config)
    with writing(run.info, run):
        write_run_info(run, shards=shards, manifests=manifests, verified=verified, extra=extra, streamed=streamed)


def note_session(run: RunDir, key: str, value: Any) -> None:
    """Record ``key: value`` in run.json's current session (the last of ``sessions``, mirrored at the top level),
    e.g. what a resume kept exactly; rank 0, after :func:`start_run`."""
    with writing(run.info, run):
        info = load_json(run.info)
        info[key] = value
        if isinstance(info.get("sessions"), list) and info["sessions"] and isinstance(info["sessions"][-1], dict):
            info["sessions"][-1][key] = value
        write_json(run.info, info)


#: the files of a run directory that are written atomically (lavimo.core.atomic): a killed run may leave a temporary file
#: of one of these (``.{name}.{random}.tmp{ext}``), which :func:`remove_stale_temp_files` removes
_RUN_FILE_RE = re.compile(r"^(config\.json|run\.json|metrics\.csv|requeue\.json)$")
_CKPT_FILE_RE = re.compile(r"^(last\.safetensors|last\.state\.safetensors|best\.safetensors|epoch-\d+\.safetensors)$")


def remove_stale_temp_files(run: RunDir) -> list[Path]:
    """Remove the temporary files a killed run left in ``run`` (docs/design.md, "Atomic writes"): only regular
    files (not links) in RUN/ and RUN/checkpoints/ whose name is :func:`lavimo.core.atomic.temp_target`'s rule for one of
    the run's own files; nothing else is touched. Returns what was removed. Call it only when no other process
    writes to the run (train.py's rank 0 before it writes anything)."""
    removed = []
    for folder, rule in ((run.root, _RUN_FILE_RE), (run.ckpt_dir, _CKPT_FILE_RE)):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            final = temp_target(p.name)
            if final is None or not rule.match(final) or p.is_symlink() or not p.is_file():
                continue
            try:
                p.unlink()
            except FileNotFoundError:
                continue
            removed.append(p)
            log.info("removed %s, a temporary file of %s left by a killed run", p, final)
    return removed


def git_commit(repo: str | os.PathLike) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding ``repo``."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                                capture_output=True, text=True, timeout=10, check=True).stdout
        return {"commit": sha, "dirty": bool(status.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_run_info(run: RunDir, *, shards: str | os.PathLike, manifests: dict[str, dict],
                   verified: dict[str, dict[str, dict]] | None = None,
                   extra: dict[str, Any] | None = None, streamed: bool = False) -> dict[str, Any]:
    """Write ``run.json``: git commit, package versions, command line (of this session, also appended to
    ``sessions``, which keeps every start/resume) and, per split, the sha256 of the shard manifest file and
    per shard what this session verified.

    ``verified`` is ``{split: {shard name: {"sha256": computed hex, "bytes": size, "match": bool}}}`` from the
    verification before training, or None when there was none. Per split the record holds ``"verify":
    "sha256"`` (verified before training), ``"sha256-stream"`` (``streamed``: each shard checked while training
    streams it, a mismatch stops the run) or ``"skipped"`` (``--no-verify``) and ``"shards": {name:
    {"manifest_sha256": listed, "sha256": computed, "bytes": size, "match": bool}}`` (only ``manifest_sha256``
    unless verified before training). ``shards`` may be a
    remote set (an http(s) base URL or ``pipe:`` command, dataset/shards/source.py): ``root`` is then the
    location as given, each ``manifest`` its URL, and ``manifest_sha256`` the sha256 of the bytes this process
    fetched and parsed into ``manifests[split]`` (:func:`lavimo.dataset.shards.source.fetched_manifest_sha256`; never
    fetched again). When no such fetch is remembered (a manifest dict from elsewhere, or changed after reading)
    ``manifest_sha256`` is None and ``manifest_sha256_unavailable`` says why (with a warning); run.json is
    written all the same.
    """
    from lavimo.dataset.shards.source import fetched_manifest_sha256, is_remote, shard_location

    remote = is_remote(shards)
    shards = shard_location(shards) if remote else Path(shards)
    shard_info: dict[str, Any] = {}
    listed_only: dict[str, Any] = {}  # what identifies the shard set (compared across sessions)
    for split, manifest in manifests.items():
        mpath = shards / f"{split}.json"
        checked = None if verified is None else verified.get(split, {})
        per_shard: dict[str, Any] = {}
        for i, s in enumerate(manifest.get("shards", [])):
            if not isinstance(s, dict):
                continue
            name = str(s.get("name", s.get("path", i)))
            rec: dict[str, Any] = {"manifest_sha256": s.get("sha256")}
            if checked is not None and name in checked:
                rec.update(checked[name])
            per_shard[name] = rec
        unavailable = None
        if remote:  # the hash of the bytes read_manifest parsed, remembered when they were fetched
            manifest_sha = fetched_manifest_sha256(str(mpath), manifest)
            if manifest_sha is None:
                unavailable = ("this process fetched no manifest with this content from the URL (the sha256 is "
                               "recorded only for the bytes training parsed; it is never fetched again)")
                log.warning("run.json: no sha256 for %s: %s", mpath, unavailable)
        else:
            manifest_sha = sha256_file(mpath)[0] if mpath.is_file() else None
        shard_info[split] = {"manifest": str(mpath), "manifest_sha256": manifest_sha,
                             "verify": ("sha256" if verified is not None else
                                        "sha256-stream" if streamed else "skipped"), "shards": per_shard}
        if unavailable:
            shard_info[split]["manifest_sha256_unavailable"] = unavailable
        listed_only[split] = [manifest_sha, {k: v["manifest_sha256"] for k, v in per_shard.items()}]
    session = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": git_commit(Path(__file__).resolve().parents[1]),
        "packages": package_versions(),
        "command": [sys.executable, *sys.argv],
        **(extra or {}),
    }
    shard_record = {"root": str(shards) if remote else str(shards.resolve()), "splits": shard_info}
    sessions = []
    if run.info.is_file():  # a resumed run: keep the earlier sessions, warn when the shards changed
        try:
            old = load_json(run.info)
            sessions = [x for x in old.get("sessions", []) if isinstance(x, dict)]
            old_splits = old.get("shards", {}).get("splits")
            if isinstance(old_splits, dict):
                before = {k: [v.get("manifest_sha256"),
                              {n: (r.get("manifest_sha256") if isinstance(r, dict) else r)
                               for n, r in (v.get("shards") or {}).items()}]
                          for k, v in old_splits.items() if isinstance(v, dict)}
                if before != listed_only:
                    log.warning("the shards differ from the ones this run started with (see run.json)")
                    session["shards_changed_from"] = old.get("shards")
        except (OSError, ValueError, AttributeError, TypeError):
            log.warning("%s unreadable; starting a new session list", run.info)
    sessions.append(session)
    info = {**session, "shards": shard_record, "sessions": sessions}
    write_json(run.info, info)
    return info


#: the largest metrics.csv read back on --resume (one row per validation: a few hundred bytes each)
MAX_METRICS_BYTES = 256 * 2**20
_MOVE_AWAY = "move it out of the run directory to resume (it is the validation log; a new one is started)"


class MetricsTable:
    """``metrics.csv``: one row per validation, rewritten atomically on each append.

    Columns are fixed by the first row (later keys not in the header are dropped with a warning).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        self.fields: list[str] = []
        if self.path.is_file():
            size = self.path.stat().st_size
            if size > MAX_METRICS_BYTES:
                raise BadInputError(self.path, None, f"{size} bytes, more than the {MAX_METRICS_BYTES} accepted for "
                                                     f"a metrics table; {_MOVE_AWAY}")
            try:
                with open(self.path, newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    self.fields = list(reader.fieldnames or [])
                    self.rows = list(reader)
            except (csv.Error, UnicodeDecodeError, ValueError) as exc:  # a field over csv's limit, bad bytes
                raise BadInputError(self.path, None, f"unreadable metrics table ({' '.join(str(exc).split())[:120]});"
                                                     f" {_MOVE_AWAY}") from exc
            if self.rows and "step" not in self.fields:
                raise BadInputError(self.path, "step", f"no step column; {_MOVE_AWAY}")

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after global step ``step`` (used on --resume: they will be recomputed)."""
        keep = []
        for i, r in enumerate(self.rows):
            try:
                row_step = float(r.get("step"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise BadInputError(self.path, "step", f"row {i + 1}: {str(r.get('step'))[:40]!r} is not a step; "
                                                       f"{_MOVE_AWAY}") from None
            if row_step <= step:  # NaN and inf rows are dropped
                keep.append(r)
        if len(keep) != len(self.rows):
            log.info("metrics.csv: dropping %d row(s) after step %d", len(self.rows) - len(keep), step)
            self.rows = keep
            self._write()

    def append(self, row: dict[str, Any]) -> None:
        if not self.fields:
            self.fields = list(row)
        extra = [k for k in row if k not in self.fields]
        if extra:
            log.warning("metrics.csv: columns %s not in the header; dropped", extra)
        self.rows.append({k: row.get(k, "") for k in self.fields})
        self._write()

    def _write(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


def load_json(path: str | os.PathLike) -> Any:
    """The JSON value of a run-directory file (``run.json``, ``config.json``): size and nesting capped
    (:func:`lavimo.core.jsonconfig.read_json_file`); :class:`BadInputError` naming the file when it is not JSON."""
    return read_json_file(path)

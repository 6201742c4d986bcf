"""Fuzz and memory-bomb tests of the video and image readers (docs/security.md, "Videos and images").

Every reader runs in a child process (``tests/fixtures/untrusted.py``: time limit, address-space cap), which
reports its own peak RSS and that of its ffmpeg processes (``tests/fixtures/child_peak.py``: wait4's ru_maxrss
would include the pytest parent's RSS at fork). Each fuzz test draws a seed with hypothesis (derandomized: the
same files on every run), mutates a batch of files from it and reads them all in ONE child, which prints one JSON
line per file: ``ok``, ``refused`` (the reader's one-line error) or ``crash`` (any other exception, with its
traceback).

Contract: no crash, every refusal one line naming the file (``video.jpgs`` for a shard member), peak RSS under the
stated bound, bounded time.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fixtures.child_peak import PEAK, reader_loop
from tests.fixtures.untrusted import run_python

FUZZ = settings(derandomize=True, deadline=None, max_examples=2, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])
BATCH = 24  # mutated files per example (one child reads them all)

#: peak RSS of a child that reads mutated videos (numpy + lavimo.core.mp4, and the ffmpeg processes it runs), MiB
VIDEO_RSS_MIB = 400
#: what a bomb may add to a child's RSS above its own baseline after imports (torch alone is ~700-900 MiB), MiB
BOMB_EXTRA_MIB = 300


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, bytes]:
    """Small valid files: an H.264 mp4 written by lavimo.core.mp4 and a VP8 webm written by ffmpeg."""
    from lavimo.core.mp4 import write_video

    d = tmp_path_factory.mktemp("videos")
    t = np.arange(12, dtype=np.uint8)[:, None, None, None]
    frames = np.broadcast_to(t * 20, (12, 48, 64, 3)).copy()
    write_video(d / "a.mp4", frames, fps=10)
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=10", "-t", "1.2",
                    "-c:v", "libvpx", "-b:v", "200k", str(d / "a.webm")], check=True)
    return {"mp4": (d / "a.mp4").read_bytes(), "webm": (d / "a.webm").read_bytes()}


# ------------------------------------------------------------------------------------------------ mutations
MP4_BOXES = (b"ftyp", b"moov", b"mdat", b"trak", b"mdia", b"minf", b"stbl", b"stsd", b"stsz", b"stco", b"stts",
             b"stsc", b"avcC", b"mvhd", b"tkhd")
EBML_IDS = (b"\x18\x53\x80\x67", b"\x1f\x43\xb6\x75", b"\x16\x54\xae\x6b", b"\x1a\x45\xdf\xa3", b"\xa3")
HUGE32 = (0xFFFFFFFF, 0x7FFFFFFF, 0x10000000, 1, 0, 7)

SEEDS = st.integers(0, 2**32 - 1)  # hypothesis draws the seed (derandomized); numpy draws a batch from it


def mutations(rng: np.random.Generator, fields: bool = False) -> list[tuple]:
    """1-3 random mutations: ("cut", fraction), ("flip", fraction, xor), ("huge", n, value) and, with ``fields``,
    ("field", byte offset of a .jpgs header field, value)."""
    out = []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["cut", "flip", "flip", "huge"] + (["field", "field"] if fields else []))
        if kind == "cut":
            out.append(("cut", float(rng.uniform(0.05, 1.0))))
        elif kind == "flip":
            out.append(("flip", float(rng.random()), int(rng.integers(1, 256))))
        elif kind == "huge":
            out.append(("huge", int(rng.integers(0, 1000)), int(rng.choice(HUGE32))))
        else:
            out.append(("field", int(rng.choice([8, 12, 16, 20, 28])), int(rng.choice(HUGE32 + (8192, 8193)))))
    return out


def mutate(data: bytes, muts, kind: str) -> bytes:
    """Apply (kind, ...) mutations: cut at a fraction, xor a byte, set a container size field huge."""
    b = bytearray(data)
    for m in muts:
        if not b:
            break
        if m[0] == "cut":
            del b[int(m[1] * (len(b) - 1)):]
        elif m[0] == "flip":
            b[int(m[1] * (len(b) - 1))] ^= m[2]
        else:
            if kind == "mp4":  # the 4-byte big-endian size before a box type
                spots = [i - 4 for t in MP4_BOXES for i in _find_all(b, t) if i >= 4]
                if spots:
                    i = spots[m[1] % len(spots)]
                    b[i:i + 4] = m[2].to_bytes(4, "big")
            else:  # an EBML element's size: an 8-byte vint declaring ~2^48 bytes
                spots = [i + len(t) for t in EBML_IDS for i in _find_all(b, t)]
                spots = [i for i in spots if i + 8 <= len(b)]
                if spots:
                    i = spots[m[1] % len(spots)]
                    b[i:i + 8] = b"\x01" + (m[2] | 0xFF0000000000).to_bytes(7, "big")
    return bytes(b)


def _find_all(b: bytearray, needle: bytes) -> list[int]:
    out, i = [], b.find(needle)
    while i >= 0 and len(out) < 50:
        out.append(i)
        i = b.find(needle, i + 1)
    return out


def _records(m, n: int) -> list[dict]:
    assert not m.timed_out and m.returncode == 0, f"rc={m.returncode} {m.stderr[-3000:]}"
    rows = [json.loads(line) for line in m.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == n, m.stdout[-2000:]
    crashes = [r for r in rows if "crash" in r]
    assert not crashes, crashes[0]["crash"]
    return rows


READ_VIDEOS = reader_loop("""
from lavimo.core.errors import BadInputError
from lavimo.core.mp4 import read_frames, read_video
""", """
f, meta = read_video(p, 32)
g = read_frames(p, [0, 2], 32)
ok = [list(f.shape), list(g.shape)]
""")


@FUZZ
@given(seed=SEEDS)
def test_fuzz_video_files(seed, videos, tmp_path_factory):
    """Truncated, bit-flipped and huge-size-field mp4 / webm files: read_video and read_frames either decode them
    or refuse them with one line naming the file (BadInputError); never a crash, at most VIDEO_RSS_MIB."""
    rng = np.random.default_rng(seed)
    d = tmp_path_factory.mktemp("fuzzv")
    paths = []
    for j in range(BATCH):
        kind = ("mp4", "webm")[j % 2]
        p = d / f"v{j}.{kind}"
        p.write_bytes(mutate(videos[kind], mutations(rng), kind))
        paths.append(str(p))
    m = run_python(READ_VIDEOS, json.dumps(paths), timeout=120)
    rows = _records(m, len(paths) + 1)
    for r in rows[:-1]:
        if "refused" in r:
            assert r["refused"].startswith(r["file"] + ": video: ") and "\n" not in r["refused"], r
    assert any("refused" in r for r in rows), rows
    assert rows[-1]["peak_kib"] / 1024 < VIDEO_RSS_MIB, rows[-1]
    assert m.seconds < 60, m.seconds


# ------------------------------------------------------------------------------------------------ .jpgs members
READ_JPGS = reader_loop("""
import torch  # decode_jpgs returns tensors: imported before the baseline
from lavimo.dataset.video_frames import decode_jpgs, jpgs_info
""", """
data = open(p, "rb").read()
n = jpgs_info(data)[0]
a = decode_jpgs(data, [0, n - 1], min_size=16)
b = decode_jpgs(data)
ok = [list(a.shape), list(b.shape)]
""", refused="ValueError")

def mutate_jpgs(data: bytes, muts) -> bytes:
    b = bytearray(data)
    for m in muts:
        if m[0] == "field":  # n, width, height, or an offset (little-endian)
            if m[1] + 4 <= len(b):
                b[m[1]:m[1] + 4] = m[2].to_bytes(4, "little")
        else:
            b = bytearray(mutate(bytes(b), [m], "mp4"))
    return bytes(b)


@FUZZ
@given(seed=SEEDS)
def test_fuzz_jpgs_members(seed, tmp_path_factory):
    """Mutated ``video.jpgs`` members (header fields huge, offsets, truncation, flipped JPEG bytes): decoded or
    refused with one ValueError line naming ``video.jpgs`` (the loader turns it into a skipped sample); the RSS
    above the child's baseline stays under BOMB_EXTRA_MIB."""
    from lavimo.dataset.video_frames import encode_jpgs

    t = np.arange(4, dtype=np.uint8)[:, None, None, None]
    base = encode_jpgs(np.broadcast_to(t * 50, (4, 32, 48, 3)).copy())
    d = tmp_path_factory.mktemp("fuzzj")
    paths = []
    rng = np.random.default_rng(seed)
    for j in range(BATCH):
        p = d / f"m{j}.jpgs"
        p.write_bytes(mutate_jpgs(base, mutations(rng, fields=True)))
        paths.append(str(p))
    m = run_python(READ_JPGS, json.dumps(paths), timeout=120)
    rows = _records(m, len(paths) + 1)
    for r in rows[:-1]:
        if "refused" in r:
            assert r["refused"].startswith("video.jpgs: ") and "\n" not in r["refused"], r
    extra = (rows[-1]["peak_kib"] - rows[-1]["base_kib"]) / 1024
    assert extra < BOMB_EXTRA_MIB, extra
    assert m.seconds < 60, m.seconds


# ------------------------------------------------------------------------------------------------ memory bombs
@pytest.fixture(scope="module")
def huge_mp4(tmp_path_factory) -> Path:
    """The issue's bomb: a ~200 KB H.264 mp4 of 8192 x 8192 frames (3 frames of one grey)."""
    p = tmp_path_factory.mktemp("bomb") / "huge.mp4"
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=8192x8192:r=10",
                    "-t", "0.3", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(p)], check=True)
    return p


QUERY = PEAK + r"""
import json, sys
import lavimo.search.video as sv
base = peak_kib()
try:
    if hasattr(sv, "query_frames"):
        fr, crop = sv.query_frames(sys.argv[1], 8, 224)
    else:  # the code before the budget (to see this test fail there): full-size frames
        fr, crop = sv.read_frames(sys.argv[1], 8), None
    sv.model_view(fr, 224, 1.0, crop)
    out = {"ok": list(fr.shape)}
except sv.BadInputError as e:
    out = {"refused": str(e)}
out["base_kib"], out["peak_kib"] = base, peak_kib()
print(json.dumps(out))
"""

SHARD_MEMBER = PEAK + r"""
import json, sys
import torch
from lavimo.core.mp4 import mp4_frames
from lavimo.core.errors import BadInputError
base = peak_kib()
data = open(sys.argv[1], "rb").read()
import inspect
kw = {"short_side": 448} if "short_side" in inspect.signature(mp4_frames).parameters else {}
try:
    out = {"ok": list(mp4_frames(data, [0, 1], **kw).shape)}
except BadInputError as e:
    out = {"refused": str(e)}
out["base_kib"], out["peak_kib"] = base, peak_kib()
print(json.dumps(out))
"""


def test_huge_frame_video_query_is_refused_from_its_header(huge_mp4):
    """8192 x 8192 frames: refused from the probe (above MAX_FRAME_PIXELS), one line naming the file; the query
    child stays within BOMB_EXTRA_MIB of its baseline (it decoded 8 full frames before: 4 GiB peak)."""
    m = run_python(QUERY, huge_mp4, timeout=120)
    assert m.returncode == 0 and not m.timed_out, m.stderr[-2000:]
    out = json.loads(m.stdout.strip().splitlines()[-1])
    assert "refused" in out and out["refused"].startswith(f"{huge_mp4}: video: frame size 8192x8192"), out
    assert (out["peak_kib"] - out["base_kib"]) / 1024 < BOMB_EXTRA_MIB, out
    assert m.seconds < 60


def test_huge_frame_shard_member_is_refused(huge_mp4):
    """The same bytes as a shard's ``video.mp4`` member (the loader's call): refused naming the member."""
    m = run_python(SHARD_MEMBER, huge_mp4, timeout=120)
    assert m.returncode == 0 and not m.timed_out, m.stderr[-2000:]
    out = json.loads(m.stdout.strip().splitlines()[-1])
    assert out.get("refused", "").startswith("video.mp4: video: frame size 8192x8192"), out
    assert (out["peak_kib"] - out["base_kib"]) / 1024 < BOMB_EXTRA_MIB, out


def test_large_allowed_video_is_decoded_at_the_size_needed(tmp_path):
    """A 4K video (allowed) is decoded by ffmpeg straight to twice the model's size (short side 448 for
    image_size 224), not at 3840 x 2160: the 8 query frames cost ~8 MB instead of ~200 MB."""
    p = tmp_path / "uhd.mp4"
    subprocess.run([_ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=3840x2160:r=10", "-t", "1",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(p)], check=True)
    m = run_python(QUERY, p, timeout=120)
    assert m.returncode == 0 and not m.timed_out, m.stderr[-2000:]
    out = json.loads(m.stdout.strip().splitlines()[-1])
    assert out.get("ok") == [8, 448, 796, 3], out
    assert (out["peak_kib"] - out["base_kib"]) / 1024 < BOMB_EXTRA_MIB, out


JPGS_BOMB = PEAK + r"""
import json, sys
import torch
from lavimo.dataset.video_frames import decode_jpgs
base = peak_kib()
data = open(sys.argv[1], "rb").read()
out = {"base_kib": base}
try:
    out["all"] = list(decode_jpgs(data).shape)       # the preview's call: every frame at full size
except ValueError as e:
    out["all_refused"] = str(e)
out["two"] = list(decode_jpgs(data, [0, 7], min_size=224).shape)  # the loader's call: DCT-scaled
out["peak_kib"] = peak_kib()
print(json.dumps(out))
"""


def test_jpgs_member_of_huge_frames_is_checked_before_decoding(tmp_path):
    """8 JPEG frames of 8192 x 8192 (~1 MB): decoding all of them at full size (1.5 GiB) is refused from the header
    before any pixel is decoded; the loader's two frames decode at 1/8 scale. RSS within BOMB_EXTRA_MIB."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8192, 8192), (90, 120, 150)).save(buf, format="JPEG", quality=50)
    jpg = buf.getvalue()
    from lavimo.dataset.video_frames import _HEADER, JPGS_MAGIC  # the layout encode_jpgs writes

    offsets = np.arange(9, dtype="<u8") * len(jpg)
    (tmp_path / "bomb.jpgs").write_bytes(_HEADER.pack(JPGS_MAGIC, 8, 8192, 8192) + offsets.tobytes() + jpg * 8)
    m = run_python(JPGS_BOMB, tmp_path / "bomb.jpgs", timeout=120)
    assert m.returncode == 0 and not m.timed_out, m.stderr[-2000:]
    out = json.loads(m.stdout.strip().splitlines()[-1])
    assert out.get("all_refused", "").startswith("video.jpgs: 8 frames of 8192x8192"), out
    assert out["two"] == [2, 3, 1024, 1024], out
    assert (out["peak_kib"] - out["base_kib"]) / 1024 < BOMB_EXTRA_MIB, out


def test_webm_without_duration_is_read(tmp_path):
    """A webm written to a pipe (as a browser's MediaRecorder does: no duration in the header) still works: its
    packets are counted (no decoding) and a query's frames come from the whole clip."""
    from lavimo.search.video import probe, read_frames

    p = tmp_path / "live.webm"
    with open(p, "wb") as fh:
        subprocess.run([_ffmpeg(), "-v", "error", "-f", "lavfi", "-i", "testsrc=size=64x48:rate=30", "-t", "2",
                        "-c:v", "libvpx", "-b:v", "200k", "-f", "webm", "-live", "1", "pipe:1"], stdout=fh, check=True)
    info = probe(p)
    assert info.fps == pytest.approx(30.0) and info.duration == pytest.approx(2.0, abs=0.05)
    assert read_frames(p, 8).shape == (8, 48, 64, 3)


def test_read_video_frame_and_byte_caps(videos, tmp_path, monkeypatch):
    """read_video returns at most MAX_FRAMES frames and MAX_DECODED_BYTES of them: a longer video is refused with
    one line naming the file, not decoded into memory without bound."""
    import lavimo.core.mp4 as mp4
    from lavimo.core.errors import BadInputError

    p = tmp_path / "a.mp4"
    p.write_bytes(videos["mp4"])  # 12 frames of 64 x 48
    assert mp4.read_video(p)[0].shape == (12, 48, 64, 3)
    monkeypatch.setattr(mp4, "MAX_FRAMES", 5)
    with pytest.raises(BadInputError, match=r"more than 5 frames of 64x48") as e:
        mp4.read_video(p)
    assert str(e.value).startswith(f"{p}: video: ")
    monkeypatch.setattr(mp4, "MAX_FRAMES", 20_000)
    monkeypatch.setattr(mp4, "MAX_DECODED_BYTES", 10 * 64 * 48 * 3)
    with pytest.raises(BadInputError, match=r"more than 10 frames"):
        mp4.read_video(p)
    assert mp4.read_video(p, 24)[0].shape == (12, 24, 32, 3)  # scaled while decoding: within the budget


# ------------------------------------------------------------ issue 24: allocation, streaming, mid-stream size
RLIMIT_READ = r"""
import json, resource, sys
from lavimo.core.mp4 import read_video
vm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmSize:")) * 1024
limit = vm + (1 << 30)  # what this process maps now, plus 1 GiB: as under ulimit -v or overcommit_memory=2
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    print(json.dumps({"ok": list(read_video(sys.argv[1])[0].shape)}))
except BaseException as e:
    print(json.dumps({"error": f"{type(e).__name__}: {e}"[:300]}))
"""


def test_read_video_reserves_what_the_header_announces(tmp_path):
    """A 12-frame 256 x 256 video reads in a process allowed only 1 GiB more address space: the frame array is
    sized from the probe (duration x fps + 1) and grown when needed, not reserved at the 2 GiB budget (before:
    MemoryError)."""
    from lavimo.core.mp4 import write_video

    frames = np.broadcast_to(np.arange(12, dtype=np.uint8)[:, None, None, None] * 20, (12, 256, 256, 3)).copy()
    write_video(tmp_path / "a.mp4", frames, fps=10)
    m = run_python(RLIMIT_READ, tmp_path / "a.mp4", timeout=60, address_space=False)
    assert m.returncode == 0 and not m.timed_out, m.stderr[-2000:]
    assert json.loads(m.stdout.strip().splitlines()[-1]) == {"ok": [12, 256, 256, 3]}


def test_decode_grows_past_a_short_header(videos, tmp_path, monkeypatch):
    """A header announcing fewer frames than the stream holds: the array grows (all 12 frames come back); a stream
    longer than iter_frames' max_frames is refused; iter_frames hands out chunks of at most ``chunk`` frames."""
    import dataclasses

    import lavimo.core.mp4 as mp4
    from lavimo.core.errors import BadInputError

    p = tmp_path / "a.mp4"
    p.write_bytes(videos["mp4"])
    real = mp4.probe_video
    monkeypatch.setattr(mp4, "probe_video", lambda path: dataclasses.replace(real(path), duration=0.1))
    assert mp4.read_video(p)[0].shape == (12, 48, 64, 3)
    info, size, chunks = mp4.iter_frames(p, 24, chunk=5)
    assert size == (32, 24) and [len(c) for c in chunks] == [5, 5, 2]
    with pytest.raises(BadInputError, match="more than 10 frames"):
        list(mp4.iter_frames(p, max_frames=10)[2])


def test_frame_above_the_pixel_cap_mid_stream_is_refused(tmp_path, monkeypatch):
    """An H.264 stream that starts at 64 x 64 and switches to 256 x 256 (two raw streams concatenated, then muxed):
    the probe sees 64 x 64; ffmpeg's decoder gets ``-max_pixels`` and refuses the larger frames, and the file is
    refused (here with the cap lowered to 128 x 128 to keep the file small; the product's is MAX_FRAME_PIXELS)."""
    import lavimo.core.mp4 as mp4
    from lavimo.core.errors import BadInputError

    ff = _ffmpeg()
    for name, size in (("a", "64x64"), ("b", "256x256")):
        subprocess.run([ff, "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10", "-frames:v",
                        "10", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-f", "h264",
                        str(tmp_path / f"{name}.h264")], check=True, timeout=60)
    (tmp_path / "ab.h264").write_bytes((tmp_path / "a.h264").read_bytes() + (tmp_path / "b.h264").read_bytes())
    subprocess.run([ff, "-v", "error", "-y", "-r", "10", "-f", "h264", "-i", str(tmp_path / "ab.h264"), "-c", "copy",
                    str(tmp_path / "ab.mp4")], check=True, timeout=60)
    assert "-max_pixels" in mp4.input_args(tmp_path / "ab.mp4")
    info = mp4.probe_video(tmp_path / "ab.mp4")
    assert (info.width, info.height) == (64, 64)
    assert len(mp4.read_video(tmp_path / "ab.mp4", 32)[0]) == 20  # within the real cap: every frame, scaled
    monkeypatch.setattr(mp4, "MAX_FRAME_PIXELS", 128 * 128)
    with pytest.raises(BadInputError, match=r"a frame above 16384 pixels"):
        mp4.read_video(tmp_path / "ab.mp4", 32)

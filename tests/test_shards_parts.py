"""build-shards --part K/N: parts write disjoint shard slots (and no manifest); the run without --part afterwards
keeps every shard and writes manifests and stats byte-identical to a build in one go. CLI: --part from the Slurm
job array, refused values (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures.shard_fixtures import FakeEmbedder, fake_features, make_corpus, simple_stats  # noqa: E402

from lavimo.dataset.shards.build import BuildConfig, build_shards  # noqa: E402
from lavimo.dataset.shards.format import read_manifests  # noqa: E402
from lavimo.dataset.shards.cli import main as cli_main  # noqa: E402

COUNTS = {"train": 9, "val": 4}  # 2 samples per shard: train slots 0..4, val slots 0..1


def _build(clips, videos, out, part=None):
    cfg = BuildConfig(out=out, videos=videos, samples_per_shard=2, splits=("train", "val"), part=part)
    return build_shards(clips, cfg, embedder=FakeEmbedder(), features_fn=fake_features, stats_fn=simple_stats,
                        show_progress=False)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), COUNTS, size=32, frames=(8, 12))


def _files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def test_parts_compose_to_the_one_go_build(corpus, tmp_path):
    clips, videos = corpus
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    _build(clips, videos, whole)
    for k in (1, 2, 3):
        rep = _build(clips, videos, parted, part=(k, 3))
        assert not rep.interrupted and not rep.failed
        assert (parted / ".build" / f"report-part-{k}-of-3.json").is_file()
    tars = sorted(p.name for p in parted.glob("*.tar"))
    assert tars == sorted(p.name for p in whole.glob("*.tar"))
    assert read_manifests(parted) == {} and not (parted / "stats.npz").exists()  # the parts write no manifest
    merge = _build(clips, videos, parted)  # the merge: the same build without --part
    assert merge.shards_written == 0 and merge.shards_kept == len(tars)
    assert _files(parted) == _files(whole)  # tars, manifests, stats.npz, README.md byte-identical


def test_a_part_writes_only_its_slots(corpus, tmp_path):
    clips, videos = corpus
    out = tmp_path / "p"
    rep = _build(clips, videos, out, part=(2, 2))
    assert sorted(p.name for p in out.glob("*.tar")) == ["train-000001.tar", "train-000003.tar", "val-000001.tar"]
    assert rep.per_split == {"train": 4, "val": 2}


def _cli(tmp_path: Path, *extra: str) -> int:
    for d in ("videos", "amass"):
        (tmp_path / d).mkdir(exist_ok=True)
    (tmp_path / "ann.json").write_text("{}")
    return cli_main(["--annotations", str(tmp_path / "ann.json"), "--amass", str(tmp_path / "amass"), "--videos",
                     str(tmp_path / "videos"), "--out", str(tmp_path / "out"), "-q", *extra])


@pytest.mark.parametrize("extra,env,needle", [
    (["--part", "3/2"], {}, "1 <= K <= N"),
    (["--part", "x"], {}, "K/N"),
    ([], {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "2"}, "SLURM_ARRAY"),
])
def test_cli_refuses_bad_parts(tmp_path, monkeypatch, capsys, extra, env, needle):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert _cli(tmp_path, *extra) == 2
    assert needle in capsys.readouterr().err


def test_cli_refuses_overwrite_with_part(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        _cli(tmp_path, "--part", "1/2", "--overwrite")
    assert exc.value.code == 2 and "--overwrite cannot be combined with --part" in capsys.readouterr().err


def test_cli_takes_the_part_from_the_array(tmp_path, monkeypatch):
    import lavimo.dataset.shards.build as shards

    seen = {}

    def fake_build(clips, cfg, **kw):
        seen["part"] = cfg.part
        raise shards.ShardSetMismatch("stop here")

    monkeypatch.setattr(shards, "build_shards", fake_build)
    monkeypatch.setattr("lavimo.dataset.annotations.load_clips", lambda *a, **k: [])
    monkeypatch.setattr("lavimo.dataset.text_embed.SentenceEmbedder", lambda *a, **k: FakeEmbedder())
    for k, v in {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"}.items():
        monkeypatch.setenv(k, v)
    assert _cli(tmp_path) == 2 and seen["part"] == (2, 4)

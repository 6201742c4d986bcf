"""The dissimilar subset as a split of its own (TMR's nsim_test): which ids build-shards packs, from where."""

from __future__ import annotations

from pathlib import Path

import pytest

from lavimo.dataset.annotations import load_clips
from lavimo.dataset.shards.cli import nsim_clips
from lavimo.dataset.subsets import PUBLISHED, published_subset, read_subset

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def test_published_lists_ship_with_the_package():
    assert len(read_subset(PUBLISHED["humanml3d"])) == 100 and len(read_subset(PUBLISHED["kitml"])) == 101
    assert published_subset("KIT-ML") == PUBLISHED["kitml"] and published_subset("babel") is None


@pytest.mark.skipif(not (SHARED / "kitml").is_dir(), reason="../shared/data/kitml (the KIT-ML fixture) is absent")
def test_kit_nsim_takes_every_listed_id_that_has_annotations():
    shipped = read_subset(PUBLISHED["kitml"])
    assert shipped == read_subset(SHARED / "kitml" / "splits" / "nsim_test.txt")
    clips = load_clips(SHARED / "kitml" / "annotations.json")
    nsim, note = nsim_clips(clips, SHARED / "kitml" / "annotations.json")
    test = set(read_subset(SHARED / "kitml" / "splits" / "test.txt"))
    # the 3 ids of the list outside KIT-ML's test split (01639, 03532, M03532) have no entry in KIT-ML's
    # annotations.json either: the other 98 are packed, and the note names the 3
    assert {k for k in shipped if k not in test} == {"01639", "03532", "M03532"}
    assert len(nsim) == 98 and {c.split for c in nsim} == {"nsim_test"}
    assert note.startswith("98 of the 101 ids") and "01639, 03532, M03532" in note


@pytest.mark.skipif(not (SHARED / "kitml").is_dir(), reason="../shared/data/kitml (the KIT-ML fixture) is absent")
def test_recognised_dataset_without_its_own_list_uses_the_published_one(tmp_path):
    import json
    import shutil

    root = tmp_path / "kitml"
    (root / "splits").mkdir(parents=True)
    shutil.copy(SHARED / "kitml" / "annotations.json", root / "annotations.json")
    for name in ("train", "val", "test", "all"):
        shutil.copy(SHARED / "kitml" / "splits" / f"{name}.txt", root / "splits" / f"{name}.txt")
    clips = load_clips(root / "annotations.json")
    nsim, note = nsim_clips(clips, root / "annotations.json")
    assert len(nsim) == 98 and str(PUBLISHED["kitml"]) in note
    # an unknown dataset without a list: nothing packed
    other = tmp_path / "mydata"
    other.mkdir()
    data = json.loads((root / "annotations.json").read_text())
    (other / "annotations.json").write_text(json.dumps({k: data[k] for k in list(data)[:5]}))
    assert nsim_clips(load_clips(other / "annotations.json"), other / "annotations.json") == ([], "")

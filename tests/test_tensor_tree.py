"""training/tensor_tree.py: a training state's containers and tensors as one safetensors file (no pickle), read
back with every type kept, and every malformed file refused with the file and the field named."""

from __future__ import annotations

import json
import math
import struct

import pytest
import torch

from lavimo.core.errors import BadInputError
from lavimo.training.tensor_tree import TREE_KEY, load_tree, tree_to_bytes


def _write(path, tensors: dict, skeleton) -> None:
    from safetensors.torch import save

    path.write_bytes(save(tensors, metadata={TREE_KEY: json.dumps(skeleton)}))


def test_round_trip_keeps_types_and_values(tmp_path):
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))])
    opt.zero_grad()
    sum(p.sum() for g in opt.param_groups for p in g["params"]).backward()
    opt.step()
    tree = {"optimizer": opt.state_dict(), "rng": [{"python": (3, tuple(range(5)), None), "torch": torch.get_rng_state()}],
            "best": float("nan"), "inf": -math.inf, "flag": True, "none": None, "name": "x", 7: "int key",
            "scalar": torch.tensor(2.5, dtype=torch.float64)}
    path = tmp_path / "s.safetensors"
    path.write_bytes(tree_to_bytes(tree))
    got = load_tree(path)
    assert set(got) == set(tree) and got[7] == "int key" and got["flag"] is True and got["none"] is None
    assert math.isnan(got["best"]) and got["inf"] == -math.inf and got["name"] == "x"
    assert got["rng"][0]["python"] == (3, (0, 1, 2, 3, 4), None)
    assert torch.equal(got["rng"][0]["torch"], tree["rng"][0]["torch"]) and got["rng"][0]["torch"].dtype == torch.uint8
    assert got["scalar"].dtype == torch.float64 and got["scalar"].shape == () and got["scalar"].item() == 2.5
    want = opt.state_dict()
    assert sorted(got["optimizer"]["state"]) == sorted(want["state"]) == [0, 1]  # int parameter ids stay ints
    for pid, st in want["state"].items():
        for k, v in st.items():
            assert torch.equal(got["optimizer"]["state"][pid][k], v), (pid, k)
    assert got["optimizer"]["param_groups"] == want["param_groups"]
    fresh = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))])
    fresh.load_state_dict(got["optimizer"])  # what a resume does with it


def test_values_of_other_types_are_a_programming_error():
    with pytest.raises(TypeError, match="set"):
        tree_to_bytes({"a": {1, 2}})
    with pytest.raises(TypeError, match="keys"):
        tree_to_bytes({(1, 2): 3})


@pytest.mark.parametrize("case", ["pickle", "no_tree", "bad_node", "unknown_tensor", "tensor_twice", "unused_tensor",
                                  "deep", "bad_pair", "truncated"])
def test_malformed_files_are_refused_naming_the_file(tmp_path, case):
    path = tmp_path / "s.safetensors"
    t = {"t0": torch.zeros(2)}
    if case == "pickle":
        torch.save({"a": torch.zeros(2)}, path)
    elif case == "no_tree":
        from safetensors.torch import save_file
        save_file(t, str(path))
    elif case == "bad_node":
        _write(path, t, {"l": [{"t": "t0"}, {"x": 1, "y": 2}]})
    elif case == "unknown_tensor":
        _write(path, t, {"l": [{"t": "t0"}, {"t": "../t9"}]})
    elif case == "tensor_twice":
        _write(path, t, {"l": [{"t": "t0"}, {"t": "t0"}]})
    elif case == "unused_tensor":
        _write(path, {**t, "t1": torch.ones(1)}, {"l": [{"t": "t0"}]})
    elif case == "deep":
        _write(path, t, {"l": [{"t": "t0"}]})  # then its tree nested 300 deep (the JSON reader stops at 64)
        raw = path.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        header["__metadata__"][TREE_KEY] = '{"l":' * 300 + '[]' + '}' * 300
        body = json.dumps(header).encode()
        path.write_bytes(struct.pack("<Q", len(body)) + body + raw[8 + n:])
    elif case == "bad_pair":
        _write(path, t, {"d": [["k", {"t": "t0"}, "extra"]]})
    elif case == "truncated":
        path.write_bytes(tree_to_bytes({"a": torch.zeros(100)})[:-40])
    with pytest.raises(BadInputError) as err:
        load_tree(path)
    assert err.value.path == str(path)

"""Which usage-gate the tests run: never an older build than the tree's newest, silently."""

import os

import pytest
from support import binary


def test_the_newest_build_is_tested_unless_usage_gate_bin_names_one(tmp_path):
    release, debug = tmp_path / "target/release/usage-gate", tmp_path / "target/debug/usage-gate"
    for path in (release, debug):
        path.parent.mkdir(parents=True)
        path.write_text("")
    os.utime(release, (1_000, 1_000))
    os.utime(debug, (2_000, 2_000))
    assert binary(tmp_path, {}) == str(debug), "the debug build is newer"
    os.utime(release, (3_000, 3_000))
    assert binary(tmp_path, {}) == str(release)
    assert binary(tmp_path, {"USAGE_GATE_BIN": str(debug)}) == str(debug)
    with pytest.raises(RuntimeError, match="does not exist"):
        binary(tmp_path, {"USAGE_GATE_BIN": str(tmp_path / "nothing")})

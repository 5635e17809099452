"""The on-disk cache of built artefacts (tiny models, tokenizers): an entry appears only when
complete, a build that misses its marker file fails loudly, and building does not move the
caller's RNG."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlarl.policies.tiny import cached_build
from vlarl.policies.tokenizer import build_once


def _write(files: dict[str, str]):
    def build(d):
        for name, text in files.items():
            (d / name).write_text(text)
    return build


def test_build_without_marker_raises_and_caches_nothing(tmp_path):
    final = tmp_path / "entry"
    # what transformers >= 5.24 does on a torch.distributed rank != 0: only the processor files
    with pytest.raises(RuntimeError, match=r"wrote no config\.json.*tokenizer\.json"):
        build_once(final, "config.json", _write({"tokenizer.json": "{}"}))
    assert not final.exists()
    # the temporary build dir is gone too (the build lock's file stays, unlocked)
    assert [p.name for p in tmp_path.iterdir()] == [".entry.vlarl-lock"]


def test_incomplete_entry_is_replaced_and_complete_one_reused(tmp_path):
    final = tmp_path / "entry"
    final.mkdir()
    (final / "tokenizer.json").write_text("stale")  # half an entry from an older vlarl
    assert build_once(final, "config.json", _write({"config.json": "new"})) == final
    assert sorted(p.name for p in final.iterdir()) == ["config.json"]
    assert (final / "config.json").read_text() == "new"
    # found: the builder is not called again
    build_once(final, "config.json", _write({"config.json": "other"}))
    assert (final / "config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".entry.vlarl-lock", "entry"]


def test_cached_build_keeps_the_callers_rng(tmp_path, monkeypatch):
    monkeypatch.setenv("VLARL_CACHE", str(tmp_path))

    def build(d):
        torch.manual_seed(123)  # as the tiny builders do
        (d / "config.json").write_text(str(torch.rand(1).item()))

    draws = []
    for _ in range(2):  # first call builds, second finds the entry
        torch.manual_seed(0)
        path = cached_build("rngtest", {"k": 1}, build)
        draws.append(torch.rand(3))
    torch.manual_seed(0)
    expected = torch.rand(3)
    assert torch.equal(draws[0], expected) and torch.equal(draws[1], expected)
    assert [p.name for p in (tmp_path / "tiny").iterdir()
            if not p.name.endswith(".vlarl-lock")] == [Path(path).name]

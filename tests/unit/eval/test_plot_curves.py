"""scripts/plot_curves.py: runs sharing a label are averaged as seeds of one setting."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[3]


def _script():
    spec = importlib.util.spec_from_file_location("plot_curves", ROOT / "scripts" / "plot_curves.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(path: Path, success: list[float], evals: dict[int, float]) -> Path:
    path.mkdir()
    rows = []
    for i, s in enumerate(success):
        row = {"update": i + 1, "train/env_steps": 100 * (i + 1), "rollout/success_rate": s}
        if i + 1 in evals:
            row.update({"eval/success_rate": evals[i + 1], "eval/success_ci_low": 0.0,
                        "eval/success_ci_high": 1.0, "eval/n": 32})
        rows.append(row)
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_seeds_sharing_a_label_are_averaged(tmp_path, monkeypatch):
    mod = _script()
    a = _run(tmp_path / "a", [0.0, 0.2, 0.4, 0.6], {4: 0.5})
    b = _run(tmp_path / "b", [0.2, 0.4, 0.6, 0.8], {4: 0.25})
    c = _run(tmp_path / "c", [1.0, 1.0, 1.0, 1.0], {})
    out = tmp_path / "curves.png"
    captured = {}
    real = mod.plt.subplots

    def subplots(*args, **kwargs):
        fig, ax = real(*args, **kwargs)
        captured["ax"] = ax
        return fig, ax

    monkeypatch.setattr(mod.plt, "subplots", subplots)
    monkeypatch.setattr("sys.argv", ["plot_curves.py", str(a), str(b), str(c), "--labels", "s", "s",
                                     "one", "--window", "2", "--out", str(out)])
    mod.main()
    assert out.stat().st_size > 0
    lines = {ln.get_label(): ln for ln in captured["ax"].get_lines()}
    mean = next(ln for k, ln in lines.items() if k.startswith("s: rollout, mean of 2 seeds"))
    # moving average of 2: a -> 10, 30, 50 %; b -> 30, 50, 70 % at steps 200..400; mean 20..60
    x, y = mean.get_xdata(), mean.get_ydata()
    assert x[0] == 200 and x[-1] == 400
    np.testing.assert_allclose(y[[0, -1]], [20.0, 60.0])
    ev = next(ln for k, ln in lines.items() if k.startswith("s: eval, mean of 2 seeds"))
    np.testing.assert_allclose(ev.get_ydata(), [37.5])
    single = next(ln for k, ln in lines.items() if k.startswith("one: rollout"))
    np.testing.assert_allclose(single.get_ydata(), [100.0, 100.0, 100.0])

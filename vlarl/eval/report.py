"""Markdown tables and success plots shared by eval, distillation and quickstart reports.

A *row* is a plain dict, so every producer (``vlarl.eval.evaluate``, ``vlarl.methods.distill``, the
quickstart) can build one without importing the others. Keys read here:

* ``label``   (str)  what was evaluated (checkpoint name, "teacher", "student", ...);
* ``split``   (str)  env split (optional, default ``"-"``);
* ``n``       (int)  episodes;
* ``success_rate``, ``ci_low``, ``ci_high`` (floats in [0, 1]): rate and its 95 % CI;
* optional numeric extras named in ``extra_columns`` (e.g. ``mean_return``).

matplotlib is imported lazily (and with the non-interactive Agg backend) because it is
slow to import and only the plot needs it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlarl.eval.stats import wilson_interval

DEFAULT_EXTRAS: dict[str, str] = {
    "mean_return": "return",
    "mean_length": "length",
    "actions_per_s": "actions/s",
}
"""Extra columns of the eval table: row key -> column header."""


def row_from_successes(label: str, successes: Sequence[bool | int], split: str = "-",
                       **extras: float) -> dict:
    """Build a row from a 0/1 success vector (Wilson 95 % CI)."""
    n = len(successes)
    if n == 0:
        raise ValueError(f"n=0 episodes for {label!r}: a success rate needs at least one")
    k = int(sum(bool(s) for s in successes))
    lo, hi = wilson_interval(k, n)
    return {"label": label, "split": split, "n": n, "success_rate": k / n,
            "ci_low": lo, "ci_high": hi, **extras}


def _check_row(i: int, row: dict) -> None:
    missing = [k for k in ("label", "n", "success_rate", "ci_low", "ci_high") if k not in row]
    if missing:
        raise KeyError(f"row {i} ({row.get('label', '?')!r}) lacks keys {missing}; "
                       f"has {sorted(row)}")


def format_success(rate: float, lo: float, hi: float) -> str:
    """``"62.5 [30.6, 86.3]"``: percent with its CI, one decimal."""
    return f"{100 * rate:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def results_table(rows: Sequence[dict], extra_columns: dict[str, str] | None = None) -> str:
    """A markdown table: label, split, n, success % [95 % CI], then the extra columns.

    ``extra_columns`` maps row keys to headers (default :data:`DEFAULT_EXTRAS`); a column
    is shown only if at least one row has it, and missing cells print ``-``.
    """
    extras = DEFAULT_EXTRAS if extra_columns is None else extra_columns
    for i, row in enumerate(rows):
        _check_row(i, row)
    shown = {k: h for k, h in extras.items() if any(k in r for r in rows)}
    header = ["checkpoint", "split", "n", "success % [95% CI]", *shown.values()]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        cells = [str(r["label"]), str(r.get("split", "-")), str(r["n"]),
                 format_success(r["success_rate"], r["ci_low"], r["ci_high"]),
                 *(_fmt(r.get(k)) for k in shown)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_success(rows: Sequence[dict], path: str | Path, title: str = "Success rate") -> Path:
    """Grouped bar plot: one group per split, one bar per label, 95 % CI error bars.

    Bars are labelled with the percentage so the figure reads without the table.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    if not rows:
        raise ValueError("plot_success needs at least one row, got 0")
    for i, row in enumerate(rows):
        _check_row(i, row)
    splits = list(dict.fromkeys(str(r.get("split", "-")) for r in rows))
    labels = list(dict.fromkeys(str(r["label"]) for r in rows))
    width = 0.8 / len(labels)
    x = np.arange(len(splits))
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 + 1.4 * len(splits) * max(1, len(labels)) * 0.6),
                                    3.6))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, label in enumerate(labels):
        by_split = {str(r.get("split", "-")): r for r in rows if str(r["label"]) == label}
        xs, ys, err_lo, err_hi = [], [], [], []
        for si, split in enumerate(splits):
            if split in by_split:
                r = by_split[split]
                xs.append(x[si] - 0.4 + width * (j + 0.5))
                ys.append(100 * r["success_rate"])
                err_lo.append(100 * (r["success_rate"] - r["ci_low"]))
                err_hi.append(100 * (r["ci_high"] - r["success_rate"]))
        color = colors[j % len(colors)]
        bars = ax.bar(xs, ys, width * 0.92, label=label, color=color, alpha=0.75)
        # Whiskers and a point in the series colour: a 0 % bar stays visible and attributable.
        ax.errorbar(xs, ys, yerr=[err_lo, err_hi], fmt="o", ms=3, capsize=4, color=color,
                    mec="black", mew=0.5, ecolor="black", elinewidth=1)
        for bar, y, r in zip(bars, ys, [by_split[s] for s in splits if s in by_split]):
            # Above the CI whisker, so the text never collides with the error bar.
            ax.annotate(f"{y:.0f}%\nn={r['n']}",
                        (bar.get_x() + bar.get_width() / 2, 100 * r["ci_high"] + 1.5),
                        ha="center", va="bottom", fontsize=7, color="black")
    ax.set_xticks(x, splits)
    ax.set_xlabel("split")
    ax.set_ylabel("success % (95% Wilson CI)")
    ax.set_ylim(0, 118)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- videos

def annotate_frame(frame, top: str, bottom: str = "", size: int = 256,
                   bottom_color: tuple[int, int, int] = (255, 255, 255)):
    """Upscale an ``[H, W, 3]`` uint8 frame to ``size`` px wide and draw captions.

    The instruction goes in a black band above the image and a status line (step,
    success) in a band below, so the scene itself is never covered. Nearest-neighbour
    upscaling keeps small camera images (32-64 px) sharp rather than blurred.
    """
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    arr = np.asarray(frame, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"frame must be [H, W, 3] uint8, got shape {arr.shape}")
    h, w = arr.shape[:2]
    img = Image.fromarray(arr).resize((size, max(1, round(size * h / w))), Image.NEAREST)
    font = ImageFont.load_default(size=max(9, size // 22))
    line_h = font.getbbox("Ag")[3] + 3
    lines = _wrap(top, font, size - 8)
    band_top = 4 + line_h * len(lines)
    band_bottom = 4 + line_h if bottom else 0
    # Height divisible by 16: libx264 / imageio's macro-block size, avoiding resizes.
    total = band_top + img.height + band_bottom
    total += (-total) % 16
    canvas = Image.new("RGB", (size, total), (0, 0, 0))
    canvas.paste(img, (0, band_top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * line_h), line, fill=(255, 255, 255), font=font)
    if bottom:
        draw.text((4, band_top + img.height + 2), bottom, fill=bottom_color, font=font)
    return np.asarray(canvas)


def _wrap(text: str, font, width: int) -> list[str]:
    lines, cur = [], ""
    for word in text.split():
        cand = f"{cur} {word}".strip()
        if cur and font.getlength(cand) > width:
            lines.append(cur)
            cur = word
        else:
            cur = cand
    return (lines + [cur]) if cur else (lines or [""])


def write_video(frames, path: str | Path, fps: int = 4) -> Path:
    """Write ``[H, W, 3]`` uint8 frames (all the same size) as an H.264 mp4 (imageio-ffmpeg)."""
    import imageio.v2 as imageio

    frames = list(frames)
    if not frames:
        raise ValueError(f"no frames to write to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=16)
    return path


# ----------------------------------------------------------------------------- provenance

def vlarl_version() -> str:
    from vlarl import __version__

    return __version__




def checkpoint_sha256(path: str | Path, exclude: str | Path | None = None) -> dict:
    """``{"path", "sha256", "files": {relpath: sha256}}`` of a checkpoint file or directory.

    The combined hash covers the sorted ``relpath:hash`` lines, so renaming a file changes
    it too. ``exclude`` (e.g. a report directory inside the checkpoint) is skipped, so
    writing an evaluation into ``<checkpoint>/eval`` does not change the checkpoint's hash.
    """
    import hashlib

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint path {str(path)!r} does not exist")
    skip = Path(exclude).resolve() if exclude is not None else None
    files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file())
    out: dict[str, str] = {}
    for f in files:
        if skip is not None and f.resolve().is_relative_to(skip):
            continue
        h = hashlib.sha256()
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out[f.name if p.is_file() else f.relative_to(p).as_posix()] = h.hexdigest()
    total = hashlib.sha256("\n".join(f"{k}:{v}" for k, v in out.items()).encode()).hexdigest()
    return {"path": str(path), "sha256": total, "files": out}

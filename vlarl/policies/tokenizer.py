"""An offline text tokenizer for tiny VLAs, trained on the task-instruction vocabulary.

No tokenizer can be downloaded on the machines this project targets, yet the policies
must go through the same ``AutoTokenizer`` / ``AutoProcessor`` loading code as real
checkpoints. So this module trains a small BPE with the ``tokenizers`` library on a deterministic
corpus of robot instructions and digits, and save it in Hugging Face format.

Public API (stable; ``flow_vla`` reuses it):

* :data:`SPECIAL_TOKENS` - ``<pad> <eos> <bos> <unk> <image>`` with ids 0..4 (Gemma order,
  so ``pad_token_id == 0`` like PaliGemma).
* :func:`build_tokenizer` - train (or fetch from the cache) and return a
  ``transformers.PreTrainedTokenizerFast``; optionally also save it to ``save_dir``.

The tokenizer is cached under ``<cache_root>/tokenizers/<hash>`` where the hash covers the
corpus and the training settings, so a change to either builds a new one.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from vlarl.runtime.system import cache_root

if TYPE_CHECKING:  # transformers is heavy: import it only inside functions.
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<eos>", "<bos>", "<unk>", "<image>")
"""Special tokens, in id order 0..4."""

VOCAB_SIZE = 1024
"""Target BPE vocabulary size (the corpus is small, so the real size may be lower)."""

_VERBS = ("pick", "push", "pull", "stack", "place", "lift", "move", "put", "grasp", "open",
          "close", "insert", "turn", "slide", "drop", "reach", "roll", "poke", "plug", "pour")
_COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black", "pink",
           "brown", "gray", "cyan")
_OBJECTS = ("cube", "sphere", "ball", "block", "peg", "box", "cylinder", "can", "bowl", "cup",
            "plate", "drawer", "door", "faucet", "charger", "object", "gripper")
_PLACES = ("goal", "target", "bin", "table", "tray", "basket", "region", "hole", "position",
           "left", "right", "front", "back", "top", "side", "center", "shelf")
_FILLERS = ("the", "a", "up", "onto", "on", "into", "in", "to", "of", "and", "from", "with",
            "it", "then", "at", "near", "far", "away", "over", "under", "what", "action",
            "should", "robot", "take", "state", "task", "please", "carefully", "quickly")


def _corpus() -> list[str]:
    """Deterministic training text: instruction templates x colours x objects x places + digits."""
    lines: list[str] = []
    for verb, color, obj in itertools.product(_VERBS, _COLORS, _OBJECTS):
        place = _PLACES[(len(verb) + len(color) + len(obj)) % len(_PLACES)]
        lines.append(f"{verb} the {color} {obj} to the {place}")
        lines.append(f"What action should the robot take to {verb} the {color} {obj}?")
    for place in _PLACES:
        lines.append(f"place it on the {place} then move away from the {place}")
    lines.append(" ".join(_FILLERS))
    # Numbers as text (binned proprio state, step counts): each digit and every 0..255.
    lines.extend(" ".join(str(i) for i in range(start, start + 16)) for start in range(0, 256, 16))
    lines.append("0 1 2 3 4 5 6 7 8 9 . , ? ! : ; - + ( ) / =")
    return lines


def _fingerprint() -> str:
    spec = {"corpus": _corpus(), "special": SPECIAL_TOKENS, "vocab": VOCAB_SIZE, "v": 2}
    return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]


def _train(out_dir: Path) -> None:
    """Train the BPE and write it to ``out_dir`` in Hugging Face format."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Metaspace (SentencePiece-style "▁word") keeps decode(encode(s)) == s, like Gemma;
    # digits are split one by one so any number is representable.
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(), pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Metaspace()
    alphabet = list("abcdefghijklmnopqrstuvwxyz0123456789\n.,?!:;-+()/=")
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  show_progress=False, initial_alphabet=alphabet)
    tok.train_from_iterator(_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>",
        unk_token="<unk>", image_token="<image>", padding_side="left",
        model_max_length=2048)
    hf.save_pretrained(str(out_dir))


def build_once(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """Run ``build(tmp_dir)`` unless ``final/marker`` exists, then rename ``tmp_dir`` to
    ``final``: a cache entry appears only when complete, so parallel processes (tests) never
    load half of one; if two build it at once, the loser's identical copy is dropped.

    A build that does not write ``marker`` raises instead of caching half an entry (e.g.
    transformers >= 5.24 ``save_pretrained`` writes nothing on a torch.distributed rank other
    than 0: build caches on the local main process first). An entry without its marker,
    left by an older vlarl, is replaced.
    """
    if (final / marker).is_file():
        return final
    from vlarl.runtime.runlock import building

    with building(final):  # a second builder waits, then finds the entry complete
        if (final / marker).is_file():
            return final
        return _build(final, marker, build)


def _build(final: Path, marker: str, build: Callable[[Path], None]) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=".tmp-"))
    try:
        build(tmp)
        if not (tmp / marker).is_file():
            raise RuntimeError(
                f"building the cache entry {final} wrote no {marker} (wrote: "
                f"{sorted(f.name for f in tmp.iterdir())}); under torch.distributed, build it on "
                "the local main process first (accelerator.local_main_process_first())")
        if final.exists() and not (final / marker).is_file():
            stale = Path(tempfile.mkdtemp(dir=final.parent, prefix=".stale-"))
            with contextlib.suppress(OSError):  # another process may have moved it already
                final.rename(stale / final.name)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:  # another process won the race: its copy is identical
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tokenizer(save_dir: str | Path | None = None) -> PreTrainedTokenizerFast:
    """Return the offline instruction tokenizer (trained once, then loaded from the cache).

    Deterministic: the same corpus and settings give byte-identical ``tokenizer.json``.
    Padding is on the left (prompts are continued by generated action tokens).
    ``save_dir``: also write the tokenizer there (``save_pretrained`` format).
    """
    from transformers import AutoTokenizer

    cached = build_once(cache_root() / "tokenizers" / _fingerprint(), "tokenizer.json", _train)
    tok = AutoTokenizer.from_pretrained(str(cached))
    if save_dir is not None:
        tok.save_pretrained(str(save_dir))
    return tok

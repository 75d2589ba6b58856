"""Offline CLIP-format tokenizers and processors (no downloads).

* `clip_tokenizer_from_open_clip_vocab` rebuilds the full OpenAI CLIP BPE tokenizer (49408 tokens) as a transformers
  `CLIPTokenizer` from the ``bpe_simple_vocab_16e6.txt.gz`` file that ships inside ``open_clip``; its ids equal
  open_clip's tokenizer ids (open_clip pads with 0, this tokenizer pads with ``<|endoftext|>`` and returns an
  ``attention_mask``).
* `small_clip_tokenizer` trains a tiny tokenizer of the same format (byte-level BPE with ``</w>`` word ends,
  lowercase, ``<|startoftext|>``/``<|endoftext|>``) on a caption corpus, for demos with small text towers.
* `build_processor` pairs a tokenizer with a `CLIPImageProcessor` into a `CLIPProcessor`, which
  ``save_pretrained`` writes next to a model so ``AutoProcessor``/``AutoTokenizer``/``AutoImageProcessor`` (and the
  zero-shot pipeline) load it from the folder.

This module imports only the standard library, ``tokenizers`` and ``transformers`` so it can travel as hub code.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import CLIPImageProcessor, CLIPProcessor, CLIPTokenizer

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
END_OF_WORD = "</w>"
OPEN_CLIP_BPE_FILE = "bpe_simple_vocab_16e6.txt.gz"
# open_clip / OpenAI CLIP keep the first 49152 - 256 - 2 merges of the file (line 0 is a version header).
_NUM_CLIP_MERGES = 49152 - 256 - 2
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP byte -> printable unicode character table, in CLIP's vocabulary order.

    Printable bytes map to themselves and come first; the other bytes map to ``chr(256 + n)`` in byte order.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + n) for n, b in enumerate(others)}


def _byte_alphabet() -> list[str]:
    return list(bytes_to_unicode().values())


def _clip_vocab(merges: Sequence[tuple[str, str]]) -> dict[str, int]:
    """CLIP vocabulary layout: 256 byte symbols, the same with ``</w>``, one token per merge, then BOS and EOS."""
    alphabet = _byte_alphabet()
    tokens = alphabet + [a + END_OF_WORD for a in alphabet] + ["".join(m) for m in merges] + [BOS_TOKEN, EOS_TOKEN]
    vocab: dict[str, int] = {}
    for token in tokens:
        if token in vocab:
            raise ValueError(f"duplicate token {token!r} while building the CLIP vocabulary")
        vocab[token] = len(vocab)
    return vocab


def _make_clip_tokenizer(merges: list[tuple[str, str]], model_max_length: int, pad_token: str) -> CLIPTokenizer:
    return CLIPTokenizer(
        vocab=_clip_vocab(merges),
        merges=merges,
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        model_max_length=model_max_length,
    )


def open_clip_bpe_path() -> Path:
    """Path of the BPE merges file bundled with ``open_clip`` (found without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or spec.origin is None:
        raise ImportError(
            "open_clip is not installed, so its bundled CLIP vocabulary "
            f"({OPEN_CLIP_BPE_FILE}) is unavailable. Install it with `pip install open_clip_torch` "
            "(or `pip install cgspn[convert]`), or pass `bpe_path=` to a copy of the file."
        )
    path = Path(spec.origin).parent / OPEN_CLIP_BPE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"open_clip is installed but {path} is missing")
    return path


def clip_tokenizer_from_open_clip_vocab(
    bpe_path: str | os.PathLike | None = None,
    model_max_length: int = 77,
    pad_token: str = EOS_TOKEN,
) -> CLIPTokenizer:
    """Build the full OpenAI CLIP tokenizer (vocab size 49408) offline.

    Args:
        bpe_path: a ``bpe_simple_vocab_16e6.txt.gz`` file; defaults to the copy inside the installed ``open_clip``.
        model_max_length: context length (77 for CLIP).
        pad_token: padding token; ``<|endoftext|>`` as in transformers' CLIP checkpoints.

    Returns:
        A `CLIPTokenizer` whose ids match ``open_clip.tokenize`` on the non-padding positions.

    Raises:
        ImportError: ``bpe_path`` is not given and open_clip is not installed.
        FileNotFoundError: the file does not exist.
    """
    path = Path(bpe_path) if bpe_path is not None else open_clip_bpe_path()
    if not path.is_file():
        raise FileNotFoundError(f"BPE merges file not found: {path}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_CLIP_MERGES + 1]]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{path} is not a CLIP BPE merges file (bad line {bad[0]!r})")
    return _make_clip_tokenizer(merges, model_max_length, pad_token)


def small_clip_tokenizer(
    texts: Iterable[str],
    vocab_size: int = 1024,
    min_frequency: int = 1,
    model_max_length: int = 32,
) -> CLIPTokenizer:
    """Train a small CLIP-format tokenizer on a caption corpus.

    The vocabulary has CLIP's layout (all 256 byte symbols with and without ``</w>``, then learned merges, then
    ``<|startoftext|>`` and ``<|endoftext|>``), so any text can be encoded without unknown tokens; words frequent in
    the corpus become single tokens. Padding uses ``<|endoftext|>`` as in CLIP.

    Args:
        texts: the corpus (e.g. the demo captions and class prompts).
        vocab_size: maximum total vocabulary size (at least 514 = bytes + specials); fewer when the corpus needs
            fewer merges.
        min_frequency: minimum pair count for a merge.
        model_max_length: context length saved with the tokenizer.

    Returns:
        A `CLIPTokenizer`; use ``len(tokenizer)``, ``tokenizer.bos_token_id``, ``tokenizer.eos_token_id`` and
        ``tokenizer.pad_token_id`` to configure a text tower.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("small_clip_tokenizer needs a non-empty corpus of non-blank texts")
    base_size = 2 * 256 + 2
    if vocab_size < base_size:
        raise ValueError(f"vocab_size must be >= {base_size} (byte symbols + specials), got {vocab_size}")

    # Reuse CLIP's normalizer and pre-tokenizer so training sees exactly the words the tokenizer will see.
    template = CLIPTokenizer().backend_tokenizer
    trainer_tokenizer = Tokenizer(BPE(continuing_subword_prefix="", end_of_word_suffix=END_OF_WORD))
    trainer_tokenizer.normalizer = template.normalizer
    trainer_tokenizer.pre_tokenizer = template.pre_tokenizer
    trainer = BpeTrainer(
        vocab_size=vocab_size + 512,  # the trainer counts its own alphabet; we cap the merges below
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        continuing_subword_prefix="",
        end_of_word_suffix=END_OF_WORD,
    )
    trainer_tokenizer.train_from_iterator(texts, trainer=trainer)
    learned = json.loads(trainer_tokenizer.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in learned]
    merges = merges[: vocab_size - base_size]
    return _make_clip_tokenizer(merges, model_max_length, EOS_TOKEN)


def clip_image_processor(
    image_size: int,
    mean: Sequence[float] = OPENAI_CLIP_MEAN,
    std: Sequence[float] = OPENAI_CLIP_STD,
    resize_mode: str = "shortest_edge",
    resample: int = 3,
    rescale_factor: float = 1 / 255,
) -> CLIPImageProcessor:
    """A `CLIPImageProcessor` for a model trained at ``image_size`` (also: a teacher's eval preprocessing).

    Args:
        image_size: square input resolution of the model.
        mean / std: per-channel normalization (CLIP's by default; SigLIP uses 0.5/0.5).
        resize_mode: ``"shortest_edge"`` (resize the short side then center-crop, CLIP/open_clip style) or
            ``"squash"`` (resize to ``image_size x image_size`` ignoring aspect ratio, SigLIP style).
        resample: PIL resampling filter (3 = bicubic).
        rescale_factor: pixel scale before normalization.

    Loaded with ``backend="pil"`` it matches torchvision-on-PIL transforms bit for bit; the default torchvision
    backend differs by about one 8-bit level.
    """
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if len(mean) != 3 or len(std) != 3:
        raise ValueError(f"mean and std need 3 channels, got {mean} and {std}")
    if resize_mode == "shortest_edge":
        geometry = {"size": {"shortest_edge": image_size}, "do_center_crop": True}
    elif resize_mode == "squash":
        geometry = {"size": {"height": image_size, "width": image_size}, "do_center_crop": False}
    else:
        raise ValueError(f"resize_mode must be 'shortest_edge' or 'squash', got {resize_mode!r}")
    return CLIPImageProcessor(
        **geometry,
        crop_size={"height": image_size, "width": image_size},
        resample=resample,
        do_rescale=True,
        rescale_factor=rescale_factor,
        do_normalize=True,
        image_mean=[float(m) for m in mean],
        image_std=[float(s) for s in std],
        do_convert_rgb=True,
    )


def text_padding(config) -> dict:
    """Tokenizer padding for a dual encoder's text tower (``config.text_config``): SigLIP text towers pool the last
    token and were trained on text padded to their full context (``max_position_embeddings``); others pad to the
    longest text."""
    text_config = getattr(config, "text_config", None)
    if "siglip" in str(getattr(text_config, "model_type", "")):
        return {"padding": "max_length", "max_length": text_config.max_position_embeddings}
    return {"padding": True}


def build_processor(tokenizer, image_size: int = 224, **image_kwargs) -> CLIPProcessor:
    """A `CLIPProcessor`: `clip_image_processor(image_size, **image_kwargs)` + ``tokenizer``.

    ``processor.save_pretrained(folder)`` makes it loadable with ``AutoProcessor``, ``AutoImageProcessor`` and
    ``AutoTokenizer`` (and the zero-shot pipeline).
    """
    return CLIPProcessor(image_processor=clip_image_processor(image_size, **image_kwargs), tokenizer=tokenizer)


__all__ = [
    "BOS_TOKEN",
    "EOS_TOKEN",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "build_processor",
    "bytes_to_unicode",
    "clip_image_processor",
    "clip_tokenizer_from_open_clip_vocab",
    "open_clip_bpe_path",
    "small_clip_tokenizer",
    "text_padding",
]

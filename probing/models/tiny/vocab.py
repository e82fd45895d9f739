"""Tokenizers of the tiny checkpoints, trained on the fly on a caption-like corpus.

A byte-level BPE with Qwen2's pre-tokeniser, saved as Qwen2Tokenizer (the
Qwen2- and Llama-based families), and a SentencePiece-style BPE saved as
GemmaTokenizer (PaliGemma, Gemma 3), each with the family's special tokens.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator

import transformers
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from probing.models.tiny.common import BUILD_SEED

# Qwen2's pre-tokenisation regex (splits letters, digits, punctuation and
# whitespace runs); the trained BPE must use the same split as the real
# Qwen2Tokenizer, which re-creates this pipeline when it loads.
_QWEN2_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Special tokens of the Qwen2 family, in the order the real vocabulary lists
# them after its BPE entries (ids are therefore contiguous and after the BPE).
_QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Words of the caption-like training corpus: COCO-ish categories, attributes
# and the phrasing of the probing prompts, so prompts tokenise into few tokens.
_OBJECT_WORDS = (
    "person man woman child dog cat horse bird cow sheep elephant bear zebra giraffe car "
    "bus truck bicycle motorcycle airplane train boat bottle cup bowl chair couch bed table "
    "tv laptop phone book clock vase pizza cake banana apple sandwich umbrella kite ball "
    "circle square triangle star"
)
_ATTRIBUTE_WORDS = (
    "red green blue yellow black white orange purple brown gray small large big tiny old young"
)
_PLACE_WORDS = "street field kitchen room beach park table grass water sky road snow city"
_OBJECTS = tuple(_OBJECT_WORDS.split())
_ATTRIBUTES = tuple(_ATTRIBUTE_WORDS.split())
_PLACES = tuple(_PLACE_WORDS.split())
_TEMPLATES = (
    "A {a} {o} on the {p}.",
    "Two {o}s next to a {a} {o2}.",
    "There is a {a} {o} near the {p}.",
    "A photo of a {o} and a {o2} in the {p}.",
    'This image describes "A {a} {o}." Is it right? Answer: Yes',
    "This image contains: a {a} {o} and a {o2}.\nIs this right? No",
    "Is there a {o} in the image? Answer: {yn}",
    "The image shows {n} {o}s, a {o2} and a {a} {p}.",
    "Describe the image. A {a} {o} sitting by the {p}.",
    # Chat-template text, so the system turn tokenises into few tokens.
    "system\nYou are a helpful assistant.\nuser\n{o}\nassistant\n",
)


def _caption_corpus(num_lines: int, rng: random.Random) -> Iterator[str]:
    """Yields caption-like lines for tokenizer training."""
    for _ in range(num_lines):
        template = rng.choice(_TEMPLATES)
        yield template.format(
            a=rng.choice(_ATTRIBUTES),
            o=rng.choice(_OBJECTS),
            o2=rng.choice(_OBJECTS),
            p=rng.choice(_PLACES),
            n=rng.randint(1, 9),
            yn=rng.choice(("Yes", "No")),
        )


def _train_byte_level_bpe(
    vocab_size: int, corpus: Iterable[str] | None = None
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Trains a byte-level BPE with Qwen2's pre-tokeniser; returns its vocab and merges.

    ``corpus`` defaults to the caption-like lines of ``_caption_corpus``.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # Every byte must be in the vocabulary so any text can be encoded.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    if corpus is None:
        corpus = _caption_corpus(3000, random.Random(BUILD_SEED))
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    vocab = tokenizer.get_vocab(with_added_tokens=False)
    # The trained BPE exposes its merges only through its serialised form.
    model_json = json.loads(tokenizer.to_str())["model"]
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]
    ]
    return vocab, merges


def qwen2_tokenizer(
    padding_side: str,
    extra_special_tokens: tuple[str, ...] = (),
    corpus: Iterable[str] | None = None,
    vocab_size: int = 1024,
) -> transformers.PreTrainedTokenizerBase:
    """A trained Qwen2Tokenizer with Qwen2's special tokens (plus ``extra_special_tokens``).

    The BPE is trained on ``corpus`` (default: generic caption-like lines).
    """
    from transformers import AddedToken, Qwen2Tokenizer

    vocab, merges = _train_byte_level_bpe(vocab_size, corpus)
    # <|endoftext|> first, as in Qwen2's vocabulary; it is also the pad token.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, padding_side=padding_side
    )
    specials = [
        AddedToken(tok, special=True, normalized=False)
        for tok in (*_QWEN2_SPECIAL_TOKENS, *extra_special_tokens)
    ]
    tokenizer.add_tokens(specials, special_tokens=True)
    # Instruct checkpoints end an answer with <|im_end|>, so that is their eos.
    tokenizer.eos_token = "<|im_end|>"
    return tokenizer


# Gemma's special tokens in the order of its vocabulary's first ids.
_GEMMA_BASE_TOKENS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")


def gemma_tokenizer(
    padding_side: str,
    extra_special_tokens: tuple[str, ...] = (),
    named_special_tokens: dict[str, str] | None = None,
) -> transformers.PreTrainedTokenizerBase:
    """A trained GemmaTokenizer (SentencePiece-style BPE) plus extra special tokens.

    ``named_special_tokens`` ({attribute: token}) become tokenizer attributes
    as in the real checkpoints (Gemma 3's ``boi_token``, ``image_token``, ...).

    The real Gemma tokenizer is a SentencePiece BPE: spaces become "▁", words
    keep their leading "▁", and unknown characters fall back to byte tokens
    ``<0x00>`` .. ``<0xFF>``. GemmaTokenizer rebuilds exactly that pipeline
    from a vocabulary and merges, so a BPE trained here with the same
    normalisation and word split loads as the family's real tokenizer class.
    """
    from transformers import AddedToken, GemmaTokenizer

    trainer_tokenizer = Tokenizer(models.BPE())
    word_start = "\u2581"  # SentencePiece's "▁", which replaces every space
    trainer_tokenizer.normalizer = normalizers.Replace(" ", word_start)
    # Merges never cross a word start or a newline, as in SentencePiece.
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(word_start, behavior="merged_with_next"),
            pre_tokenizers.Split("\n", behavior="isolated"),
        ]
    )
    trainer = trainers.BpeTrainer(vocab_size=768, show_progress=False)
    rng = random.Random(BUILD_SEED)
    # Gemma's turn text ("user", "model") as in its chat template, so that
    # the role names are single tokens as in the real vocabulary.
    lines = (f"user\n{line}\nmodel\n" for line in _caption_corpus(3000, rng))
    trainer_tokenizer.train_from_iterator(lines, trainer=trainer)
    pieces = trainer_tokenizer.get_vocab(with_added_tokens=False)
    model_json = json.loads(trainer_tokenizer.to_str())["model"]
    merges = [
        tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model_json["merges"]
    ]
    # Gemma's layout: base specials, the 256 byte-fallback tokens, then the pieces.
    vocab = {token: index for index, token in enumerate(_GEMMA_BASE_TOKENS)}
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    for piece, _ in sorted(pieces.items(), key=lambda item: item[1]):
        vocab.setdefault(piece, len(vocab))
    named = dict(named_special_tokens or {})
    tokenizer = GemmaTokenizer(
        vocab=vocab,
        merges=merges,
        padding_side=padding_side,
        **({"extra_special_tokens": named} if named else {}),
    )
    specials = (
        *extra_special_tokens,
        *(t for t in named.values() if t not in extra_special_tokens),
    )
    if specials:
        tokenizer.add_tokens(
            [AddedToken(tok, special=True, normalized=False) for tok in specials],
            special_tokens=True,
        )
    return tokenizer


def padded_vocab_size(tokenizer: transformers.PreTrainedTokenizerBase) -> int:
    """Embedding rows for ``tokenizer``, rounded up to 64 like the real checkpoints."""
    return (len(tokenizer) + 63) // 64 * 64

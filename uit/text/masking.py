"""The released code's caption token masking (BERT-style), as an explicit training option.

The released training code (IRRA's dataset, which UIT's builds on) masks every training caption
for a masked-language-model head, but it masks the caption tensor itself in place, so every loss
trains on the masked caption. UIT has no such head; what remains is a text augmentation, and the
published numbers include its effect (docs/differences.md). ``augment.mask_tokens`` reproduces it:

- each token between SOT and EOT is chosen with probability ``attribute_p`` when it belongs to a
  noun or adjective (Penn tags NN*, JJ*) and with ``other_p`` otherwise (punctuation included);
- a chosen token becomes the mask token (80%), a random token (10%) or stays as it is (10%);
- a caption where no token was chosen gets the mask token at its first position.

The mask token: the released tokenizer drops the last BPE merge ("jekyll", id 49405) and puts
``<|mask|>`` at that id, so with CLIP's pretrained weights its mask reads the embedding row of
"jekyll". open_clip's tokenizer keeps "jekyll" there; uit masks with the same id 49405, hence the
same row. It is below SOT (49406) and EOT (49407), and random tokens are drawn below it, so the
EOT stays the largest id of a caption: where the text encoder pools (``argmax``) is unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from uit.core.config import AugmentConfig
from uit.core.errors import ConfigError

MASK_TOKEN_ID = 49405  # the released <|mask|>: the id of CLIP's last BPE merge ("jekyll")
CLIP_VOCABULARY = {"size": 49408, "sot": 49406, "eot": 49407}
# The released list of attribute tags: Penn Treebank's nouns and adjectives.
ATTRIBUTE_TAGS = frozenset({"NN", "NNS", "NNP", "NNPS", "JJ", "JJR", "JJS"})
MASK_SHARE, RANDOM_SHARE = 0.8, 0.1  # of the chosen tokens; the rest stay unchanged


def mask_caption(
    tokens: torch.Tensor,
    is_attribute: torch.Tensor,
    attribute_p: float,
    other_p: float,
    rng: random.Random,
    *,
    mask_id: int = MASK_TOKEN_ID,
) -> torch.Tensor:
    """A masked copy of one tokenized caption (L,): SOT first, then EOT and zero padding.

    ``is_attribute`` (L,) bool marks the tokens of nouns and adjectives. Tokens outside
    ``0 < id < mask_id`` (SOT, EOT, padding) are never chosen, as released. ``rng`` gives one
    ``random()`` per candidate token and one ``randrange`` per random replacement, so a seeded
    generator gives the same result.
    """
    for name, p in (("mask_attribute_p", attribute_p), ("mask_other_p", other_p)):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"augment.{name} must be in [0, 1], got {p}")
    ids: list[int] = tokens.tolist()
    flags: list[bool] = is_attribute.tolist()
    result = list(ids)
    eot = int(tokens.argmax())
    chosen = False
    for i in range(1, eot):
        if not 0 < ids[i] < mask_id:
            continue
        p = attribute_p if flags[i] else other_p
        draw = rng.random()
        if draw >= p:
            continue
        chosen = True
        share = draw / p  # uniform on [0, 1) again
        if share < MASK_SHARE:
            result[i] = mask_id
        elif share < MASK_SHARE + RANDOM_SHARE:
            result[i] = rng.randrange(1, mask_id)
    if not chosen and eot > 1:  # at least one token per caption (an empty caption has none)
        result[1] = mask_id
    return torch.tensor(result, dtype=tokens.dtype)


def piece_bytes(tokenizer: object) -> list[bytes]:
    """The bytes each id of a CLIP BPE tokenizer (open_clip's ``SimpleTokenizer``) stands for,
    without the end-of-word mark."""
    decoder = getattr(tokenizer, "decoder", None)
    byte_decoder = getattr(tokenizer, "byte_decoder", None)
    if not isinstance(decoder, dict) or not isinstance(byte_decoder, dict):
        raise ConfigError(
            f"augment.mask_tokens needs a CLIP BPE tokenizer; {type(tokenizer).__name__} is not"
        )
    table = [b""] * (max(decoder) + 1)
    for token_id, piece in decoder.items():
        text = piece.removesuffix("</w>")
        if all(char in byte_decoder for char in text):
            table[token_id] = bytes(byte_decoder[char] for char in text)
    return table


def attribute_flags(
    tokens: torch.Tensor, pieces: Sequence[bytes], words: Sequence[str], tags: Sequence[str]
) -> torch.Tensor:
    """(L,) bool: whether each token of a caption belongs to a noun or adjective of ``words``.

    Every BPE token of a word takes the word's tag; a token spanning two words (the tokenizer
    splits "can't" into "can" + "'t", the parser into "ca" + "n't") takes the tag of the word it
    starts in. Tokens and words are aligned by their bytes (lowercased, without whitespace); from
    the first token that does not match on (text the tokenizer cleaned differently), tokens count
    as other words.
    """
    spelled = ["".join(word.lower().split()).encode() for word in words]
    joined = b"".join(spelled)
    owner = [k for k, part in enumerate(spelled) for _ in part]
    ids: list[int] = tokens.tolist()
    flags = [False] * len(ids)
    position = 0
    for i in range(1, int(tokens.argmax())):
        piece = pieces[ids[i]] if ids[i] < len(pieces) else b""
        if not piece or joined[position : position + len(piece)] != piece:
            break
        flags[i] = tags[owner[position]] in ATTRIBUTE_TAGS
        position += len(piece)
    return torch.tensor(flags, dtype=torch.bool)


@dataclass(frozen=True)
class TokenMasker:
    """``mask_caption`` with the rates bound, for captions given with their parsed words."""

    pieces: Sequence[bytes] = field(repr=False)
    attribute_p: float
    other_p: float

    def __call__(
        self,
        tokens: torch.Tensor,
        words: Sequence[str],
        tags: Sequence[str],
        rng: random.Random,
    ) -> torch.Tensor:
        flags = attribute_flags(tokens, self.pieces, words, tags)
        return mask_caption(tokens, flags, self.attribute_p, self.other_p, rng)


def build_token_masker(cfg: AugmentConfig, tokenizer: object) -> TokenMasker | None:
    """The masking of ``cfg`` for ``tokenizer``'s vocabulary, or None when it is off."""
    if not cfg.mask_tokens:
        return None
    found = {
        "size": len(getattr(tokenizer, "encoder", ())),
        "sot": getattr(tokenizer, "sot_token_id", None),
        "eot": getattr(tokenizer, "eot_token_id", None),
    }
    if found != CLIP_VOCABULARY:
        raise ConfigError(
            f"augment.mask_tokens needs CLIP's BPE vocabulary {CLIP_VOCABULARY} (the mask token "
            f"is id {MASK_TOKEN_ID}); the model's tokenizer has {found}"
        )
    return TokenMasker(piece_bytes(tokenizer), cfg.mask_attribute_p, cfg.mask_other_p)

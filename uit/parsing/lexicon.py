"""The lexicon of the built-in attribute parser: any word to one Penn Treebank tag.

Three sources, in this order of precedence:

1. A hand list: closed-class words (determiners, prepositions, conjunctions, pronouns, auxiliaries,
   modals), the verbs captions use ("wears", "carrying") and the person-description vocabulary
   (colours, patterns, garments, footwear, bags, accessories, hair, body and gender words).
2. WordNet's word lists by part of speech, from spaCy's lookup tables (``spacy-lookups-data``):
   base forms, irregular forms, and regular inflections found with spaCy's own lemmatizer rules.
   Many words are both noun and verb ("dress", "walk"): a verb form ending in -ing is VBG and
   one in -ed VBN (unless a noun: "seed"); other ambiguous base forms prefer adjective, then
   noun, then verb. The pipeline's context rules repair the common exceptions ("a building": NN
   after a determiner).
3. Guesses for words in neither: a word one typing error away from the hand list takes that
   word's tag ("trosuers"); otherwise -ing VBG, -ed VBN, -ly RB, and NN for the rest.

The tag of a word never depends on its context here; ``uit.parsing.pipeline`` adds the context
rules.
"""

from __future__ import annotations

import gzip
import json
import re
import string
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

from uit.core.errors import UitError

LEXICON_VERSION = "1"  # bump when a tag can change, so outputs record which lexicon made them

# Penn Treebank tag -> Universal POS (spaCy's English mapping).
TAG_TO_POS = {
    "$": "SYM", "''": "PUNCT", ",": "PUNCT", "-LRB-": "PUNCT", "-RRB-": "PUNCT", ".": "PUNCT",
    ":": "PUNCT", "``": "PUNCT", "HYPH": "PUNCT", "NFP": "PUNCT", "SYM": "SYM", "XX": "X",
    "CC": "CCONJ", "CD": "NUM", "DT": "DET", "PDT": "DET", "WDT": "DET", "WP$": "DET",
    "EX": "PRON", "PRP": "PRON", "PRP$": "PRON", "WP": "PRON", "IN": "ADP", "RP": "ADP",
    "JJ": "ADJ", "JJR": "ADJ", "JJS": "ADJ", "MD": "AUX", "NN": "NOUN", "NNS": "NOUN",
    "NNP": "PROPN", "NNPS": "PROPN", "POS": "PART", "TO": "PART", "RB": "ADV", "RBR": "ADV",
    "RBS": "ADV", "WRB": "ADV", "UH": "INTJ", "VB": "VERB", "VBD": "VERB", "VBG": "VERB",
    "VBN": "VERB", "VBP": "VERB", "VBZ": "VERB",
}  # fmt: skip

# Closed classes and the verbs of person descriptions, word -> tag.
_FUNCTION_WORDS = {
    "DT": "a an the this that these those some any each every no another either neither all both",
    "IN": "about above across after against along alongside amid among around as at before "
    "behind below beneath beside besides between beyond by despite down during except for from "
    "in inside into like near of off on onto out outside over past per since than through "
    "throughout toward towards under underneath unlike until up upon via with within without "
    "whether if because while although though whereas",
    "TO": "to",
    "CC": "and or but nor & plus",
    "PRP": "i me you he him she it we us they them myself yourself himself herself itself "
    "ourselves themselves",
    "PRP$": "my your his her its our their",
    "WDT": "which whatever whichever",
    "WP": "who whom what whoever",
    "WP$": "whose",
    "WRB": "where when how why whenever wherever",
    "MD": "can could may might must shall should will would ca wo 'll 'd",
    "RB": "not n't very also too quite rather slightly just only even still probably maybe "
    "perhaps away here there again well so almost mostly partly really fairly somewhat else "
    "ever never always often sometimes then now together apart forward backward backwards "
    "sideways upward downward outdoors indoors alone next",
    "CD": "zero one two three four five six seven eight nine ten eleven twelve twenty hundred",
    "POS": "'s '",
    "VB": "be have do wear carry hold",
    "VBP": "am are 're 'm 've",
    "VBZ": "is has does wears carries holds walks stands looks seems appears goes crosses waits "
    "rides pushes pulls talks sits runs uses sees takes hangs",
    "VBD": "was were had did wore went stood sat ran rode saw took hung",
    "VBN": "been done worn carried held dressed gone seen taken ridden tied tucked rolled paired",
    "VBG": "being having doing wearing carrying holding walking standing looking going heading "
    "crossing waiting riding pushing pulling talking sitting running using seeing taking hanging",
}

# The person-description vocabulary (design §3.3), by category.
PERSON_VOCABULARY: dict[str, tuple[str, str]] = {
    "colours": (
        "JJ",
        "black white gray grey red blue green yellow purple pink brown orange beige khaki navy "
        "tan maroon violet cyan teal turquoise gold golden silver cream ivory burgundy olive "
        "magenta lavender crimson scarlet lilac peach coral mustard charcoal blonde blond "
        "brunette auburn ginger dark light pale bright deep colorful colourful multicolored "
        "multicoloured colored coloured neon pastel",
    ),
    "patterns and fit": (
        "JJ",
        "striped stripy checked checkered chequered plaid patterned printed floral flowered "
        "spotted dotted plain solid knit knitted woolen woollen furry fluffy shiny long short "
        "tall small big large little thin slim slender skinny fat heavy heavyset chubby stocky "
        "young old elderly middle-aged teenage loose tight baggy fitted oversized cropped medium "
        "full knee-length ankle-length shoulder-length waist-length mid-length short-sleeved "
        "long-sleeved sleeveless strapless hooded collared high-heeled flat high low casual "
        "formal sporty athletic curly straight wavy bald short-haired long-haired dark-haired "
        "button-up button-down zip-up open crossbody left right",
    ),
    "materials": ("NN", "denim leather cotton wool silk lace velvet fur suede nylon canvas"),
    "garments": (
        "NN",
        "shirt t-shirt tshirt tee top blouse tank tank-top polo jacket coat overcoat raincoat "
        "trench parka blazer windbreaker anorak sweater jumper pullover cardigan hoodie "
        "sweatshirt vest waistcoat suit dress gown skirt miniskirt uniform jumpsuit robe scarf "
        "shawl tie necktie belt collar sleeve hood pocket zipper button print logo stripe "
        "pattern outfit clothing apparel garment attire",
    ),
    "footwear": (
        "NN",
        "shoe sneaker trainer boot sandal heel slipper loafer flip-flop sock footwear",
    ),
    "plurals": (
        "NNS",
        "trousers pants slacks jeans shorts leggings tights capris sweatpants joggers overalls "
        "clothes shoes sneakers trainers boots sandals heels slippers loafers socks glasses "
        "sunglasses spectacles eyeglasses headphones earphones bangs pigtails",
    ),
    "bags": (
        "NN",
        "bag backpack rucksack knapsack handbag purse satchel tote briefcase suitcase luggage "
        "pouch wallet messenger strap",
    ),
    "accessories": (
        "NN",
        "hat cap baseball beanie beret helmet headband "
        "mask umbrella watch wristwatch glove earring necklace bracelet "
        "jewelry jewellery phone bottle bicycle bike scooter stroller",
    ),
    "hair": (
        "NN",
        "hair ponytail bun braid fringe beard mustache moustache hairstyle haircut",
    ),
    "body": (
        "NN",
        "head face eye ear nose mouth neck shoulder arm hand wrist finger leg knee ankle foot "
        "body waist hip chest back skin figure front side",
    ),
    "people": (
        "NN",
        "man woman guy lady girl boy male female gentleman person pedestrian child kid baby "
        "teenager teen adult youth student worker",
    ),
    "irregular people": ("NNS", "men women gentlemen people children feet"),
    # Surroundings that captions mention; nouns, though WordNet also lists some as adjectives.
    "scene": (
        "NN",
        "street road sidewalk pavement crosswalk building car bus shop store window "
        "door wall corner camera picture photo image background ground floor grass tree day "
        "night morning afternoon evening",
    ),
}

PUNCTUATION_TAGS = {
    ".": ".", "!": ".", "?": ".", ",": ",", ";": ":", ":": ":", "-": ":", "--": ":",
    "...": ":", '"': "''", "``": "``", "''": "''", "(": "-LRB-", "[": "-LRB-", "{": "-LRB-",
    ")": "-RRB-", "]": "-RRB-", "}": "-RRB-", "$": "$", "#": "NFP", "*": "NFP", "/": "SYM",
    "+": "SYM", "=": "SYM", "%": "NN", "@": "IN", "\u201c": "``", "\u201d": "''",
    "\u2018": "``", "\u2013": ":", "\u2014": ":", "\u2026": ":",
}  # fmt: skip

_NUMBER = re.compile(r"^[+-]?\d+(?:[.,:]\d+)*(?:st|nd|rd|th|s)?$")
_HYPHENATED = re.compile(r"^[a-z]+(?:-[a-z]+)+$")
_BASE_TAG = {"adj": "JJ", "noun": "NN", "verb": "VB", "adv": "RB"}
_POS_OF_TAG = {"JJ": "adj", "NN": "noun", "NNS": "noun", "VB": "verb", "RB": "adv"}
_LOOKUPS = ("en_lemma_index", "en_lemma_exc", "en_lemma_rules")


def hand_lexicon() -> dict[str, str]:
    """Every hand-listed word with its tag; the person vocabulary wins over function words."""
    words: dict[str, str] = {}
    for tag, text in _FUNCTION_WORDS.items():
        words.update(dict.fromkeys(text.split(), tag))
    for tag, text in PERSON_VOCABULARY.values():
        words.update(dict.fromkeys(text.split(), tag))
    return words


@dataclass(frozen=True)
class WordLists:
    """spaCy's English lemmatizer data: base forms, irregular forms and suffix rules per POS."""

    bases: dict[str, frozenset[str]]  # pos -> base forms
    irregular: dict[str, dict[str, str]]  # pos -> {form: lemma}
    rules: dict[str, tuple[tuple[str, str], ...]]  # pos -> ((form suffix, lemma suffix), ...)


def read_word_lists() -> WordLists:
    """Read the WordNet-derived tables of ``spacy-lookups-data``."""
    try:
        folder = resources.files("spacy_lookups_data") / "data"
        tables: list[dict[str, Any]] = [
            json.loads(gzip.decompress((folder / f"{name}.json.gz").read_bytes()))
            for name in _LOOKUPS
        ]
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise UitError(
            f"the built-in parser needs spaCy's lookup tables ({error}); "
            "install them with `pip install spacy-lookups-data`"
        ) from None
    index, exceptions, rules = tables
    return WordLists(
        bases={pos: frozenset(_clean(words)) for pos, words in index.items()},
        irregular={
            pos: {form.lower(): lemmas[0].lower() for form, lemmas in table.items() if lemmas}
            for pos, table in exceptions.items()
        },
        rules={pos: tuple((old, new) for old, new in rules[pos]) for pos in _BASE_TAG},
    )


def _clean(words: list[str]) -> Iterator[str]:
    """Single lowercase words: WordNet's multi-word entries are joined with underscores."""
    return (word.lower() for word in words if "_" not in word and " " not in word)


class Lexicon:
    """``tag(word)``: the Penn tag of a word out of context."""

    def __init__(self, hand: dict[str, str], lists: WordLists) -> None:
        self.hand = hand
        self.lists = lists
        self.bases = {pos: set(words) for pos, words in lists.bases.items()}
        for word, tag in hand.items():  # hand nouns and adjectives inflect like WordNet's
            if tag in _POS_OF_TAG:
                self.bases[_POS_OF_TAG[tag]].add(word)

    def tag(self, word: str) -> str:
        """The tag of ``word`` (any case) by the precedence in the module docstring."""
        lower = word.lower().replace("\u2019", "'")  # a typographic apostrophe: "person\u2019s"
        if lower in self.hand:
            return self.hand[lower]
        if lower in PUNCTUATION_TAGS:
            return PUNCTUATION_TAGS[lower]
        if _NUMBER.match(lower):
            return "CD"
        if not (lower.isalpha() or _HYPHENATED.match(lower)):
            return _symbol_tag(lower)
        return self.known_tag(lower) or self._guess(lower)

    def known_tag(self, word: str) -> str | None:
        """The tag from the hand list or WordNet, or None for a word in neither."""
        if word in self.hand:
            return self.hand[word]
        if word.endswith("ing") and self._lemma(word, "verb"):
            return "VBG"  # "walking", and "building" too: a context rule makes "a building" NN
        if word.endswith("ed") and word not in self.bases["noun"] and self._lemma(word, "verb"):
            return "VBN"  # "parked", which WordNet also lists as an adjective
        for pos in ("adj", "noun", "verb", "adv"):
            if word in self.bases[pos]:
                return _BASE_TAG[pos]
        for pos in ("noun", "verb", "adj", "adv"):
            if self._lemma(word, pos):
                return _inflected_tag(word, pos)
        return None

    def _lemma(self, word: str, pos: str) -> str | None:
        """A lemma of ``word`` as ``pos`` other than the word itself (spaCy's rule lemmatizer)."""
        lemma = self.lists.irregular.get(pos, {}).get(word)
        if lemma is not None and lemma != word:
            return lemma
        for old, new in self.lists.rules[pos]:
            stem = word[: len(word) - len(old)]
            if old and word.endswith(old) and len(stem) > 1 and stem + new in self.bases[pos]:
                return stem + new
        return None

    def _guess(self, word: str) -> str:
        for candidate in _edits(word) if len(word) >= 4 else ():
            if candidate in self.hand:
                return self.hand[candidate]
        if "-" in word:
            return "JJ"  # a compound modifier: "knee-high", "blue-green"
        for suffix, tag in (("ing", "VBG"), ("ed", "VBN"), ("ly", "RB")):
            if word.endswith(suffix) and len(word) > len(suffix) + 2:
                return tag
        return "NN"


def _symbol_tag(token: str) -> str:
    """NFP for other punctuation, SYM for symbols, XX for anything else ("x2", "o'clock")."""
    categories = {unicodedata.category(c)[0] for c in token}
    if categories == {"P"}:
        return "NFP"
    return "SYM" if categories <= {"P", "S"} else "XX"


def _inflected_tag(word: str, pos: str) -> str:
    if pos == "noun":
        return "NNS"
    if pos == "verb":
        if word.endswith("ing"):
            return "VBG"
        return "VBZ" if word.endswith("s") else "VBN"
    if pos == "adj":
        return "JJS" if word.endswith("est") else "JJR" if word.endswith("er") else "JJ"
    return "RBS" if word.endswith("est") else "RBR" if word.endswith("er") else "RB"


def _edits(word: str) -> Iterator[str]:
    """Words one typing error away: swapped neighbours first, then a dropped, changed or extra
    letter (Norvig's spelling corrector), in a fixed order."""
    letters = string.ascii_lowercase
    splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
    yield from (a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1)
    yield from (a + b[1:] for a, b in splits if b)
    yield from (a + c + b[1:] for a, b in splits if b for c in letters)
    yield from (a + c + b for a, b in splits for c in letters)


@lru_cache(maxsize=1)
def load_lexicon() -> Lexicon:
    """The hand list plus spaCy's WordNet word lists (read once per process)."""
    return Lexicon(hand_lexicon(), read_word_lists())

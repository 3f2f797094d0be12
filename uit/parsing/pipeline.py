"""The spaCy pipelines that tag captions (design §3.3).

``trained``: an installed English pipeline such as ``en_core_web_sm`` (its tagger gives Penn tags).
``builtin``: ``spacy.blank("en")`` whose tokenizer keeps hyphenated words whole ("t-shirt",
"short-sleeved", as the Penn Treebank does), then ``uit_lexicon_tagger``, which sets each token's
TAG and POS from ``uit.parsing.lexicon`` (one hash lookup per token, memoised per word form), then
spaCy's ``attribute_ruler`` with a few context rules ("a building": NN, not VBG). An attribute
ruler keyed on the whole lexicon parses about 2,400 captions per second on one core, below the
5,000 of design §7, hence the lookup component.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import spacy
from spacy.lang.char_classes import ALPHA, HYPHENS
from spacy.language import Language
from spacy.parts_of_speech import IDS as POS_IDS
from spacy.pipeline import AttributeRuler
from spacy.tokenizer import Tokenizer
from spacy.tokens import Doc
from spacy.util import compile_infix_regex, is_package
from spacy.vocab import Vocab

from uit.core.config import ParseConfig
from uit.core.errors import UitError
from uit.parsing.lexicon import LEXICON_VERSION, TAG_TO_POS, Lexicon, load_lexicon

log = logging.getLogger(__name__)

BackendName = Literal["builtin", "trained"]
BUILTIN_NAME = "uit_builtin"
TRAINED_EXCLUDE = ("parser", "ner", "lemmatizer", "senter")  # only the tagger is needed

# spaCy's English infix rule that splits "t-shirt" into "t", "-", "shirt".
_HYPHEN_INFIX = rf"(?<=[{ALPHA}0-9])(?:{HYPHENS})(?=[{ALPHA}])"

# (pattern, index of the token to retag, new tag): spaCy Matcher patterns on TAG and LOWER.
CONTEXT_RULES: tuple[tuple[list[dict[str | int, Any]], int, str], ...] = (
    ([{"TAG": "DT"}, {"TAG": "VBG"}], 1, "NN"),  # "a building", "the crossing"
    ([{"TAG": "PRP$"}, {"TAG": "VBG"}], 1, "NN"),
    ([{"TAG": "JJ"}, {"TAG": "VBG"}], 1, "NN"),  # "black clothing"
    ([{"TAG": "POS"}, {"TAG": "VBG"}], 1, "NN"),
    ([{"TAG": "PRP"}, {"TAG": "NNS"}], 1, "VBZ"),  # "she walks"
    ([{"TAG": "MD"}, {"TAG": "NN"}], 1, "VB"),  # "can look"
    ([{"TAG": "PRP"}, {"LOWER": "'s"}], 1, "VBZ"),  # "he's"
    ([{"LOWER": "her"}, {"TAG": {"IN": [".", ",", ":", "IN", "TO", "CC", "DT", "RB"]}}], 0, "PRP"),
    ([{"LOWER": "there"}, {"TAG": {"IN": ["VBZ", "VBP", "VBD"]}}], 0, "EX"),  # "there is"
    ([{"LOWER": "that"}, {"TAG": {"IN": ["VBZ", "VBP", "VBD", "MD"]}}], 0, "WDT"),
)


@dataclass(frozen=True)
class Backend:
    """Which pipeline parsed the captions, recorded beside its output."""

    name: BackendName
    pipeline: str
    pipeline_version: str
    spacy_version: str
    components: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        return {"backend": record.pop("name"), **record, "components": list(self.components)}


class LexiconTagger:
    """Set TAG and POS of every token from a ``Lexicon``, memoising one entry per word form."""

    def __init__(self, vocab: Vocab, lexicon: Lexicon) -> None:
        self.vocab = vocab
        self.lexicon = lexicon
        self._entries: dict[int, tuple[int, int]] = {}  # hash of the lowercase form -> tag, pos

    def __call__(self, doc: Doc) -> Doc:
        entries = self._entries
        for token in doc:
            entry = entries.get(token.lower)
            if entry is None:
                entry = entries[token.lower] = self._entry(token.lower_)
            token.tag, token.pos = entry
        return doc

    def _entry(self, word: str) -> tuple[int, int]:
        tag = self.lexicon.tag(word)
        return self.vocab.strings.add(tag), POS_IDS[TAG_TO_POS[tag]]


@Language.factory("uit_lexicon_tagger")
def make_lexicon_tagger(nlp: Language, name: str) -> LexiconTagger:
    return LexiconTagger(nlp.vocab, load_lexicon())


def build_builtin_pipeline() -> Language:
    """Blank English, hyphenated words kept whole, the lexicon tagger and the context rules."""
    nlp = spacy.blank("en")
    defaults = list(nlp.Defaults.infixes or ())
    infixes = [rule for rule in defaults if rule != _HYPHEN_INFIX]
    assert len(infixes) == len(defaults) - 1, "spaCy's hyphen infix rule changed"
    assert isinstance(nlp.tokenizer, Tokenizer)
    nlp.tokenizer.infix_finditer = compile_infix_regex(infixes).finditer
    nlp.add_pipe("uit_lexicon_tagger")
    ruler = nlp.add_pipe("attribute_ruler", name="context_rules")
    assert isinstance(ruler, AttributeRuler)
    for pattern, index, tag in CONTEXT_RULES:
        ruler.add([pattern], {"TAG": tag, "POS": TAG_TO_POS[tag]}, index=index)
    nlp.meta.update(name=BUILTIN_NAME, version=LEXICON_VERSION)
    return nlp


def trained_available(model: str) -> bool:
    """Whether ``model`` is an installed spaCy pipeline package or a pipeline folder."""
    return is_package(model) or (Path(model) / "config.cfg").is_file()


def resolve_backend(cfg: ParseConfig) -> BackendName:
    """``auto`` becomes ``trained`` when that pipeline is installed, else ``builtin``."""
    if cfg.backend == "builtin":
        return "builtin"
    if trained_available(cfg.trained_model):
        return "trained"
    if cfg.backend == "auto":
        return "builtin"
    raise UitError(
        f"parse.backend is 'trained' but the spaCy pipeline {cfg.trained_model!r} is not "
        f"installed. Install it with `python -m spacy download {cfg.trained_model}` (offline: "
        "`pip install` its wheel from https://github.com/explosion/spacy-models/releases), or "
        "set parse.backend to 'auto' or 'builtin' (--backend on the command line)."
    )


def load_trained_pipeline(model: str) -> Language:
    """Load an installed pipeline with only what tagging needs."""
    try:
        nlp = spacy.load(model, exclude=list(TRAINED_EXCLUDE))
    except (OSError, ValueError, ImportError) as error:
        raise UitError(f"could not load the spaCy pipeline {model!r}: {error}") from None
    if "tagger" not in nlp.pipe_names:
        raise UitError(
            f"the spaCy pipeline {model!r} has no tagger (components: {nlp.pipe_names}); "
            "the attribute parser needs Penn Treebank tags"
        )
    return nlp


def build_pipeline(cfg: ParseConfig) -> tuple[Language, Backend]:
    """The pipeline that ``cfg`` selects, and the record of which one it is."""
    name = resolve_backend(cfg)
    nlp = (
        build_builtin_pipeline() if name == "builtin" else load_trained_pipeline(cfg.trained_model)
    )
    pipeline = f"{nlp.meta['lang']}_{nlp.meta['name']}"
    log.info("parsing captions with the %s pipeline %s", name, pipeline)
    backend = Backend(
        name=name,
        pipeline=pipeline,
        pipeline_version=str(nlp.meta.get("version", "")),
        spacy_version=spacy.__version__,
        components=tuple(nlp.pipe_names),
    )
    return nlp, backend

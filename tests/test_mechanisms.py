"""Mechanism tests: an idea of UIT, trained briefly through the real training step on a toy made
in code, must do what it is for, and its control (the idea switched off, or its input cut) must
not.

- TIR: figures whose shirt and trousers are flat colours of one luminance, so the grayscale input
  shows no colour at all and only the caption ("a person in a red shirt and green trousers") can
  tell it.
- The attribute augmentation: training captions open and close with a filler word that names the
  identity as well as its colours do ("jogging , a person in a red shirt and green trousers ,
  jogging"); a sentence with another identity's filler must still find its person.
- CMT: families of identities that differ only in a small bag; CMT's hardest in-batch negatives
  teach the bag when look-alikes share a batch.

The look-alike diagnostics are checked against a naive reference.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch.nn import functional as F

from tests.conftest import single_thread
from uit.core.config import (
    Config,
    LossConfig,
    ModelConfig,
    OptimConfig,
    ParseConfig,
    TIRConfig,
    TrainConfig,
)
from uit.model.build import build_model, build_tokenizer
from uit.model.encoder import DualEncoder
from uit.model.objective import Objective
from uit.parsing.parse import parse_texts
from uit.parsing.pipeline import build_pipeline
from uit.retrieval.diagnostics import (
    CaptionReliance,
    another_identity,
    caption_reliance,
    caption_reliance_sums,
    lookalike_margin,
    lookalike_r1,
)
from uit.text.augment import augment_caption
from uit.training.train import build_step_state, seed_everything, train_step

LUMA = 0.45  # every colour of the palette has this weighted grayscale


def equal_luma(red: float, blue: float) -> tuple[float, float, float]:
    return red, (LUMA - 0.2989 * red - 0.1140 * blue) / 0.5870, blue


PALETTE = {
    "red": equal_luma(0.95, 0.25),
    "green": equal_luma(0.05, 0.1),
    "blue": equal_luma(0.15, 1.0),
    "purple": equal_luma(0.7, 0.95),
    "orange": equal_luma(0.9, 0.0),
}
COLOURS = list(PALETTE)
# (shirt, trousers), ordered so that neighbours differ in both: another_identity's caption
# names two wrong colours
OUTFITS = [(top, (top + shift) % 5) for shift in range(1, 5) for top in range(5)]
MODEL = ModelConfig(name="uit-tiny", image_height=32, image_width=16, context_length=16)
TIR_STEPS, TIR_BATCH = 120, 16


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    with single_thread():
        yield


def outfit_images(outfits: list[tuple[int, int]], encoder: DualEncoder) -> torch.Tensor:
    """(B, 3, H, W) normalised figures: the top half the shirt's colour, the bottom half the
    trousers'."""
    height, width = encoder.image_size
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (encoder.image_mean, encoder.image_std))
    images = torch.empty(len(outfits), 3, height, width)
    for row, (top, bottom) in enumerate(outfits):
        images[row, :, : height // 2] = torch.tensor(PALETTE[COLOURS[top]]).view(3, 1, 1)
        images[row, :, height // 2 :] = torch.tensor(PALETTE[COLOURS[bottom]]).view(3, 1, 1)
    return (images - mean) / std


def outfit_caption(top: int, bottom: int) -> str:
    return f"a person in a {COLOURS[top]} shirt and {COLOURS[bottom]} trousers"


def tir_config() -> Config:
    """TIR alone, from random weights: the from-scratch Adam (eps 1e-8), fp32 on the CPU, the
    cosine schedule over the whole run."""
    return Config(
        model=MODEL,
        loss=LossConfig(sdm=0, id=0, cmt=0, tir=1.0),
        tir=TIRConfig(decoder_layers=2),
        optim=OptimConfig(lr=3e-4, eps=1e-8, weight_decay=0),
        train=TrainConfig(epochs=1, warmup_epochs=0, batch_size=TIR_BATCH, device="cpu",
                          precision="fp32"),
    )  # fmt: skip


def train_tir(cut_text: bool) -> Objective:
    """``TIR_STEPS`` training steps on random outfits; ``cut_text``: every caption is the same
    sentence, which names no colour."""
    cfg = tir_config()
    seed_everything(0)
    encoder, tokenizer = build_model(MODEL), build_tokenizer(MODEL)
    objective = Objective(encoder, len(OUTFITS), cfg.loss, cfg.tir)
    state = build_step_state(objective, cfg, torch.device("cpu"))
    draws = torch.Generator().manual_seed(0)
    for step in range(TIR_STEPS):
        pids = torch.randint(len(OUTFITS), (TIR_BATCH,), generator=draws)
        outfits = [OUTFITS[int(pid)] for pid in pids]
        captions = ["a person" if cut_text else outfit_caption(*o) for o in outfits]
        batch = {"images": outfit_images(outfits, encoder), "text": tokenizer(captions),
                 "pids": pids}  # fmt: skip
        train_step(state, batch, cfg, step / TIR_STEPS)
    return objective.eval()


def tir_reliance(objective: Objective) -> CaptionReliance:
    """Colour error on every outfit from its own caption and from its neighbour's."""
    text = build_tokenizer(MODEL)([outfit_caption(*o) for o in OUTFITS])
    images = outfit_images(OUTFITS, objective.encoder)
    return caption_reliance(objective, images, text, torch.arange(len(OUTFITS)))


def test_tir_restores_colours_known_only_from_the_caption() -> None:
    reliance = tir_reliance(train_tir(cut_text=False))
    assert reliance.gain > 15, reliance
    assert reliance.own < reliance.mean_colour - 10, reliance


def test_tir_trained_without_colour_words_gains_nothing_from_the_caption() -> None:
    reliance = tir_reliance(train_tir(cut_text=True))
    assert abs(reliance.gain) < 3, reliance
    assert reliance.own > reliance.mean_colour - 5, reliance


def test_another_identity_picks_the_next_sample_of_another_pid() -> None:
    pids = torch.tensor([4, 4, 7, 4, 9])
    assert another_identity(pids).tolist() == [2, 2, 3, 4, 0]
    with pytest.raises(ValueError, match="single identity"):
        another_identity(torch.tensor([3, 3]))


def test_caption_reliance_scores_both_captions_on_the_same_masks() -> None:
    torch.manual_seed(0)
    encoder = build_model(MODEL)
    objective = Objective(encoder, 2, LossConfig(sdm=0, id=0, cmt=0), TIRConfig(decoder_layers=1))
    text = build_tokenizer(MODEL)([outfit_caption(0, 1), outfit_caption(2, 3)] * 2)
    images = outfit_images([(0, 1), (2, 3)] * 2, encoder)
    same = caption_reliance_sums(objective.eval(), images, text, text, torch.Generator())
    assert same["own"] == same["other"] and same["patches"] == 4 * 6  # 70% of 8, 4 images
    swapped = caption_reliance(objective, images, text, torch.tensor([0, 1, 0, 1]))
    assert swapped.other != swapped.own and swapped.patches == same["patches"]


def naive_lookalike(similarity, query_pids, gallery_pids, query_families, gallery_families):
    hits, margins = [], []
    for q in range(len(query_pids)):
        family = [g for g in range(len(gallery_pids)) if gallery_families[g] == query_families[q]]
        top = max(family, key=lambda g: (similarity[q][g], -g))  # ties: the lower index
        hits.append(gallery_pids[top] == query_pids[q])
        true = [similarity[q][g] for g in family if gallery_pids[g] == query_pids[q]]
        alike = [similarity[q][g] for g in family if gallery_pids[g] != query_pids[q]]
        if alike:
            margins.append(max(true) - max(alike))
    return 100 * sum(hits) / len(hits), sum(margins) / len(margins)


def test_lookalike_scores_match_a_naive_reference() -> None:
    generator = torch.Generator().manual_seed(0)
    similarity = torch.randn(12, 9, generator=generator).round(decimals=1)  # some ties
    gallery_pids = torch.tensor([0, 0, 1, 2, 2, 3, 4, 5, 5])
    pid_family = torch.tensor([0, 0, 1, 1, 2, 2])
    query_pids = torch.tensor([0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5])
    args = (similarity, query_pids, gallery_pids, pid_family[query_pids], pid_family[gallery_pids])
    r1, margin = naive_lookalike(*(a.tolist() for a in args))
    assert lookalike_r1(*args) == pytest.approx(r1)
    assert lookalike_margin(*args) == pytest.approx(margin, abs=1e-6)


def test_a_query_without_its_image_in_its_family_is_refused() -> None:
    pids = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="query 1 has no relevant image"):
        lookalike_r1(torch.zeros(2, 2), pids, pids, torch.tensor([0, 0]), torch.tensor([0, 1]))


# The augmentation's and CMT's toys: vivid colours, which the image encoder sees as they are.
VIVID = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.7, 0.1), "blue": (0.1, 0.2, 0.9),
         "orange": (1.0, 0.55, 0.0), "purple": (0.6, 0.1, 0.7), "white": (0.95, 0.95, 0.95),
         "black": (0.05, 0.05, 0.05)}  # fmt: skip
NOISE = 0.1  # pixel noise (0-1 scale) on every drawn figure: no two images are the same


def vivid_figures(
    outfits: Sequence[tuple[str, ...]], encoder: DualEncoder, generator: torch.Generator
) -> torch.Tensor:
    """(B, 3, H, W) normalised noisy figures: shirt colour on top, trousers below and, for a
    third colour, a 3x3 bag at a random place around the waist."""
    height, width = encoder.image_size
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (encoder.image_mean, encoder.image_std))
    images = torch.empty(len(outfits), 3, height, width)
    for row, outfit in enumerate(outfits):
        images[row, :, : height // 2] = torch.tensor(VIVID[outfit[0]]).view(3, 1, 1)
        images[row, :, height // 2 :] = torch.tensor(VIVID[outfit[1]]).view(3, 1, 1)
        if len(outfit) > 2:
            y = int(torch.randint(height // 2 - 4, height // 2 + 2, (), generator=generator))
            x = int(torch.randint(0, width - 4, (), generator=generator))
            images[row, :, y : y + 3, x : x + 3] = torch.tensor(VIVID[outfit[2]]).view(3, 1, 1)
    images += NOISE * torch.randn(images.shape, generator=generator)
    return (images - mean) / std


def retrieval_config(loss: LossConfig, batch_size: int) -> Config:
    return Config(
        model=MODEL,
        loss=loss,
        optim=OptimConfig(lr=3e-4, eps=1e-8, weight_decay=0),
        train=TrainConfig(epochs=1, warmup_epochs=0, batch_size=batch_size, device="cpu",
                          precision="fp32"),
    )  # fmt: skip


def normalised(features: torch.Tensor) -> torch.Tensor:
    return F.normalize(features.float(), dim=-1)


# The attribute augmentation. Twenty outfits; each identity's captions open and close with its own
# verb, which the parser does not keep (a verb is no attribute word).
AUG_OUTFITS = [(COLOURS[top], COLOURS[bottom]) for top, bottom in OUTFITS]
VERBS = ["walking", "running", "standing", "waiting", "turning", "jogging", "strolling",
         "hurrying", "leaning", "resting", "looking", "talking", "smiling", "sitting", "reading",
         "crossing", "climbing", "heading", "passing", "stopping"]  # fmt: skip
AUG_STEPS, AUG_BATCH, AUG_P = 140, 16, 0.5
ToyCaptions = tuple[list[str], list[list[str]]]  # captions, their attribute words
Weights = dict[str, torch.Tensor]


def filler_caption(pid: int, verb: str) -> str:
    top, bottom = AUG_OUTFITS[pid]
    return f"{verb} , a person in a {top} shirt and {bottom} trousers , {verb}"


@pytest.fixture(scope="module")
def toy_captions() -> ToyCaptions:
    """Each identity's training caption and its attribute words, as the parse stage finds
    them with the project's spaCy pipeline."""
    captions = [filler_caption(pid, verb) for pid, verb in enumerate(VERBS)]
    nlp, _ = build_pipeline(ParseConfig())
    words = [parsed.attribute_words for parsed in parse_texts(nlp, captions)]
    assert not set(VERBS) & {w for ws in words for w in ws}, "the filler must not be kept"
    assert all(len(ws) == 5 for ws in words), words  # person, two colours, two garments
    return captions, words


def train_with_augmentation(
    captions: list[str], words: list[list[str]], p: float, seed: int = 0
) -> DualEncoder:
    """``AUG_STEPS`` SDM steps on the filler captions, each replaced with probability ``p`` by
    ``words`` of its identity through the training's own ``augment_caption``."""
    cfg = retrieval_config(LossConfig(sdm=1, id=0, cmt=0, tir=0), AUG_BATCH)
    seed_everything(seed)
    encoder, tokenizer = build_model(MODEL), build_tokenizer(MODEL)
    objective = Objective(encoder, len(AUG_OUTFITS), cfg.loss, cfg.tir)
    state = build_step_state(objective, cfg, torch.device("cpu"))
    draws, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    for step in range(AUG_STEPS):
        pids = torch.randperm(len(AUG_OUTFITS), generator=draws)[:AUG_BATCH]
        text = [augment_caption(captions[int(i)], words[int(i)], p, rng) for i in pids]
        outfits = [AUG_OUTFITS[int(i)] for i in pids]
        batch = {"images": vivid_figures(outfits, encoder, draws), "text": tokenizer(text),
                 "pids": pids}  # fmt: skip
        train_step(state, batch, cfg, step / AUG_STEPS)
    return encoder.eval()


@torch.no_grad()
def r1_with_fillers(encoder: DualEncoder, verbs: list[str]) -> float:
    """Text-to-image R@1 (%) of every outfit's caption opening with ``verbs[pid]``, against one
    fresh figure per outfit."""
    images = vivid_figures(AUG_OUTFITS, encoder, torch.Generator().manual_seed(99))
    text = build_tokenizer(MODEL)([filler_caption(pid, verb) for pid, verb in enumerate(verbs)])
    similarity = normalised(encoder.encode_text(text)) @ normalised(encoder.encode_image(images)).T
    hits = similarity.argmax(dim=1) == torch.arange(len(verbs))
    return 100 * hits.float().mean().item()


SWAPPED = VERBS[7:] + VERBS[:7]  # every caption opens with another identity's filler


def test_attribute_augmentation_finds_the_person_whatever_the_filler(
    toy_captions: ToyCaptions,
) -> None:
    """Against its control, the augmentation switched off, on two seeds: whether a model without
    it leans on the filler varies with the seed (R@1 0 to 80 over eight seeds on the
    development machine, 65 to 100 with it), so one seed could not tell them apart."""
    swapped: dict[float, list[float]] = {p: [] for p in (AUG_P, 0.0)}
    for seed in (0, 1):
        for p in swapped:
            encoder = train_with_augmentation(*toy_captions, p=p, seed=seed)
            assert r1_with_fillers(encoder, VERBS) >= 90  # both learn the training captions
            swapped[p].append(r1_with_fillers(encoder, SWAPPED))
    with_it, without = (sum(r) / len(r) for r in swapped.values())
    assert with_it >= 65, swapped
    assert with_it - without >= 25, swapped


def test_augmentation_keeping_the_words_the_parser_drops_gains_nothing(
    toy_captions: ToyCaptions,
) -> None:
    """The augmentation's input cut: it keeps the non-attribute words (the filler and "a in a
    and") instead of the attribute words."""
    captions, words = toy_captions
    dropped = [[w for w in c.split() if w not in ws] for c, ws in zip(captions, words, strict=True)]
    encoder = train_with_augmentation(captions, dropped, p=AUG_P)
    assert r1_with_fillers(encoder, SWAPPED) <= 30  # 0 on eight seeds: it learns the filler


# CMT. Twelve families of two identities: the same shirt and trousers, a white or a black bag.
# SDM first learns the outfits from batches where no look-alike ever shares a batch, so it never
# needs the bag (look-alike R@1 at chance); then CMT alone trains on. Only its hardest in-batch
# negatives can teach the bag, and only when a look-alike is one of them. (From random weights,
# CMT alone collapses every feature onto one point, and with SDM beside it the toy is learnt as
# well without it: SDM alone separates the families too.) Measured on the development machine:
# look-alike R@1 83 to 100 over six seeds when look-alikes share batches, 50 when they never do,
# and 50 on four seeds when CMT takes the easiest negative instead of the hardest.
FAMILY_OUTFITS = [(top, bottom) for top in COLOURS[:4] for bottom in COLOURS[:4] if top != bottom]
CMT_IDENTITIES = [
    (top, bottom, bag) for top, bottom in FAMILY_OUTFITS for bag in ("white", "black")
]
SDM_STEPS, CMT_STEPS, CMT_BATCH = 240, 150, 8


def bag_caption(top: str, bottom: str, bag: str) -> str:
    return f"a person in a {top} shirt and {bottom} trousers with a {bag} bag"


def family_batch(together: bool, draws: torch.Generator) -> torch.Tensor:
    """The identities of a batch: whole families (look-alikes share it), or one member of each
    of ``CMT_BATCH`` families (no look-alike ever does)."""
    families = torch.randperm(len(FAMILY_OUTFITS), generator=draws)
    if together:
        return torch.tensor(
            [2 * int(f) + bag for f in families[: CMT_BATCH // 2] for bag in (0, 1)]
        )
    bags = torch.randint(2, (CMT_BATCH,), generator=draws)
    return 2 * families[:CMT_BATCH] + bags


def train_on_families(
    objective: Objective, cfg: Config, steps: int, together: bool, draws: torch.Generator
) -> None:
    tokenizer = build_tokenizer(MODEL)
    state = build_step_state(objective, cfg, torch.device("cpu"))
    for step in range(steps):
        pids = family_batch(together, draws)
        identities = [CMT_IDENTITIES[int(i)] for i in pids]
        text = tokenizer([bag_caption(*i) for i in identities])
        images = vivid_figures(identities, objective.encoder, draws)
        train_step(state, {"images": images, "text": text, "pids": pids}, cfg, step / steps)


@pytest.fixture(scope="module")
def outfits_known() -> Weights:
    """The encoder's weights after ``SDM_STEPS`` of SDM on batches without look-alikes."""
    with single_thread():
        return sdm_without_lookalikes()


def sdm_without_lookalikes() -> Weights:
    seed_everything(0)
    encoder = build_model(MODEL)
    cfg = retrieval_config(LossConfig(sdm=1, id=0, cmt=0, tir=0), CMT_BATCH)
    objective = Objective(encoder, len(CMT_IDENTITIES), cfg.loss, cfg.tir)
    train_on_families(objective, cfg, SDM_STEPS, False, torch.Generator().manual_seed(0))
    assert family_lookalike_r1(encoder.eval()) <= 60  # the bag is not learnt yet
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def train_cmt_alone(weights: Weights, lookalikes_together: bool) -> DualEncoder:
    """``CMT_STEPS`` steps of CMT alone (margin 0.1) from ``weights``."""
    encoder = build_model(MODEL)
    encoder.load_state_dict(weights)
    cfg = retrieval_config(LossConfig(sdm=0, id=0, cmt=1, cmt_margin=0.1, tir=0), CMT_BATCH)
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 2e-4})})
    objective = Objective(encoder, len(CMT_IDENTITIES), cfg.loss, cfg.tir)
    train_on_families(
        objective, cfg, CMT_STEPS, lookalikes_together, torch.Generator().manual_seed(1)
    )
    return encoder.eval()


@torch.no_grad()
def family_lookalike_r1(encoder: DualEncoder) -> float:
    """Look-alike R@1 (%): each identity's caption against its family's fresh figures, two per
    identity; chance 50."""
    gallery = [i for i in range(len(CMT_IDENTITIES)) for _ in range(2)]
    images = vivid_figures([CMT_IDENTITIES[i] for i in gallery], encoder,
                           torch.Generator().manual_seed(99))  # fmt: skip
    text = build_tokenizer(MODEL)([bag_caption(*i) for i in CMT_IDENTITIES])
    similarity = normalised(encoder.encode_text(text)) @ normalised(encoder.encode_image(images)).T
    query_pids, gallery_pids = torch.arange(len(CMT_IDENTITIES)), torch.tensor(gallery)
    return lookalike_r1(similarity, query_pids, gallery_pids, query_pids // 2, gallery_pids // 2)


def test_cmt_teaches_what_tells_lookalikes_apart_when_they_share_batches(
    outfits_known: Weights,
) -> None:
    assert family_lookalike_r1(train_cmt_alone(outfits_known, lookalikes_together=True)) >= 75


def test_cmt_learns_no_lookalike_that_never_is_its_hardest_negative(outfits_known: Weights) -> None:
    assert family_lookalike_r1(train_cmt_alone(outfits_known, lookalikes_together=False)) <= 60

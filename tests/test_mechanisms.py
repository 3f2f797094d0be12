"""Mechanism tests: an idea of UIT, trained briefly through the real training step on a toy made
in code, must do what it is for, and its control (the idea's text input cut) must not.

TIR's toy: figures whose shirt and trousers are flat colours of one luminance, so the grayscale
input shows no colour at all and only the caption ("a person in a red shirt and green trousers")
can tell it. The look-alike diagnostics are checked against a naive reference.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from uit.core.config import Config, LossConfig, ModelConfig, OptimConfig, TIRConfig, TrainConfig
from uit.model.build import build_model, build_tokenizer
from uit.model.encoder import DualEncoder
from uit.model.objective import Objective
from uit.retrieval.diagnostics import (
    CaptionReliance,
    another_identity,
    caption_reliance,
    caption_reliance_sums,
    lookalike_margin,
    lookalike_r1,
)
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
    """One thread: the same reductions, so the same floats, however busy the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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

"""One door to a searchable gallery, for ``uit search``, ``uit serve`` and library users.

``open_gallery`` reads the gallery once (a folder of images, or a prepared benchmark's split),
loads the model, encodes the images through the embedding cache, and chooses the index once;
the returned ``OpenGallery`` answers sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from uit.core.config import INFERENCE_BATCH_SIZE, IndexChoice
from uit.retrieval.evaluate import EvalOptions, encode_texts, load_for_inference
from uit.retrieval.index import AnnIndex, FlatIndex, build_index
from uit.retrieval.search import (
    EmbeddingCache,
    Gallery,
    Hit,
    checkpoint_digest,
    gallery_embeddings,
    read_gallery,
)

if TYPE_CHECKING:
    import torch

    from uit.core.console import NewBar
    from uit.data.dataset import Tokenizer
    from uit.model.encoder import DualEncoder
    from uit.retrieval.milvus import MilvusIndex

ENCODING = "encoding the gallery (cached images are only hashed)"  # the progress bar's label


@dataclass
class OpenGallery:
    """A gallery ready to search: the model that encoded it, its images, their embeddings
    (``feats``, N x D, L2-normalised) and the index over them; ``encoded`` images were encoded
    now, the others came from the cache."""

    encoder: DualEncoder
    tokenizer: Tokenizer
    options: EvalOptions
    gallery: Gallery
    feats: torch.Tensor
    index: FlatIndex | AnnIndex | MilvusIndex
    encoded: int = 0

    def search(self, text: str, k: int, offset: int = 0) -> list[tuple[int, float]]:
        """(gallery index, cosine score) of ranks ``offset + 1`` to ``offset + k``, best first,
        ties to the lower index."""
        return self.rank(self.encode(text), k, offset)

    def encode(self, text: str) -> torch.Tensor:
        """The embedding of ``text``, as ``search`` ranks with it."""
        return self.encode_many([text])  # (1, D)

    def encode_many(self, texts: list[str]) -> torch.Tensor:
        """The embeddings of ``texts`` (len(texts), D), encoded together."""
        return encode_texts(self.encoder, texts, self.tokenizer, self.options)

    def rank(self, query: torch.Tensor, k: int, offset: int = 0) -> list[tuple[int, float]]:
        """``search`` for an encoded ``query`` (1, D)."""
        scores, indices = self.index.search(query, offset + k)
        return list(zip(indices[0].tolist(), scores[0].tolist(), strict=True))[offset:]

    def hits(self, text: str, k: int) -> list[Hit]:
        """The best ``k`` images for ``text``, as ``rank`` gives them."""
        paths = self.gallery.paths
        return [Hit(r + 1, paths[i], s) for r, (i, s) in enumerate(self.search(text, k))]


def open_gallery(
    checkpoint: str | Path,
    source: str | Path,
    *,
    split: str = "test",
    index_kind: IndexChoice = "auto",
    cache_dir: str | Path | None = None,
    device: str = "auto",
    batch_size: int = INFERENCE_BATCH_SIZE,
    progress: NewBar | None = None,
    loaded: tuple[DualEncoder, Tokenizer, EvalOptions] | None = None,
) -> OpenGallery:
    """``source``'s images (a folder, searched recursively, or a prepared benchmark's
    ``split``) encoded by the model of ``checkpoint`` (a training checkpoint or an export),
    through the embedding cache in ``cache_dir`` (None: no cache), under the index
    ``index_kind`` chooses (``auto``: the exact scan below 50,000 images). ``loaded``: the
    model of ``checkpoint`` already loaded (a server reading its gallery again)."""
    gallery = read_gallery(source, split)
    loaded = loaded or load_for_inference(Path(checkpoint), device, batch_size)
    encoder, tokenizer, options = loaded
    cache = (
        EmbeddingCache(Path(cache_dir), checkpoint_digest(Path(checkpoint))) if cache_dir else None
    )
    bar = progress(ENCODING, len(gallery.paths)) if progress else None
    feats, encoded = gallery_embeddings(encoder, gallery.paths, options, cache, bar,
                                        gallery.image_fix)  # fmt: skip
    index = build_index(feats, index_kind, cache_dir, progress)
    return OpenGallery(encoder, tokenizer, options, gallery, feats, index, encoded)

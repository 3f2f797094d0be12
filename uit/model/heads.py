"""The identity classifier, shared by both modalities (training only)."""

from __future__ import annotations

from torch import Tensor, nn


class IDHead(nn.Module):
    """Linear embed_dim -> train identities, initialised N(0, 0.001) with zero bias."""

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(embed_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, feats: Tensor) -> Tensor:
        return self.classifier(feats)  # (B, num_classes)

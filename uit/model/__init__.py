"""The dual encoder on open_clip, masked encoding, the TIR decoder and the ID head."""

from uit.model.build import build_model, build_tokenizer, load_encoder
from uit.model.encoder import DualEncoder, MaskedImage
from uit.model.heads import IDHead
from uit.model.tir import TIRDecoder, patchify, weighted_grayscale

__all__ = [
    "DualEncoder",
    "IDHead",
    "MaskedImage",
    "TIRDecoder",
    "build_model",
    "build_tokenizer",
    "load_encoder",
    "patchify",
    "weighted_grayscale",
]

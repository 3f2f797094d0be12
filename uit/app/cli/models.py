"""``uit export`` and ``uit weights convert``: models and weights files for others to use."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uit.app.cli.base import app, friendly_errors, weights_app
from uit.core.console import console
from uit.core.errors import UitError


@app.command()
@friendly_errors
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A training checkpoint folder.")],
    out: Annotated[Path, typer.Argument(help="Folder for the exported dual encoder.")],
) -> None:
    """Write just the dual encoder (no ID head, no TIR decoder) plus its model config."""
    from uit.model.export import export_encoder

    kept, dropped = export_encoder(checkpoint, out)
    console.print(f"wrote {out}: {kept} tensors of the dual encoder ({dropped} training-only "
                  "tensors left out); `uit search` and `uit evaluate` accept it")  # fmt: skip


@weights_app.command("convert")
@friendly_errors
def weights_convert(
    src: Annotated[
        Path,
        typer.Argument(
            help="OpenAI's .pt, open_clip's .bin or .safetensors, or a released best.pth."
        ),
    ],
    out: Annotated[Path, typer.Argument(help="OUT.safetensors, or a folder for a best.pth.")],
    model: Annotated[str, typer.Option(help="The architecture of a released best.pth.")] = (
        "ViT-B-16"
    ),
    overwrite: Annotated[bool, typer.Option(help="Replace an existing OUT file.")] = False,
    image_height: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Image height a released best.pth was trained at, where its position "
            "embeddings do not tell (with --image-width).",
            show_default="read from the weights",
        ),
    ] = None,
    image_width: Annotated[
        int | None,
        typer.Option(
            min=8,
            help="Image width a released best.pth was trained at.",
            show_default="read from the weights",
        ),
    ] = None,
) -> None:
    """Convert weights once, offline, without running any code from the file.

    Pretrained CLIP weights (OpenAI's TorchScript ViT-B-16.pt included) become one open_clip
    safetensors file for model.pretrained, recording the activation they need (QuickGELU for
    OpenAI's). A released fine-tuned checkpoint (IRRA's or the UIT authors' best.pth) becomes an
    exported model folder that `uit evaluate` and `uit search` take directly.
    """
    from uit.model.export import released_to_export
    from uit.model.weights import RELEASED, convert_weights, detect_format

    if (image_height is None) != (image_width is None):
        raise UitError("--image-height and --image-width go together: give both, the size the "
                       "released best.pth was trained at")  # fmt: skip
    size = (image_height, image_width) if image_height and image_width else None
    if detect_format(src) == RELEASED:
        info = released_to_export(src, out, model, image_size=size)
        console.print(f"wrote {out}: the dual encoder of {src} as {model}, QuickGELU "
                      f"({info.dropped} training-only entries left out). Score it with `uit "
                      f"evaluate {out} data/prepared/cuhk-pedes --out evals/released`")  # fmt: skip
        return
    if size is not None:
        raise UitError(f"--image-height/--image-width are for a released best.pth; {src} holds "
                       "pretrained weights, which training resizes to model.image_height and "
                       "model.image_width: leave them out")  # fmt: skip
    info = convert_weights(src, out, overwrite=overwrite)
    activation = {True: "QuickGELU", False: "GELU", None: "unknown (set model.quick_gelu)"}
    console.print(f"wrote {out} ({info.format}; activation {activation[info.quick_gelu]}). "
                  f"Train from it with `--set model.pretrained={out}`")  # fmt: skip

"""``uit gallery add | erase``: a served gallery grown or cut in place (``uit.retrieval.live``);
a running ``uit serve`` sees the change after ``POST /admin/reload``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from uit.app.cli.base import UitTyper, app, friendly_errors, index_choice
from uit.app.cli.serving import CacheOption, _gallery_source
from uit.core.config import INFERENCE_BATCH_SIZE, SEARCH_CACHE_DIR
from uit.core.console import err_console

gallery_app = UitTyper(no_args_is_help=True, help="Add images to a gallery, or erase them from "
                       "it everywhere they live (files, embedding cache, index).")  # fmt: skip
app.add_typer(gallery_app, name="gallery")

Checkpoint = Annotated[Path, typer.Argument(help="A checkpoint or an exported model folder.")]
IndexOption = Annotated[
    str,
    typer.Option(
        help="The index uit serve uses (auto: by gallery size; milvus or "
        "milvus://HOST:PORT: its Milvus collection).",
        callback=index_choice,
    ),
]


def _say(text: str) -> None:
    err_console.print(text, markup=False, highlight=False, soft_wrap=True)


@gallery_app.command("add")
@friendly_errors
def add(
    checkpoint: Checkpoint,
    images: Annotated[list[Path], typer.Argument(help="New image files, or folders of them.")],
    gallery: Annotated[Path, typer.Option(help="The folder gallery to add them to.")],
    cache_dir: CacheOption = Path(SEARCH_CACHE_DIR),
    index: IndexOption = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    batch_size: Annotated[
        int, typer.Option(min=1, help="Images per batch.")
    ] = INFERENCE_BATCH_SIZE,
) -> None:
    """Add images to a folder gallery (files from elsewhere are copied in): only they are
    encoded, and a cached index takes them without being trained again."""
    from uit.core.device import resolve_device
    from uit.retrieval.live import add_images

    resolve_device(device, "--device")
    change = add_images(checkpoint, gallery, images, cache_dir=cache_dir, index_kind=index,
                        device=device, batch_size=batch_size)  # fmt: skip
    carried = f"; index carried over to {change.index}" if change.index else ""
    _say(f"added {len(change.names)} images to {gallery} ({change.encoded} encoded now, "
         f"{change.images} in the gallery){carried}; a running uit serve takes them on "
         "POST /admin/reload")  # fmt: skip


@gallery_app.command("erase")
@friendly_errors
def erase(
    checkpoint: Checkpoint,
    gallery: Annotated[
        str, typer.Option(help="A folder of images, a prepared benchmark folder or a name.")
    ],
    image: Annotated[
        list[str] | None,
        typer.Option(
            help="An image's path inside the gallery, as uit search prints it (repeatable)."
        ),
    ] = None,
    identity: Annotated[
        list[int] | None,
        typer.Option(help="Every image of this identity of a prepared benchmark (repeatable)."),
    ] = None,
    split: Annotated[str, typer.Option(help="The split of a prepared benchmark.")] = "test",
    cache_dir: CacheOption = Path(SEARCH_CACHE_DIR),
    index: IndexOption = "auto",
    delete_files: Annotated[
        bool, typer.Option(help="Delete the image files too (else they are only never read).")
    ] = False,
    audit_log: Annotated[
        Path | None, typer.Option(help="The audit log of uit serve: a line records the erasure.")
    ] = None,
) -> None:
    """Erase images from a gallery everywhere uit keeps them: listed in the gallery's erasure
    list (never served again), their rows out of the embedding caches and the index; past
    audit lines are kept, and one more says the erasure happened."""
    from uit.app.serve_audit import NEVER_ROTATE, AuditLog, AuditPolicy
    from uit.data.prepared import IMAGES_FILE
    from uit.retrieval.live import erase_images
    from uit.retrieval.search import erasure_file

    # writable, checked before erasing; one line, never rotated here: rotation and retention
    # are the server's (its --audit-keep may keep more old files than the default)
    audit = AuditLog(AuditPolicy(audit_log, max_bytes=NEVER_ROTATE)) if audit_log else None
    source = _gallery_source(gallery)
    change = erase_images(checkpoint, source, names=image or [],
                          pids=identity or [], split=split, cache_dir=cache_dir,
                          index_kind=index, delete_files=delete_files)  # fmt: skip
    if audit is not None:
        audit.write({"event": "erase", "gallery": gallery, "images": change.names,
                     "identities": identity or [], "files_deleted": delete_files})  # fmt: skip
    listed = erasure_file(source)
    if (Path(source) / IMAGES_FILE).is_file():  # beside a folder that DVC may manage
        listed_in = f"listed in {listed} (commit it with the project: dvc repro keeps it)"
    else:
        listed_in = f"listed in {listed}"
    _say(f"erased {len(change.names)} images from {gallery} ({change.images} left), "
         f"{listed_in}; {len(change.caches)} embedding caches rewritten, "
         f"{len(change.dropped)} other cached indexes removed; a running uit serve drops "
         "them on POST /admin/reload")  # fmt: skip

"""`uit weights convert` and checkpoint loading against hostile files: memory bombs are refused
from the sizes the file declares, before anything is inflated or copied; malformed weights end
in one line naming the file, the entry and the fix; never a traceback (issue 23)."""

from __future__ import annotations

import random
import re
import resource
import shutil
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from typer.testing import CliRunner

from tests.conftest import fails, released_checkpoint, tiny_clip
from uit.app.cli import app
from uit.core.errors import WeightsError
from uit.model.build import load_encoder
from uit.model.limits import view_problem
from uit.model.weights import read_state_dict

GIB = 1 << 30


@contextmanager
def memory_cap(extra: int = GIB) -> Iterator[None]:
    """Let this process allocate at most ``extra`` more bytes (RLIMIT_DATA): a memory bomb
    then fails inside the test instead of taking the machine down."""
    found = re.search(r"VmData:\s+(\d+) kB", Path("/proc/self/status").read_text())
    assert found is not None
    used = int(found.group(1)) * 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    resource.setrlimit(resource.RLIMIT_DATA, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def convert_fails(src: Path, out: Path, *says: str) -> str:
    """`uit weights convert` on ``src`` under a memory cap: exit 1, one message naming ``src``
    and each of ``says``, no traceback, nothing written."""
    with memory_cap():
        output = fails(
            "weights", "convert", src, out, "--model", "uit-tiny", says=(str(src), *says)
        )
    assert "this is a bug" not in output
    assert not out.exists()
    return output


def clip_state() -> dict[str, Tensor]:
    return dict(tiny_clip().state_dict())  # uit-tiny at 64 x 32: an 8 x 4 grid of patch 8


class Buffered(nn.Module):
    """A scripted module holding one buffer, to save as a TorchScript archive."""

    def __init__(self, buffer: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", buffer)

    def forward(self, x: Tensor) -> Tensor:
        return x


def torchscript(path: Path, buffer: Tensor) -> Path:
    with warnings.catch_warnings():  # torch.jit is deprecated, and says so
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Buffered(buffer)), str(path))
    return path


# --- 1. memory bombs -------------------------------------------------------------------------


def test_an_expanded_tensor_in_a_torch_file_is_refused_before_it_is_copied(tmp_path) -> None:
    """4 stored bytes that stand for a 50,000 x 50,000 float tensor (10 GB once copied)."""
    src = tmp_path / "ViT-B-16.pt"
    torch.save({**clip_state(), "visual.extra": torch.zeros(1).expand(50_000, 50_000)}, src)
    says = ("its tensor visual.extra", "50000 x 50000 view with strides (0, 0)", "overlap")
    convert_fails(src, tmp_path / "out.safetensors", *says, "Re-save the weights")


def test_an_expanded_tensor_in_a_torchscript_archive_is_refused(tmp_path) -> None:
    """A TorchScript archive (torch.jit.save) whose 4-byte storage is viewed as 50,000 x 50,000."""
    src = torchscript(tmp_path / "ViT-B-16.pt", torch.zeros(1).expand(50_000, 50_000))
    convert_fails(src, tmp_path / "out.safetensors", "ViT-B-16/data/0",
                  "50000 x 50000 view with strides (0, 0)", "overlap")  # fmt: skip


def test_tensors_that_share_their_bytes_many_times_over_are_refused(tmp_path) -> None:
    """1,000 entries viewing one 4 MB storage: a 34 MB file that copies out to 4 GB."""
    src = tmp_path / "shared.pt"
    shared = torch.zeros(1 << 20)
    torch.save({**clip_state(), **{f"visual.copy{i}": shared for i in range(1000)}}, src)
    convert_fails(src, tmp_path / "out.safetensors", "its tensors (up to visual.copy",
                  "more than twice the file's")  # fmt: skip


def write_zip(path: Path, entries: list[tuple[str, bytes, int, int, int]]) -> None:
    """A zip archive of ``(name, payload, method, crc, size)`` entries, each payload written as
    given: how a crafted archive carries a deflate stream that zipfile would not write itself."""
    body, central = bytearray(), bytearray()
    for name, payload, method, crc, size in entries:
        encoded, sizes = name.encode(), (crc, len(payload), size, len(name.encode()))
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21,
                               *sizes, 0, 0, 0, 0, 0, len(body)) + encoded  # fmt: skip
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, *sizes, 0)
        body += encoded + payload
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(central),
                      len(body), 0)  # fmt: skip
    path.write_bytes(bytes(body + central + end))


@pytest.fixture(scope="session")
def deflated_zeros() -> tuple[bytes, int, int]:
    """A raw deflate stream of 3 GiB of zeros (3 MB: one 64 MiB block repeated), its CRC and
    its inflated size."""
    block, count = 1 << 26, 48
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = packer.compress(bytes(block)) + packer.flush(zlib.Z_FULL_FLUSH)  # stands alone
    crc, zeros = 0, bytes(block)
    for _ in range(count):
        crc = zlib.crc32(zeros, crc)
    return chunk * count + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc, block * count


@pytest.mark.parametrize("container", ["torchscript", "torch"])
def test_a_zip_entry_that_inflates_to_3_gib_is_refused_before_reading(
    tmp_path, deflated_zeros, container
) -> None:
    """A real archive (torch.jit.save or torch.save) whose storage entry data/0 is a 3 MB
    deflate stream that inflates to 3 GiB, CRC and sizes all valid."""
    original = tmp_path / "original.pt"
    if container == "torchscript":
        torchscript(original, torch.zeros(4))
    else:
        torch.save({"visual.proj": torch.zeros(4)}, original)
    stream, crc, size = deflated_zeros
    entries = []
    with zipfile.ZipFile(original) as archive:
        for info in archive.infolist():
            if info.filename.endswith("/data/0"):
                entries.append((info.filename, stream, zipfile.ZIP_DEFLATED, crc, size))
            else:
                payload = archive.read(info)
                entries.append((info.filename, payload, zipfile.ZIP_STORED, info.CRC, len(payload)))
    src = tmp_path / "ViT-B-16.pt"
    write_zip(src, entries)
    assert src.stat().st_size < 4_000_000
    with zipfile.ZipFile(src) as archive:  # a valid archive, as zipfile reads it
        assert archive.getinfo(entries[0][0]).file_size == entries[0][4]
    convert_fails(src, tmp_path / "out.safetensors", "/data/0 unpacks to 3,221,225,472 bytes",
                  "refused before reading")  # fmt: skip


def test_a_huge_code_file_in_a_torchscript_archive_is_not_parsed(tmp_path, caplog) -> None:
    """12 MB of Python in code/: its syntax tree would take about 5 GB."""
    src = torchscript(tmp_path / "ViT-B-16.pt", torch.zeros(4))
    with zipfile.ZipFile(src, "a") as archive:
        archive.writestr("ViT-B-16/code/__torch__/bomb.py", "x = 1\n" * 2_000_000)
    with memory_cap(), pytest.raises(WeightsError, match="does not hold CLIP ViT weights"):
        read_state_dict(src)
    assert "left out ViT-B-16/code/__torch__/bomb.py, larger than any class's code" in caplog.text


@pytest.mark.parametrize(
    ("shape", "stride", "offset", "storage", "problem"),
    [
        ((4, 3), (3, 1), 0, 12, None),  # contiguous
        ((3, 4), (1, 3), 0, 12, None),  # transposed
        ((4, 2), (3, 1), 1, 12, None),  # a slice of columns
        ((1, 77), (0, 1), 0, 77, None),  # stride 0 on a dimension of one: nothing repeats
        ((0, 5), (0, 0), 0, 0, None),  # empty
        ((), (), 3, 4, None),  # a scalar inside its storage
        ((50_000, 50_000), (0, 0), 0, 1, "overlap"),  # expanded
        ((2, 2), (1, 1), 0, 4, "overlap"),  # a sliding window
        ((4, 3), (3, 1), 1, 12, "past the 12 elements"),
        ((4, 3), (1, 1000), 0, 12, "past the 12 elements"),
        ((3,), (-1,), 2, 3, "which no tensor has"),
    ],
)
def test_a_view_is_a_weight_only_when_its_elements_are_distinct_and_stored(
    shape, stride, offset, storage, problem
) -> None:
    found = view_problem(shape, stride, offset, storage)
    assert found is None if problem is None else problem in str(found)


# --- 2. malformed weights: one line, not a traceback -------------------------------------------


def write_state(**changes: Tensor) -> Callable[[Path], None]:
    return lambda path: torch.save({**clip_state(), **changes}, path)


def write_released(**changes: Tensor) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        square = dict(tiny_clip(image_size=(96, 32)).state_dict())  # a 12 x 4 grid, as released
        released_checkpoint(path, {**square, **changes})

    return write


MALFORMED = {
    "one byte": (lambda path: path.write_bytes(b"\x80"), ("cannot be read as a torch file",)),
    "1-D text_projection": (
        write_state(text_projection=torch.zeros(128)),
        ("its entry text_projection has shape (128)", "not the 2-D"),
    ),
    "empty position embedding": (
        write_state(**{"visual.positional_embedding": torch.zeros(0, 128)}),
        ("its entry visual.positional_embedding has shape (0, 128)",),
    ),
    "empty text context": (
        write_state(positional_embedding=torch.zeros(0, 128)),
        ("its entry positional_embedding has shape (0, 128)",),
    ),
    "released, zero patches": (
        write_released(**{"visual.positional_embedding": torch.zeros(1, 128)}),
        (
            "its entry base_model.visual.positional_embedding has shape (1, 128)",
            "no patch positions",
        ),
    ),
    "released, 4-token context": (
        write_released(positional_embedding=torch.zeros(4, 128)),
        ("context_length 4", "cannot build"),
    ),
    "non-finite weights": (
        write_state(text_projection=torch.full((128, 128), float("nan"))),
        ("its entry text_projection holds NaN or Inf",),
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_weights_end_in_one_line_naming_the_entry(tmp_path, case) -> None:
    write, says = MALFORMED[case]
    src = tmp_path / "best.pth"
    write(src)
    output = convert_fails(src, tmp_path / "out", *says)
    assert len(output.strip().splitlines()) == 1, output
    if case != "released, 4-token context":  # a fine file, for a model uit does not build
        with pytest.raises(WeightsError, match=re.escape(says[0])):
            read_state_dict(src)


def damaged(data: bytes, rng: random.Random) -> Iterator[bytes]:
    """Cut short at 40 places, and with 1 to 4 bytes overwritten 60 times."""
    for end in range(1, len(data), max(1, len(data) // 40)):
        yield data[:end]
    for _ in range(60):
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            flipped[rng.randrange(len(flipped))] = rng.randrange(256)
        yield bytes(flipped)


@pytest.mark.parametrize("container", ["torch-zip", "torch-legacy", "torchscript"])
def test_a_damaged_file_is_always_a_weights_error(tmp_path, container) -> None:
    """torch.load, zipfile and pickle raise nearly any built-in error for damaged bytes; each
    one becomes a WeightsError naming the file."""
    original = tmp_path / "original.pt"
    state = {"visual.proj": torch.randn(8, 4), "ln_final.weight": torch.ones(3)}
    if container == "torchscript":
        torchscript(original, torch.randn(8, 4))
    else:
        torch.save(state, original, _use_new_zipfile_serialization=container == "torch-zip")
    path = tmp_path / "damaged.pt"
    for data in damaged(original.read_bytes(), random.Random(0)):
        path.write_bytes(data)
        with pytest.raises(WeightsError) as error:
            read_state_dict(path)
        assert str(error.value).startswith(str(path)), str(error.value)
        assert "\n" not in str(error.value)


# --- 3. a released checkpoint whose grid is not read from its weights --------------------------


def test_a_2_to_1_grid_is_told_the_options_that_set_the_image_size(tmp_path) -> None:
    best, out = tmp_path / "best.pth", tmp_path / "export"
    released_checkpoint(best, dict(tiny_clip(image_size=(64, 32), quick_gelu=True).state_dict()))
    output = convert_fails(best, out, "32 patch positions (patch 8)", "64x32, 128x16",
                           "--image-height 64 --image-width 32")  # fmt: skip
    assert "give the (height, width)" not in output  # an option the command did not have
    fails("weights", "convert", best, out, "--model", "uit-tiny", "--image-height", "64",
          says=("--image-height and --image-width go together",))  # fmt: skip
    square = ("--image-height", "32", "--image-width", "32")
    fails("weights", "convert", best, out, "--model", "uit-tiny", *square,
          says=("does not give the 32 patch positions", "64x32"))  # fmt: skip

    args = ["weights", "convert", str(best), str(out), "--model", "uit-tiny",
            "--image-height", "64", "--image-width", "32"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    _, cfg = load_encoder(out)
    assert (cfg.image_height, cfg.image_width) == (64, 32)


def test_the_image_size_options_are_refused_for_pretrained_weights(tmp_path) -> None:
    src = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(clip_state(), src)
    fails("weights", "convert", src, tmp_path / "out.safetensors", "--image-height", "64",
          "--image-width", "32", says=("are for a released best.pth", str(src)))  # fmt: skip
    assert not (tmp_path / "out.safetensors").exists()


# --- 4. a checkpoint with non-finite weights ---------------------------------------------------


@pytest.fixture
def nan_checkpoint(trained, tmp_path) -> tuple[Path, str]:
    copy = tmp_path / "best"
    shutil.copytree(trained["best"], copy)
    weights = load_file(str(copy / "weights.safetensors"))
    key = next(k for k in weights if k.endswith("visual.proj"))
    weights[key] = torch.full_like(weights[key], float("nan"))
    save_file(weights, str(copy / "weights.safetensors"))
    return copy, key


@pytest.mark.parametrize("command", ["search", "evaluate", "export"])
def test_non_finite_weights_are_named_not_called_a_bug(
    trained, nan_checkpoint, tmp_path, command
) -> None:
    checkpoint, key = nan_checkpoint
    args = {"search": ("search", checkpoint, "a man", "--gallery", trained["gallery"],
                       "--cache-dir", tmp_path / "cache"),
            "evaluate": ("evaluate", checkpoint, trained["prepared"], "--out", tmp_path / "e"),
            "export": ("export", checkpoint, tmp_path / "export")}[command]  # fmt: skip
    output = fails(*args, says=(str(checkpoint / "weights.safetensors"), f"its tensor {key}",
                                "non-finite weights", "earlier checkpoint", "retrain"))  # fmt: skip
    assert "this is a bug" not in output

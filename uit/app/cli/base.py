"""The command line's frame: the typer app and its groups, help pages that read like click's,
the error boundary every command runs behind, and the helpers the commands share.

Every command goes through one error boundary (``uit.core.boundary``): bad input of any kind (a
``UitError``, a damaged file, a bad path) becomes a one-paragraph message and exit code 1, Ctrl-C
exit code 130; only a bug shows a traceback, behind a line that says it is one.

Help pages read like click's: arguments in capitals (CHECKPOINT), values by kind (PATH, INTEGER,
TEXT, a|b), switches without a value, and every default shown (``UitCommand``).
"""

from __future__ import annotations

import functools
import io
import shutil
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args

import click
import typer
from pydantic import BaseModel
from rich.table import Table
from typer._click.core import Context  # the click that typer runs on (vendored)
from typer._click.formatting import HelpFormatter
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from uit.core.boundary import report_failure
from uit.core.config import BENCHMARKS, check_index_choice
from uit.core.console import console
from uit.core.errors import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
ONE_OF = f"one of {', '.join(BENCHMARKS)}"  # the names, for the help of --benchmark


def benchmark_option(what: str, default: str | None = None) -> Any:
    """``--benchmark/-b``, shaped the same in every command: one of the registry's names,
    repeatable where ``default`` says what none means."""
    repeat = " (repeatable)" if default is not None else ""
    return typer.Option("--benchmark", "-b", metavar="BENCHMARK", show_default=default or False,
                        help=f"{what}: {ONE_OF}{repeat}.")  # fmt: skip


def index_choice(value: str) -> str:
    """``--index``'s check: an index kind, or milvus://HOST:PORT (a usage error otherwise)."""
    try:
        return check_index_choice(value)
    except ConfigError as error:
        raise typer.BadParameter(str(error).removeprefix(f"--index {value!r} ")) from None


def default(section: type[BaseModel], key: str) -> Any:
    """The library's default of a config section's ``key``: what an option shows and takes
    when it is not given, stated once, in ``uit.core.config``."""
    return section.model_fields[key].default


TYPE_NAMES = {int: "INTEGER", float: "FLOAT", str: "TEXT", Path: "PATH"}


def _type_name(param: TyperArgument | TyperOption) -> str:
    """A value's kind as click writes it: PATH, INTEGER, TEXT, or the choices ``[a|b]``."""
    descriptor = param.type_descriptor
    if descriptor.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in descriptor.choices or ()) + "]"
    if descriptor.is_path:
        return "PATH"
    kind = get_args(descriptor.annotation)[0] if descriptor.is_list else descriptor.annotation
    return TYPE_NAMES.get(kind, "TEXT")


class _Argument(TyperArgument):
    """An argument shown as click shows one: ``CHECKPOINT`` (``[OUT]`` when optional)."""

    def display_type_rich(self, ctx: Any) -> str:
        return _type_name(self)

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]


def _readable(params: list[Any]) -> list[Any]:
    """Give ``params`` the labels click would. This typer labels a value by its annotation
    (``<bool>``, ``<list[str]>``, ``{checkpoint}``) unless it has a metavar, and it builds the
    parameters itself (no class to pass), so every command and group sets them here."""
    for param in params:
        if isinstance(param, TyperArgument) and not isinstance(param, _Argument):
            param.__class__ = _Argument
            param.metavar = param.metavar or (param.name or "").upper()
        elif isinstance(param, TyperOption) and param.metavar is None:
            param.metavar = "" if param.is_flag else _type_name(param)
    return params


RICH_HELP_COLUMNS = 100  # narrower terminals get click's plain help: rich's boxes cut names
_KEEP = "\u2011"  # a non-breaking hyphen: what a hyphen is while click wraps the help


class _HelpFormatter(HelpFormatter):
    """click's help layout, except that a line never breaks at a hyphen: ``icfg-pedes`` and
    ``--no-drop-missing`` stay whole, so they can be read and copied."""

    def write_dl(self, rows: Any, col_max: int = 30, col_spacing: int = 2) -> None:
        start = len(self.buffer)
        super().write_dl([(term, text.replace("-", _KEEP)) for term, text in rows],
                         col_max, col_spacing)  # fmt: skip
        self.buffer[start:] = [piece.replace(_KEEP, "-") for piece in self.buffer[start:]]

    def write_text(self, text: str) -> None:
        start = len(self.buffer)
        super().write_text(text.replace("-", _KEEP))
        self.buffer[start:] = [piece.replace(_KEEP, "-") for piece in self.buffer[start:]]


class _Context(Context):
    formatter_class = _HelpFormatter


def _plain_help(command: TyperCommand | TyperGroup) -> None:
    """Help text without the reStructuredText markup of the docstring it comes from."""
    if command.help:
        command.help = command.help.replace("``", "'")


def _format_help(command: Any, ctx: Any, formatter: Any, rich_help: Callable[..., None]) -> None:
    """Rich's boxed help on a wide terminal; click's plain layout (whole option names, help
    wrapped beside them) where a box would cut names and squeeze the help into a sliver."""
    if shutil.get_terminal_size(fallback=(80, 24)).columns >= RICH_HELP_COLUMNS:
        return rich_help(ctx, formatter)
    mode, command.rich_markup_mode = command.rich_markup_mode, None
    try:
        return rich_help(ctx, formatter)  # typer falls back to click's formatter
    finally:
        command.rich_markup_mode = mode


class _ReadableHelp:
    """What a command and a group of ``uit`` share: plain help text, click's labels, and the
    layout that suits the terminal's width (mixed in before typer's class)."""

    context_class: type[Context] = _Context

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)  # type: ignore[arg-type]

    def get_params(self, ctx: Any) -> list[Any]:
        return _readable(super().get_params(ctx))  # type: ignore[misc]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _format_help(self, ctx, formatter, super().format_help)  # type: ignore[misc]


class UitCommand(_ReadableHelp, TyperCommand):
    pass


class UitGroup(_ReadableHelp, TyperGroup):
    pass


class UitTyper(typer.Typer):
    """A typer app of ``UitCommand``s whose help reads well (see ``_readable``)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cls=UitGroup, **kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[F], F]:
        kwargs.setdefault("cls", UitCommand)
        return super().command(*args, **kwargs)


app = UitTyper(help="Text-to-image person retrieval with UIT.", no_args_is_help=True)
data_app = UitTyper(help="Prepare and inspect benchmarks.", no_args_is_help=True)
app.add_typer(data_app, name="data")
weights_app = UitTyper(help="Pretrained and released weights files.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("uit")
        except PackageNotFoundError:  # a checkout on PYTHONPATH, not installed
            from uit import __version__ as number
        console.print(f"uit {number}")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_print_version, is_eager=True,
                     help="Print the version of uit and exit."),
    ] = False,
) -> None:  # fmt: skip
    """Text-to-image person retrieval with UIT."""


def friendly_errors(command: F) -> F:
    """Run ``command`` behind the error boundary: a message and an exit code, not a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, click.exceptions.ClickException, click.exceptions.Abort, SystemExit):
            raise
        except BaseException as error:  # the boundary: every failure ends here
            raise typer.Exit(report_failure(error)) from None

    return wrapper  # type: ignore[return-value]


IMAGES = (".png", ".jpg", ".jpeg", ".webp")  # what a picture output may be; its name says which


def image_bytes(image: Any, out: Path) -> bytes:
    """``image`` (PIL) encoded in the format ``out``'s name ends in (one of ``IMAGES``)."""
    buffer = io.BytesIO()
    kind = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}[out.suffix.lower()]
    options = {"optimize": True} if kind == "PNG" else {"quality": 90}
    image.convert("RGB").save(buffer, format=kind, **options)
    return buffer.getvalue()


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    return table

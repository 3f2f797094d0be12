"""Profiles: named sets of ``params.yaml`` values (``profiles/demo.yaml``, ``profiles/paper.yaml``)
applied in place, keeping the file's comments and every key a profile does not name.

Only the keys whose value changes are rewritten, so a file in any valid layout (the committed one,
or the one ``dvc exp run -S`` writes back, with block lists) keeps that layout elsewhere. The text
about to be written is read back with the plain loader every other reader uses and checked against
the intended values before the file is replaced; if it does not match, nothing is written.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from uit.core.config import Config, parse_config, parse_yaml, read_params_text, yaml_error_line
from uit.core.errors import ConfigError, DataError
from uit.core.io import atomic_write_text
from uit.raw.formats import SPECS

_ABSENT = object()  # a key the params file does not hold


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments and key order survive
    yaml.preserve_quotes = True
    yaml.width = 100
    return yaml


def read_profile(path: Path) -> dict[str, Any]:
    """A profile's values by dotted key (``train.epochs``), as the plain loader reads them."""
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(f"{path}: no such profile (known: {', '.join(known) or 'none'})")
    return _dotted(_sections(parse_yaml(read_params_text(path), path), path))


def _sections(raw: Any, path: Path) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise ConfigError(
            f"{path}: expected sections of keys (data:, train:, ...) at the top level"
        )
    return raw


def _dotted(sections: Mapping[str, Any]) -> dict[str, Any]:
    return {f"{s}.{k}": v for s, values in sections.items() for k, v in (values or {}).items()}


def apply_profile(
    params: str | Path, profile: str | Path, overrides: Mapping[str, Any] = {}
) -> list[str]:
    """Write ``profile``'s values (then ``overrides``, dotted keys) into ``params``. The text is
    read back and checked before the file is replaced; the file is not touched when nothing
    changes. Returns the dotted keys whose value changed.

    A ``data.root`` override for real data must name an existing folder."""
    params, profile = Path(params), Path(profile)
    text = read_params_text(params)
    before = dict(_sections(_settings(text, params), params))
    parse_config(before, source=str(params))
    values = {**read_profile(profile), **overrides}
    changed = [key for key, value in values.items() if _get(before, key) != value]
    wanted = _with(before, {key: values[key] for key in changed})
    config = parse_config(wanted, source=f"{params} with profile {profile}")
    if "data.root" in overrides and config.data.source == "real":
        _require_folder(params.parent / config.data.root)
    if not changed:
        return []
    written = {**_dotted(_round_trip(profile.read_text(encoding="utf-8"), profile) or {}),
               **overrides}  # fmt: skip
    rendered = _render(_edited(text, params, {key: written[key] for key in changed}))
    _check(rendered, wanted, params)
    target = params.resolve()  # a symlinked params file: its target is rewritten, the link kept
    atomic_write_text(target, rendered.replace("\n", _line_ending(target)))
    return changed


def _settings(text: str, params: Path) -> Any:
    """The values of the params file ``params``, refused when it holds none: a profile names
    only some keys, and DVC needs the others."""
    values = parse_yaml(text, params)
    if values is None:
        raise ConfigError(
            f"{params} holds no settings (it is empty or only comments): restore it with "
            f"`git checkout -- {params}`, then apply the profile"
        )
    return values


def _line_ending(path: Path) -> str:
    """The line ending of ``path``'s first line: a file saved on Windows keeps its CRLF."""
    with path.open(encoding="utf-8") as handle:
        handle.readline()
        return handle.newlines if isinstance(handle.newlines, str) else "\n"


def _get(sections: Mapping[str, Any], dotted: str) -> Any:
    section, _, key = dotted.partition(".")
    return (sections.get(section) or {}).get(key, _ABSENT)


def _with(sections: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(sections)
    for dotted, value in values.items():
        section, _, key = dotted.partition(".")
        result[section] = {**(result.get(section) or {}), key: value}
    return result


def _edited(text: str, params: Path, changed: Mapping[str, Any]) -> Any:
    """The round-trip document of ``text`` with the ``changed`` keys set; their values come from
    the profile's round-trip reading, so each keeps its text form (``3.0e-4`` stays ``3.0e-4``)."""
    document = _round_trip(text, params)
    for dotted, value in changed.items():
        section, _, key = dotted.partition(".")
        if section not in document:
            document[section] = CommentedMap()
        _set(document[section], key, value)
    return document


def _round_trip(text: str, path: Path) -> Any:
    try:
        return _yaml().load(text)
    except YAMLError as error:  # what the plain loader accepts but ruamel does not (a key twice)
        raise ConfigError(yaml_error_line(path, error, text)) from None


def _set(mapping: CommentedMap, key: str, value: Any) -> None:
    """Set ``mapping[key]``, keeping the key's end-of-line comment where it belongs.

    A list becomes a fresh sequence (the profile's own comments stay in the profile), in block
    style where the file wrote the old list that way and it still has items, else in flow style.
    ruamel files a comment after ``key:`` whose value is a block collection (as DVC writes lists)
    with a slot for comment lines above the first item; left on a value that is not a block
    collection, that slot makes ruamel drop the line break after the comment, so two keys end up
    on one line (``seed: 0 size: tiny``). The slot is cleared for such a value."""
    old = mapping.get(key)
    if isinstance(value, list):
        block = isinstance(old, CommentedSeq) and old.fa.flow_style() is False and bool(value)
        value = CommentedSeq(value)
        if block:
            value.fa.set_block_style()
        else:
            value.fa.set_flow_style()
    mapping[key] = value
    comment = mapping.ca.items.get(key)
    is_block = isinstance(value, CommentedSeq) and value.fa.flow_style() is False
    if comment is not None and len(comment) > 3 and not is_block:
        comment[3] = None


def _render(document: Any) -> str:
    buffer = io.StringIO()
    _yaml().dump(document, buffer)
    return buffer.getvalue()


def _check(rendered: str, wanted: Mapping[str, Any], params: Path) -> None:
    """Refuse to write ``rendered`` unless it reads back, with the plain loader and as a config,
    as exactly the ``wanted`` values."""
    refused = f"{params} left as it was: the rewritten text would"
    report = "please report this to the uit maintainers with the file attached"
    try:
        got = parse_yaml(rendered, params)
        parse_config(got if isinstance(got, Mapping) else {}, source=str(params))
    except ConfigError as error:
        first = str(error).splitlines()[0]
        raise ConfigError(f"{refused} not read back ({first}); {report}") from None
    if got != wanted:
        keys = _differing(got if isinstance(got, Mapping) else {}, wanted)
        raise ConfigError(f"{refused} read back with other values ({', '.join(keys)}); {report}")


def _differing(got: Mapping[str, Any], wanted: Mapping[str, Any]) -> list[str]:
    sections = sorted(set(got) | set(wanted))
    flat_got, flat_wanted = _dotted(_maps(got, sections)), _dotted(_maps(wanted, sections))
    keys = set(flat_got) | set(flat_wanted)
    return sorted(k for k in keys if flat_got.get(k, _ABSENT) != flat_wanted.get(k, _ABSENT))


def _maps(sections: Mapping[str, Any], names: list[str]) -> dict[str, Mapping[str, Any]]:
    found = {name: sections.get(name, {}) for name in names}
    return {name: v if isinstance(v, Mapping) else {"(section)": v} for name, v in found.items()}


def _require_folder(root: Path) -> None:
    if not root.is_dir():
        where = " ".join(spec.missing(root) for spec in SPECS.values())
        raise DataError(
            f"--data-root {root}: no such folder. The real benchmarks go in it, one folder "
            f"each: {where} Then give that folder as --data-root."
        )


def missing_benchmarks(config: Config, project: Path) -> list[str]:
    """What is missing of real data: one message (where the folder goes, how to obtain it) per
    benchmark of ``data.benchmarks`` not under ``data.root`` (relative to ``project``). None for
    synthetic data, which the pipeline draws."""
    if config.data.source != "real":
        return []
    root = project / config.data.root
    specs = [SPECS[name] for name in config.data.benchmarks]
    return [spec.missing(root) for spec in specs if not spec.dataset_dir(root).is_dir()]

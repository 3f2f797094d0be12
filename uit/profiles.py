"""Profiles: named sets of ``params.yaml`` values (``profiles/demo.yaml``, ``profiles/paper.yaml``)
applied in place, keeping the file's comments and every key a profile does not name."""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from uit.config import parse_config
from uit.errors import ConfigError
from uit.io import atomic_write_text


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments and key order survive
    yaml.preserve_quotes = True
    yaml.width = 100
    return yaml


def read_profile(path: Path) -> dict[str, Any]:
    try:
        profile = _yaml().load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise ConfigError(
            f"{path}: no such profile (known: {', '.join(known) or 'none'})"
        ) from None
    except YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from None
    if not isinstance(profile, Mapping):
        raise ConfigError(f"{path}: expected sections of keys at the top level")
    return dict(profile)


def _merge(target: Any, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if isinstance(value, Mapping):
            if key not in target:
                target[key] = {}
            _merge(target[key], value)
        else:
            target[key] = value


def apply_profile(
    params: str | Path, profile: str | Path, overrides: Mapping[str, Any] = {}
) -> list[str]:
    """Write ``profile``'s values (then ``overrides``, dotted keys) into ``params``; the result is
    validated before the file is replaced. Returns the dotted keys whose value changed."""
    params, yaml = Path(params), _yaml()
    document = yaml.load(params.read_text(encoding="utf-8"))
    before = parse_config(document, source=str(params)).model_dump()
    values = read_profile(Path(profile))
    _merge(document, values)
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        _merge(document, {section: {key: value}})
    after = parse_config(document, source=f"{params} with profile {profile}").model_dump()
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    atomic_write_text(params, buffer.getvalue())
    return [f"{s}.{k}" for s in after for k in after[s] if after[s][k] != before[s][k]]

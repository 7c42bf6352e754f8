"""Where a run config comes from: a preset or a JSON/TOML file, then ``--key=value`` overrides.

Overrides are checked against the config's schema (``training.config``) key by key, so a typo
is refused with the keys that are allowed, before any data is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from model.config import ConfigError

from .config import SECTION_TYPES, SECTIONS, RunConfig, build_run_config


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _toml() -> Any:
    try:
        import tomllib  # Python >= 3.11
    except ImportError as exc:
        raise ConfigError("TOML config files need Python 3.11 or later; use a .json file") from exc
    return tomllib


def load_source(name_or_path: str) -> dict[str, Any]:
    """A preset by name, or a .json/.toml file."""
    from .presets import PRESETS

    if name_or_path in PRESETS:
        return copy.deepcopy(PRESETS[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"--config {name_or_path}: neither a preset ({', '.join(PRESETS)}) nor an existing file")
    try:
        if path.suffix == ".toml":
            data: Any = _toml().loads(path.read_text())
        elif path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            raise ConfigError(f"--config {path}: a config file must end in .json or .toml")
    except (json.JSONDecodeError, ValueError) as exc:  # tomllib.TOMLDecodeError is a ValueError
        raise ConfigError(f"--config {path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    _require(isinstance(data, dict), f"--config {path}: the top level must be a mapping of sections")
    return data


def parse_value(text: str) -> Any:
    """A command-line value: JSON (numbers, true/false/null, lists, strings), "none", or a
    comma-separated list ("1,2,2"); anything else is the string itself."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        return [parse_value(part) for part in text.split(",") if part.strip()]
    return text


def parse_overrides(args: Sequence[str]) -> list[tuple[str, Any]]:
    """``--a.b=value`` (or ``--a.b value``) pairs, in order."""
    pairs: list[tuple[str, Any]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        _require(arg.startswith("--") and len(arg) > 2,
                 f"unexpected argument {arg!r}; overrides look like --train.lr=2e-4")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            _require(i + 1 < len(args) and not args[i + 1].startswith("--"), f"--{key} needs a value (--{key}=VALUE)")
            value = args[i + 1]
            i += 1
        _require("." in key, f"--{key}: an override names a section and a key, e.g. --train.{key}")
        pairs.append((key, parse_value(value)))
        i += 1
    return pairs


def apply_overrides(raw: dict[str, Any], overrides: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Set dotted keys in a copy of ``raw``; a key that does not exist in the schema is refused."""
    out = copy.deepcopy(raw)
    for key, value in overrides:
        parts = key.split(".")
        _require(parts[0] in SECTIONS, f"--{key}: unknown section {parts[0]!r}; allowed: {', '.join(SECTIONS)}")
        for i in range(1, len(parts)):
            parent = ".".join(parts[:i])
            if parent == "model.provenance":  # free-form
                break
            cls = SECTION_TYPES.get(parent)
            _require(cls is not None, f"--{key}: {parent} is a value, not a section")
            assert cls is not None
            names = [f.name for f in dataclasses.fields(cls)]
            _require(parts[i] in names, f"--{key}: unknown key {parent}.{parts[i]}; "
                     f"allowed: {', '.join(f'{parent}.{n}' for n in names)}")
        _require(key not in SECTION_TYPES, f"--{key}: {key} is a section; set one of its keys")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            _require(isinstance(child, dict), f"--{key}: {'.'.join(parts[: i + 1])} is not a section in the config")
            node = child
        node[parts[-1]] = value
    return out


def merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of nested mappings; ``update`` wins."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_run_config(source: str | Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig:
    """Preset name, file path or mapping, plus command-line overrides."""
    raw = load_source(source) if isinstance(source, str) else copy.deepcopy(dict(source))
    return build_run_config(apply_overrides(raw, parse_overrides(overrides)))

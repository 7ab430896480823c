"""Typed YAML configs: dataclasses that validate themselves, loaded with ``key=value`` overrides.

Every entry point (``python -m train``, ``python -m eval``) reads its config through
``load_config``: unknown keys, wrong types and non-finite numbers (``.nan``, ``inf``) fail at
start with the key's full dotted name, YAML that is not plain data (a ``!!python/object`` tag)
with the file and line, and each dataclass's ``__post_init__`` checks values and says what to
change. Each field's
``metadata["help"]`` says what it does; ``--help`` lists every key with it (``keys_help``).
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import textwrap
import types
import typing
from pathlib import Path

import yaml


class ConfigError(ValueError):
    pass


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    """Build ``cls`` from a YAML file, then apply ``a.b.c=value`` overrides (YAML-typed values)."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        raw = _read_yaml(path.read_text(), str(path)) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.lr=1e-4)")
        _set_dotted(raw, key.strip(), _read_yaml(value, f"override {item!r}", in_file=False))
    where = f" in {path}" if path else ""
    try:
        return from_dict(cls, raw)
    except ConfigError as e:
        raise ConfigError(f"{e}{where}") from None


def _read_yaml(text: str, where: str, in_file: bool = True):
    """``yaml.safe_load``, its errors in one line naming ``where`` (and the line, ``in_file``):
    a config is plain data, so a tag that would build an object (``!!python/object:...``) is
    refused."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f", line {mark.line + 1}" if mark is not None and in_file else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        hint = ("; a config holds plain YAML only (mappings, lists, strings, numbers, true/false, "
                "null): remove the tag" if isinstance(e, yaml.constructor.ConstructorError) else "")
        raise ConfigError(f"{where}{line}: {problem}{hint}") from None


def from_dict(cls, data, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        name = prefix + unknown[0]
        raise ConfigError(f"unknown config key '{name}' (known keys at this level: "
                          f"{', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # a section's own check; its message names the key
        raise ConfigError(str(e)) from None


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def _convert(hint, value, key: str):
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _convert(option, value, key)
            except ConfigError as e:
                errors.append(e)
        raise errors[0] if len(errors) == 1 else ConfigError(
            f"config key '{key}': {value!r} matches none of {_name(hint)}")
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, key + ".")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' expects a list, got {value!r}")
        (item,) = typing.get_args(hint) or (typing.Any,)
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' expects a mapping, got {value!r}")
        return _finite(value, key)
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ConfigError(f"config key '{key}' must be one of {list(typing.get_args(hint))}, "
                              f"got {value!r}")
        return value
    if hint is typing.Any:
        return _finite(value, key)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            value = float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}' expects {_name(hint)}, got {value!r} "
                          f"({type(value).__name__})")
    return _finite(value, key)


def _finite(value, key: str):
    """``value``, unless a float in it (at any depth of a mapping or list) is NaN or infinite:
    no config number means that, and one such (an lr of .nan) would only show up as NaN
    losses much later."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"config key '{key}' must be a finite number, got {value!r}")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite(v, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite(v, f"{key}[{i}]")
    return value


def _name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def config_keys(cls, prefix: str = ""):
    """Yield (dotted name, type hint, field, depth) for every key of ``cls``, each section
    followed by its own keys, so that one walk serves both ``--help`` and the test that every
    key is documented. A list of sections (``data.sources``) shows its item's keys as
    ``data.sources[].path``."""
    hints = typing.get_type_hints(cls)
    depth = prefix.count(".")
    for f in dataclasses.fields(cls):
        name, hint = prefix + f.name, hints[f.name]
        yield name, hint, f, depth
        section = _section(hint)
        if section is not None:
            is_list = typing.get_origin(hint) is list
            yield from config_keys(section, name + ("[]." if is_list else "."))


def keys_help(cls, width: int | None = None) -> str:
    """Every key of ``cls`` as ``name (type, default ...): help``, indented under its section:
    the reference a user needs to write a config or an override, taken from the dataclasses
    themselves so that it cannot drift from what the loader accepts."""
    width = width or max(60, min(110, shutil.get_terminal_size().columns - 2))
    lines = []
    for name, hint, f, depth in config_keys(cls):
        indent = "  " * (depth + 1)
        what = f.metadata.get("help", "")
        if _section(hint) is not None:
            kind = "list of sections" if typing.get_origin(hint) is list else "section"
            text = f"{name} ({kind}): {what}"
        else:
            text = f"{name} ({_type_name(hint)}, default {_default(f)}): {what}"
        # The head wraps like the text (a long choice list must not split the first word).
        lines += textwrap.wrap(text, width, initial_indent=indent,
                               subsequent_indent=indent + "    ",
                               break_long_words=False, break_on_hyphens=False)
    return "\n".join(lines)


def _section(hint):
    """The dataclass a key's value is built from (itself, or a list's item), else None."""
    if typing.get_origin(hint) is list:
        hint = (typing.get_args(hint) or (None,))[0]
    return hint if dataclasses.is_dataclass(hint) else None


def _type_name(hint) -> str:
    """A hint as a config author reads it: ``int | null``, ``{sdpa, eager}``, ``list[str]``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is typing.Literal:
        return "{" + ", ".join(map(str, args)) + "}"
    if origin in (list, dict) and args:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if hint is type(None):
        return "null"
    return "any" if hint is typing.Any else _name(hint)


def _default(f: dataclasses.Field) -> str:
    """The field's default written as YAML, the way it would be set in a config or override."""
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        value = f.default
    else:
        return "required"
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("...").strip()


def _set_dotted(raw: dict, key: str, value) -> None:
    node = raw
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{key}': '{part}' is not a section")
        node = child
    node[leaf] = value


def config_main(prog: str, description: str, config_cls, run, argv: list[str] | None = None) -> int:
    """The shared ``python -m <stage> CONFIG.yaml [key=value ...]`` command line.

    Exit codes: 0 done, 2 bad config (nothing loaded yet), 3 bad data. ``run`` is called with
    the loaded config; ``--local_rank`` (appended by the deepspeed launcher) is accepted.
    """
    import argparse
    import sys

    from data.samples import DataError

    # The keys go in the epilog, laid out by keys_help (argparse would re-wrap them).
    epilog = ("config keys (set them in CONFIG.yaml, or override as key=value):\n"
              + keys_help(config_cls))
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*",
                        help="dotted key=value overrides of the config keys listed below")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except DataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 3
    return 0

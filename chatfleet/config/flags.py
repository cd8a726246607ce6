"""Every config dataclass's fields as named settings: command-line flags, YAML keys, argv.

One table per config class, read from its fields (vLLM's EngineArgs idea): a field is a
setting named after it (unit suffix `_s` dropped: `request_timeout_s` is `--request-timeout`),
nested config dataclasses are flattened into their parent's settings, and a field's metadata
(`setting(...)`) renames it, documents it, gives a parser, or hides it. So the flags of
`chatfleet serve`, the `replica:` mapping of a Ray deploy.yaml and the argv the replica
supervisor starts `chatfleet serve` with are all the same table, and no caller re-parses
another's shell strings.

    add_flags(parser, EngineConfig)           --model, --kv-cache-memory, ...
    from_args(EngineConfig, namespace)        the config the flags describe
    from_mapping(EngineConfig, {"kv_cache_memory": "1GiB"})
    to_argv(config)                           ["--kv-cache-memory", "1GiB", ...] (non-defaults)
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMG]i?B?|B)?$", re.IGNORECASE)
_COUNT = re.compile(r"^(\d+(?:\.\d+)?)\s*([kKmMbB]?)$")
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class ConfigError(ValueError):
    """A setting's value is invalid; the command line exits 2 with this message."""


def parse_bytes(text: str) -> int:
    """'4GiB', '512MiB', '4096B', '4' (GiB, like vLLM's VLLM_CPU_KVCACHE_SPACE) -> bytes."""
    m = _SIZE.match(str(text).strip())
    if not m:
        raise ValueError(f"not a size: {text!r} (e.g. 2GiB, 512MiB)")
    unit = (m.group(2) or "G")[0].upper()
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(num_bytes: int) -> str:
    """The shortest exact text parse_bytes reads back as `num_bytes`."""
    for unit in ("G", "M", "K"):
        if num_bytes and num_bytes % _UNITS[unit] == 0:
            return f"{num_bytes // _UNITS[unit]}{unit}iB"
    return f"{num_bytes}B"


def parse_count(text: str) -> float:
    """'100M' -> 1e8; k, M, B suffixes."""
    m = _COUNT.match(str(text).strip())
    if not m:
        raise ValueError(f"not a count: {text!r} (e.g. 100M)")
    return float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[m.group(2).lower()]


def setting(
    name: str | None = None,
    help: str = "",  # noqa: A002 - argparse's word
    parse: Callable[[str], Any] | None = None,
    format: Callable[[Any], str] | None = None,  # noqa: A002
    choices: Sequence[str] | None = None,
    hidden: bool = False,
    metavar: str | None = None,
) -> dict[str, Any]:
    """A field's metadata: `field(default=..., metadata=setting(help=...))`."""
    return {
        "setting": {
            "name": name,
            "help": help,
            "parse": parse,
            "format": format,
            "choices": choices,
            "hidden": hidden,
            "metavar": metavar,
        }
    }


@dataclass(frozen=True)
class Setting:
    name: str  # "kv_cache_memory": --kv-cache-memory, or that key in a mapping
    path: tuple[str, ...]  # the field, through nested configs: ("cache", "kv_cache_memory_bytes")
    kind: str  # "value", "bool", "list"
    parse: Callable[[str], Any]
    format: Callable[[Any], str]
    default: Any  # dataclasses.MISSING when the field has a default_factory only
    help: str
    choices: Sequence[str] | None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _scalar(hint: Any) -> tuple[Any, bool]:
    """(the type under Optional, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _kind_and_parser(hint: Any) -> tuple[str, Callable[[str], Any]]:
    base, _ = _scalar(hint)
    if base is bool:
        return "bool", _parse_bool
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        return "list", item
    if base in (int, float, str):
        return "value", base
    raise TypeError(f"no setting for a field of type {hint!r}")


def _parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def settings(cls: type, prefix: str = "") -> list[Setting]:
    """The settings of config class `cls`, nested configs flattened, in field order."""
    out: list[Setting] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata.get("setting", {})
        if meta.get("hidden"):
            continue
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            assert isinstance(hint, type)
            nested = settings(hint, meta.get("name") or prefix)
            out += [dataclasses.replace(s, path=(f.name, *s.path)) for s in nested]
            continue
        kind, parse = _kind_and_parser(hint)
        name = meta.get("name") or prefix + f.name.removesuffix("_s")
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        out.append(
            Setting(
                name=name,
                path=(f.name,),
                kind=kind,
                parse=meta.get("parse") or parse,
                format=meta.get("format") or str,
                default=default,
                help=meta.get("help", ""),
                choices=meta.get("choices"),
                metavar=meta.get("metavar"),
            )
        )
    names = [s.name for s in out]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"{cls.__name__}: settings named twice: {sorted(dupes)}"
    return out


def _argparse_type(s: Setting) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return s.parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = s.name  # argparse names the type in its error messages
    return convert


def add_flags(
    parser: argparse.ArgumentParser | Any, cls: type, prefix: str = "", skip: Sequence[str] = ()
) -> None:
    """One flag per setting of `cls` (defaults shown; absent flags leave the field's
    default). `skip`: setting names left to the caller."""
    for s in settings(cls, prefix):
        if s.name in skip:
            continue
        # A help text that names its default itself says it better than the field's value.
        shown = s.default is not dataclasses.MISSING and "default" not in s.help
        help_text = s.help + (f" (default: {_show(s)})" if shown else "")
        kwargs: dict[str, Any] = {"dest": s.name, "default": None, "help": help_text.strip()}
        if s.metavar is not None and s.kind != "bool":
            kwargs["metavar"] = s.metavar
        if s.kind == "bool":
            parser.add_argument(s.flag, action=argparse.BooleanOptionalAction, **kwargs)
        elif s.kind == "list":
            parser.add_argument(s.flag, nargs="+", type=_argparse_type(s), **kwargs)
        else:
            parser.add_argument(s.flag, type=_argparse_type(s), choices=s.choices, **kwargs)


def _show(s: Setting) -> str:
    if s.default is None:
        return "none"
    if s.kind == "list":
        return " ".join(s.format(v) for v in s.default)
    return s.format(s.default)


def _build(cls: type[T], values: Mapping[tuple[str, ...], Any], base: T | None) -> T:
    """An instance of `cls` from field paths -> values, over `base` (or the defaults)."""
    changes: dict[str, Any] = {}
    nested: dict[str, dict[tuple[str, ...], Any]] = {}
    for path, value in values.items():
        if len(path) == 1:
            changes[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1:]] = value
    hints = typing.get_type_hints(cls)
    for name, sub in nested.items():
        inner = getattr(base, name) if base is not None else None
        changes[name] = _build(hints[name], sub, inner)
    try:
        if base is None:
            return cls(**changes)
        return dataclasses.replace(base, **changes)  # type: ignore[type-var]
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def from_args(
    cls: type[T],
    args: argparse.Namespace,
    prefix: str = "",
    base: T | None = None,
    skip: Sequence[str] = (),
) -> T:
    """The config the parsed flags describe (flags not given keep `base`'s or the default
    values; `skip`: settings whose flag means something else here); ConfigError from the
    config's own checks."""
    values = {}
    for s in settings(cls, prefix):
        if s.name in skip:
            continue
        value = getattr(args, s.name, None)
        if value is not None:
            values[s.path] = tuple(value) if s.kind == "list" else value
    return _build(cls, values, base)


def from_mapping(
    cls: type[T], mapping: Mapping[str, Any], prefix: str = "", base: T | None = None
) -> T:
    """A config from setting names (`-` or `_`) -> values (text is parsed like a flag);
    KeyError names unknown settings."""
    table = {s.name: s for s in settings(cls, prefix)}
    unknown = sorted(k for k in mapping if k.replace("-", "_") not in table)
    if unknown:
        raise KeyError(f"unknown settings {unknown}; known: {sorted(table)}")
    values = {}
    for key, value in mapping.items():
        s = table[key.replace("-", "_")]
        try:
            values[s.path] = _coerce(s, value)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"{key}: {e}") from None
    return _build(cls, values, base)


def _coerce(s: Setting, value: Any) -> Any:
    """A mapping's value as the field takes it: text parsed like a flag; a YAML number goes
    through the setting's own parser (so a bare size means GiB, as on the command line)."""
    if value is None:
        return None
    if s.kind == "list":
        items = value.split() if isinstance(value, str) else list(value)
        return tuple(_coerce_one(s, v) for v in items)
    return _coerce_one(s, value)


def _coerce_one(s: Setting, value: Any) -> Any:
    if isinstance(value, str) or s.parse not in (int, float, str, _parse_bool):
        return s.parse(str(value))
    if s.parse is _parse_bool:
        ok = isinstance(value, bool)
    elif s.parse is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif s.parse is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:  # a text setting given something else
        ok = False
    if not ok:
        raise ValueError(f"expected {getattr(s.parse, '__name__', 'a value')}, got {value!r}")
    return float(value) if s.parse is float else value


def to_argv(config: Any, prefix: str = "", skip: Sequence[str] = ()) -> list[str]:
    """The flags that make `from_args` rebuild `config`: the settings that differ from the
    class defaults (fields with a default_factory are always given)."""
    argv: list[str] = []
    for s in settings(type(config), prefix):
        if s.name in skip:
            continue
        value: Any = config
        for part in s.path:
            value = getattr(value, part)
        if value == s.default:
            continue
        if s.kind == "bool":
            argv.append(s.flag if value else "--no-" + s.flag[2:])
        elif value is None:
            continue  # the default is not None here, and None has no flag
        elif s.kind == "list":
            items = [s.format(v) for v in value]
            if any(item.startswith("-") for item in items):
                raise ConfigError(f"{s.name}: a value may not start with '-': {items}")
            argv += [s.flag, *items]
        else:
            # NOTE: `--flag=value`, so a value starting with "-" is not read as a flag.
            argv.append(f"{s.flag}={s.format(value)}")
    return argv

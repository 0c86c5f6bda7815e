"""The options engine: a dataclass field per option (`opt`), and parsing with defaults < YAML (--config) < flags,
type checks that name the key, and the nearest valid names for a typo. The schemas themselves are in config.py."""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import types
import typing
from dataclasses import field
from pathlib import Path

import yaml

from .errors import UserError
from .utils import first_line


def opt(default=None, help="", *, choices=None, aliases=(), secret=False, factory=None, shown=None):
    """A config field: its default, the help line, allowed values, extra flag names, whether it is a secret, and how
    its default is shown in --help and the README (`shown`, for defaults too long to print)."""
    meta = {"help": help, "choices": choices, "aliases": tuple(aliases), "secret": secret, "shown": shown}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def redefault(cls, name: str, default):
    """Schema `cls`'s option `name` with another default, for a schema that derives from it: the help line, allowed
    values and flag names stay the parent's, so the two cannot drift apart."""
    meta = fields_of(cls)[name].metadata
    return opt(default, meta["help"], choices=meta["choices"], aliases=meta["aliases"], secret=meta["secret"],
               shown=meta["shown"])


def fields_of(cls) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


def _nearest(name: str, names) -> str:
    close = difflib.get_close_matches(name, list(names), n=3, cutoff=0.6)
    return f" Did you mean {', '.join(close)}?" if close else ""


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(key: str, value, tp):
    """Turn a YAML or command-line value into the field's type, or say which key is wrong."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(key, value, args[0])
    bad = UserError(f"{key}: expected {getattr(tp, '__name__', tp)}, got {value!r}.")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise bad
    if tp in (int, float):
        if isinstance(value, str):
            try:
                return tp(value)
            except ValueError:
                raise bad from None
        # a YAML int is a fine float; a float or a bool is not an int
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (tp is float or isinstance(value, int)):
            return tp(value)
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise bad
        return [_coerce(key, v, item) for v in value]
    if tp is dict or origin is dict:
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as e:
                raise UserError(f"{key}: not a valid YAML/JSON mapping ({first_line(e)}).") from None
        if not isinstance(value, dict):
            raise bad
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")


def _without_none(tp):
    """X for `X | None`, else tp."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (a UserError), not the usage dump and its own exit."""

    def error(self, message):
        raise UserError(f"{message}; see --help.")


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    parser = _Parser(description=description, argument_default=argparse.SUPPRESS,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", help="YAML file of options; command-line flags override it. "
                        "Several are merged in order, a later file's keys over an earlier's.")
    hints = typing.get_type_hints(cls)
    for name, f in fields_of(cls).items():
        tp = hints[name]
        help_text = f"{f.metadata['help']} (default: {shown_default(f)})"
        kwargs = {"dest": name, "help": help_text, "metavar": name.upper()}
        if f.metadata["choices"]:
            kwargs["choices"] = f.metadata["choices"]
            kwargs.pop("metavar")
        base = _without_none(tp)
        if base is bool:  # `--flag` alone means true; `--flag false` overrides a YAML true
            kwargs.update(nargs="?", const="true", metavar="BOOL")
        elif typing.get_origin(base) is list:  # `--x a b --x c` → [a, b, c]
            kwargs.update(nargs="+", action="extend")
        parser.add_argument(f"--{name}", *f.metadata["aliases"], **kwargs)
    return parser


def shown_default(f: dataclasses.Field) -> str:
    if f.metadata["secret"]:
        return "<hidden>"
    if f.metadata["shown"]:
        return f.metadata["shown"]
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    return " ".join(map(str, default)) if isinstance(default, list) else str(default)


def flag_table(cls, beyond=None) -> str:
    """The README's markdown table of cls's flags (with `beyond`: only those it adds or changes)."""
    rows = ["| flag | default | what |", "|---|---|---|"]
    base = fields_of(beyond) if beyond else {}
    for name, f in fields_of(cls).items():
        if name in base and shown_default(base[name]) == shown_default(f) and base[name].metadata == f.metadata:
            continue
        names = f"`--{name}`" + (f" (also {', '.join(f'`{a}`' for a in f.metadata['aliases'])})"
                                 if f.metadata["aliases"] else "")
        default = "—" if f.metadata["secret"] else shown_default(f)
        rows.append(f"| {names} | {default} | {f.metadata['help'].replace('|', '/')} |")
    return "\n".join(rows) + "\n"


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config {path}: no such file. The recipes shipped are in configs/.")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"--config {path}: not valid YAML ({first_line(e)}).") from None
    if not isinstance(data, dict):
        raise UserError(f"--config {path}: must be a mapping of option: value.")
    return data


def from_dict(cls, values: dict, source: str = "config"):
    """Build the config from a mapping, rejecting unknown keys (with suggestions) and ill-typed values."""
    known = fields_of(cls)
    hints = typing.get_type_hints(cls)
    for key in values:
        if key not in known:
            raise UserError(f"{source}: unknown option '{key}'.{_nearest(key, known)}")
    kwargs = {}
    for key, value in values.items():
        value = _coerce(key, value, hints[key])
        choices = known[key].metadata["choices"]
        if choices and value is not None and value not in choices:
            raise UserError(f"{key}: {value!r} is not one of {', '.join(choices)}.")
        kwargs[key] = value
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg


def parse(cls, argv: list[str] | None = None, description: str = ""):
    """defaults < --config YAML < command-line flags."""
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(cls, description)
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flag = next((u for u in unknown if u.startswith("--")), unknown[0])
        flags = [f"--{n}" for n in fields_of(cls)]
        raise UserError(f"unknown option '{flag}'.{_nearest(flag.split('=')[0], flags)} See --help.")
    cli = dict(vars(args))
    config_paths = cli.pop("config", None) or []
    values = {}
    for path in config_paths:
        values.update(load_yaml(path))
    values.update(cli)
    return from_dict(cls, values, source=" + ".join(config_paths) or "command line")


def to_dict(cfg) -> dict:
    """The config as asked, without secrets."""
    return {
        name: getattr(cfg, name) for name, f in fields_of(type(cfg)).items() if not f.metadata["secret"]
    }


def dump(cfg, path: str | Path, resolved: dict | None = None) -> None:
    """training_config.yaml: the config as asked, with what the run resolved in place of the unset values (the drawn
    seed, the prediction type ...), so `--config` on it repeats the run."""
    values = {**to_dict(cfg), **(resolved or {})}
    Path(path).write_text(yaml.safe_dump(values, sort_keys=False))

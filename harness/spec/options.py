"""Command-line options generated from a pydantic settings model, and one-line errors.

A settings model (`harness.spec.settings.RunSettings`, `harness.spec.executor.ExecutorOptions`,
`harness.parity.config.ParityConfig`) is the one declaration of its options and spec keys:
`add_options` gives every field a ``--kebab-case`` option (or the spelling in the field's
``json_schema_extra={"option": ...}``) with the field's description as help,
`values_from_args` returns the options actually given (so a spec's values stay where the
command line is silent), `validated` checks them against the model in one line, and
`overlay` lays them over a spec's values. No option has a default of its own: the model's
default is the only one.
"""

from __future__ import annotations

import argparse
import difflib
import re
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

__all__ = ["add_options", "values_from_args", "validated", "overlay", "one_line", "closest",
           "unknown"]


def closest(name: str, options) -> str:
    """`` (did you mean 'x'?)`` for the option closest to ``name``, else ``""``."""
    match = difflib.get_close_matches(str(name), [str(o) for o in options], n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown(what: str, name: Any, valid) -> ValueError:
    """The one shape of an "unknown X" error: the closest match and the valid choices."""
    valid = [str(v) for v in valid]
    return ValueError(f"unknown {what} {name!r}{closest(name, valid)}; valid: "
                      f"{', '.join(valid)}")


def _fields_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The field names of the (nested) model that ``loc`` points into."""
    for part in loc:
        if model is None:
            return []
        if isinstance(part, str):
            field = model.model_fields.get(part)
            if field is None:
                return []
            model = _model_in(field.annotation)
    return list(model.model_fields) if model is not None else []


def _model_in(tp) -> type[BaseModel] | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def one_line(err: ValidationError, where: str = "", model: type[BaseModel] | None = None
             ) -> str:
    """A pydantic error as one line per problem, joined: ``[run].epochs: input should be
    greater than or equal to 1 (got 0)``, with "did you mean" for unknown keys and choices
    (``model``: the validated model, to name the keys it knows)."""
    parts = []
    for e in err.errors():
        loc = tuple(e["loc"])
        inner = ".".join(str(p) for p in loc[:-1])
        where_ = ".".join(x for x in (where, inner) if x)
        key = ".".join(x for x in (where, ".".join(str(p) for p in loc)) if x)
        if e["type"] == "extra_forbidden":
            name, known = str(loc[-1]), _fields_at(model, loc[:-1])
            parts.append(f"unknown key {name!r} in {where_ or 'the spec'}"
                         f"{closest(name, known)}" + (f"; valid: {', '.join(known)}" if known
                                                      else ""))
        elif e["type"] == "literal_error":
            choices = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
            parts.append(f"{key}: {e['input']!r} is not one of {', '.join(choices)}"
                         f"{closest(str(e['input']), choices)}")
        elif e["type"] == "value_error":  # a validator's own message, as it wrote it
            parts.append(f"{key + ': ' if key else ''}{e['ctx']['error']}")
        else:
            parts.append(f"{key}: {e['msg'].lower()} (got {e.get('input')!r})")
    return "; ".join(parts)


def validated(model: type[BaseModel], data: Any, where: str = "") -> Any:
    """``model`` validated from ``data``; a ValueError of one line (`one_line`) if not."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ValueError(one_line(e, where, model)) from None


def overlay(base: BaseModel, values: dict[str, Any], where: str = "") -> BaseModel:
    """``base`` with ``values`` (the command line's) on top, validated: a table field (dict)
    gains the given keys, every other field is replaced."""
    merged = base.model_dump()
    for name, value in values.items():
        old = merged.get(name)
        merged[name] = {**old, **value} if isinstance(old, dict) else value
    return validated(type(base), merged, where)


def _strip_optional(tp):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _flag(name: str, field) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return extra.get("option") or "--" + name.replace("_", "-")


def add_options(parser: argparse.ArgumentParser, model: type[BaseModel], *,
                exclude: tuple[str, ...] = (), title: str = "") -> None:
    """One option per field of ``model`` (except ``exclude``): booleans as
    ``--x/--no-x``, Literals as choices, ``None``-able fields accept ``none``, a table
    (dict) as a repeatable ``KEY[=VALUE]``."""
    group = parser.add_argument_group(title or f"{model.__name__} (defaults: the model's)")
    for name, field in model.model_fields.items():
        if name in exclude:
            continue
        tp = _strip_optional(field.annotation)
        nullable = tp is not field.annotation
        default = field.default if field.default is not None else "none"
        help_ = f"{field.description or ''} (default: {default})"
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": help_}
        if tp is bool:
            group.add_argument(_flag(name, field), action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(tp) is dict:
            group.add_argument(_flag(name, field), action="append", metavar="KEY[=VALUE]",
                               **{**kw, "help": f"{field.description} (repeatable)"})
            continue
        if typing.get_origin(tp) is Literal:
            choices = [str(c) for c in typing.get_args(tp)]
            kw["choices"] = choices + (["none"] if nullable else [])
            kw["type"] = str
        elif tp in (int, float, str):
            kw["type"] = _nullable(tp) if nullable else tp
            kw["metavar"] = tp.__name__.upper()
        else:
            kw["type"] = str
        group.add_argument(_flag(name, field), **kw)


def _nullable(tp):
    def convert(text: str):
        return None if text.lower() == "none" else tp(text)

    convert.__name__ = tp.__name__  # argparse names the type in its errors
    return convert


def _table(name: str, field, items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ValueError(f"{_flag(name, field)} needs KEY[=VALUE], got {item!r}")
        out[key] = value if eq else True
    return out


def values_from_args(model: type[BaseModel], args: argparse.Namespace) -> dict[str, Any]:
    """The fields of ``model`` given on the command line (``none`` becomes None, a
    repeated ``KEY[=VALUE]`` a table)."""
    out = {}
    for name, field in model.model_fields.items():
        if hasattr(args, name):
            value = getattr(args, name)
            if isinstance(value, list) and typing.get_origin(
                    _strip_optional(field.annotation)) is dict:
                value = _table(name, field, value)
            out[name] = None if isinstance(value, str) and value == "none" else value
    return out

"""One sentence for an invalid serve config, said the way the person who wrote the YAML fixes it.

``serve run`` users see nothing but this sentence (``serve/preflight.py`` is how it reaches their console),
so it names the key as written in the YAML (``args.engine.slots``), what is wrong with it and the fix: the
closest spelling of an unknown key (difflib), the expected type or range next to the value given. It works
from any pydantic ``ValidationError`` of the model, so new fields and sections need nothing here.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Sequence
from typing import Any, Union

from pydantic import BaseModel, ValidationError

Path = list[str | int]


class ConfigError(ValueError):
    """An invalid serve config; ``str(exc)`` is the one sentence for the person who wrote it."""


def sentence_for(exc: ValidationError, model: type[BaseModel], root: str = "args") -> str:
    """The first problem of ``exc`` (a validation of ``model``) as one sentence; later ones are counted."""
    errors = exc.errors(include_url=False)
    groups: dict[str, list[tuple[dict[str, Any], Path, type[BaseModel] | None]]] = {}
    for error in errors:
        path, owner = _walk(model, error["loc"])
        groups.setdefault(_display(root, path), []).append((error, path, owner))
    where, first = next(iter(groups.items()))
    sentence = _sentence(where, first, model, root)
    more = len(groups) - 1
    if more:
        sentence += f" ({more} more {'problem' if more == 1 else 'problems'} after this one.)"
    return sentence


def config_error(exc: ValidationError, model: type[BaseModel], root: str = "args") -> ConfigError:
    return ConfigError(sentence_for(exc, model, root))


def _sentence(where: str, group: list[tuple[dict[str, Any], Path, type[BaseModel] | None]],
              model: type[BaseModel], root: str) -> str:
    error, path, owner = group[0]
    kind, given = error["type"], error.get("input")
    if kind == "extra_forbidden":
        return _unknown_key(where, path, owner, model, root)
    if kind == "missing":
        return f"`{where}` is required: add it."
    if kind in ("value_error", "assertion_error"):
        text = re.sub(r"^(Value|Assertion) error, ", "", error["msg"]).rstrip(".")
        return f"Invalid `{where}`: {text}."
    # A union (e.g. ``int | Literal["auto"]``) reports one error per member at the same key: say them together.
    expected = [e for e in (_expected(err) for err, _, _ in group) if e]
    if expected:
        options = _literal_options(group)
        hint = ""
        if isinstance(given, str) and options:
            close = difflib.get_close_matches(given, options, n=1, cutoff=0.75)  # "gpu" is not a typo of "cpu"
            hint = f" — did you mean '{close[0]}'?" if close else ""
        return f"`{where}` must {_either(expected)}, not {_show(given)}" + (hint or ".")
    return f"Invalid `{where}`: {error['msg']} (given {_show(given)})."


def _unknown_key(where: str, path: Path, owner: type[BaseModel] | None, model: type[BaseModel],
                 root: str) -> str:
    key = str(path[-1])
    siblings = list(owner.model_fields) if owner is not None else []
    close = difflib.get_close_matches(key, siblings, n=1, cutoff=0.6)
    if close:
        return f"Unknown key `{where}` — did you mean `{close[0]}`?"
    # A key of another section put in the wrong place (``args.slots`` for ``args.engine.slots``).
    elsewhere = [_display(root, p) for p in _field_paths(model) if p[-1] == key and p != path]
    if elsewhere:
        return f"Unknown key `{where}` — did you mean `{elsewhere[0]}`?"
    parent = _display(root, path[:-1])
    return f"Unknown key `{where}`: remove it (the keys under `{parent}` are {', '.join(siblings)})."


def _expected(error: dict[str, Any]) -> str | None:
    """``must …`` wording of a type/range/length error ("be a valid integer", "have at most 4000 characters")."""
    kind, msg = error["type"], error["msg"]
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "be a section of keys (a YAML mapping)"
    if kind == "literal_error":
        return f"be one of {error['ctx']['expected']}" if " or " in error["ctx"]["expected"] else \
            f"be {error['ctx']['expected']}"
    match = re.match(r"^\w+ should (.*)$", msg)
    if not match:
        return None
    wording = match.group(1)
    if kind.endswith(("_type", "_parsing")) or kind == "int_from_float":
        wording = wording.split(", ", 1)[0]  # "be a valid integer, unable to parse string as an integer"
    return wording


def _either(expected: list[str]) -> str:
    """ "be a valid integer" + "be 'auto'" -> "be a valid integer or 'auto'"."""
    unique = list(dict.fromkeys(expected))
    if len(unique) > 1 and all(e.startswith("be ") for e in unique):
        return "be " + " or ".join(e[3:] for e in unique)
    return " or ".join(unique)


def _literal_options(group: list[tuple[dict[str, Any], Path, type[BaseModel] | None]]) -> list[str]:
    options: list[str] = []
    for error, _, _ in group:
        if error["type"] == "literal_error":
            options += re.findall(r"'([^']*)'", error["ctx"]["expected"])
    return options


def _show(value: Any) -> str:
    """The value as the YAML spelled it (null, true), short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else f"a text of {len(value)} characters"
    if isinstance(value, dict):
        return "a section of keys"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    return repr(value)


def _display(root: str, path: Sequence[str | int]) -> str:
    text = root
    for item in path:
        text += f"[{item}]" if isinstance(item, int) else f".{item}"
    return text


def _walk(model: type[BaseModel], loc: Sequence[str | int]) -> tuple[Path, type[BaseModel] | None]:
    """``loc`` as the YAML path (fields, list indices) and the model owning its last key.

    pydantic appends a union member's tag (``'constrained-int'``, ``"literal['auto']"``) to the location of
    a union field's errors; those are not keys anyone wrote, so the walk stops there.
    """
    path: Path = []
    owner: type[BaseModel] | None = None
    annotation: Any = model
    for item in loc:
        cls = _model_class(annotation)
        origin = typing.get_origin(annotation)
        if cls is not None and isinstance(item, str):
            path.append(item)
            owner = cls
            field = cls.model_fields.get(item)
            annotation = field.annotation if field is not None else None
        elif isinstance(item, int) and origin in (list, tuple, set, frozenset):
            path.append(item)
            annotation = (typing.get_args(annotation) or (None,))[0]
        elif isinstance(item, str) and origin is dict:
            path.append(item)
            annotation = (typing.get_args(annotation) or (None, None))[-1]
        else:
            break
    return path, owner


def _model_class(annotation: Any) -> type[BaseModel] | None:
    """The model of a ``Model`` or ``Model | None`` annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1:
            return _model_class(members[0])
    return None


def _field_paths(model: type[BaseModel], prefix: Path | None = None) -> Iterator[Path]:
    """Every key path of the model tree, parents before children."""
    for name, field in model.model_fields.items():
        path = [*(prefix or []), name]
        yield path
        sub = _model_class(field.annotation)
        if sub is not None:
            yield from _field_paths(sub, path)

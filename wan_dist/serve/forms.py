"""Form bodies (multipart/form-data, urlencoded) as the nested dicts a JSON body would be.

The openai SDK (>= 2.27) sends ``POST /v1/videos`` as multipart with every value a string, nested objects
as ``a[b]`` and lists as ``a[]`` (its "brackets" array format). :func:`parse_form` rebuilds the nesting
(``metadata[campaign]=spring`` -> ``{"metadata": {"campaign": "spring"}}``, ``tags[]=x`` -> ``{"tags":
["x"]}``), :func:`coerce_scalars` turns the strings into the int / float / bool a model's field declares
("4" -> 4, "true" -> True) and a structured field given as one value from JSON text (``camera={"moves": ...}``),
and :func:`pop_files` takes the uploaded files out for the app to store.

Errors are :class:`wan_dist.serve.schemas.RequestError` 422s naming the field in dotted form (``a.b``):
a name given twice (``a=1`` and ``a=2``; lists need ``a[]``), a name used both as a value and as an object
(``a=1`` and ``a[b]=2``), a malformed or too deeply nested name, a string that is not the declared number.
Files (``UploadFile``) and values of fields typed ``str`` are never touched.
"""

from __future__ import annotations

import math
import re
import types
import typing
from typing import Any, Union

from pydantic import BaseModel
from starlette.datastructures import UploadFile

from wan_dist.serve.schemas import RequestError

__all__ = ["MAX_DEPTH", "parse_form", "coerce_scalars", "pop_files"]

MAX_DEPTH = 8
_NAME = re.compile(r"([^\[\]]+)((?:\[[^\[\]]*\])*)")
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _invalid(param: str, reason: str) -> RequestError:
    return RequestError(422, f"{param}: {reason}", param=param, code="invalid_value")


def _split(name: str) -> list[str]:
    """``a[b][]`` -> ``["a", "b", ""]`` ("" is a list append); malformed names raise."""
    match = _NAME.fullmatch(name)
    if not match:
        raise _invalid(name.split("[", 1)[0] or name or "body", f"malformed field name {name[:100]!r}")
    keys = [match.group(1), *re.findall(r"\[([^\[\]]*)\]", match.group(2))]
    if len(keys) > MAX_DEPTH:
        raise _invalid(keys[0], f"nested more than {MAX_DEPTH} levels deep ({name[:100]!r})")
    if "" in keys[:-1]:
        raise _invalid(".".join(k for k in keys if k), f"lists of objects are not supported ({name[:100]!r})")
    return keys


def parse_form(items: list[tuple[str, str | UploadFile]]) -> dict:
    """Nested dict of form ``items`` (as ``FormData.multi_items()`` gives them), in order."""
    body: dict = {}
    for name, value in items:
        keys = _split(name)
        as_list = keys[-1] == ""
        keys = keys[:-1] if as_list else keys
        node = body
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise _invalid(".".join(keys[:depth + 1]), f"given both as a value and as an object ({name[:100]!r})")
        last, path = keys[-1], ".".join(keys)
        existing = node.get(last)
        if as_list and isinstance(existing, list):
            existing.append(value)
        elif last not in node:
            node[last] = [value] if as_list else value
        elif isinstance(existing, dict):
            raise _invalid(path, f"given both as a value and as an object ({name[:100]!r})")
        elif isinstance(existing, list) or as_list:
            raise _invalid(path, f"given both as a list and as a value ({name[:100]!r})")
        else:
            raise _invalid(path, f"given more than once; send lists as {last}[] ({name[:100]!r})")
    return body


def pop_files(body: dict) -> dict[str, UploadFile]:
    """Take the uploaded files at the top level of ``body`` out of it: ``{field: UploadFile}``."""
    files = {key: value for key, value in body.items() if isinstance(value, UploadFile)}
    for key in files:
        del body[key]
    return files


def _kinds(annotation: Any) -> set:
    """The scalar types an annotation allows (Annotated and Optional unwrapped)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _kinds(typing.get_args(annotation)[0])
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return set().union(*(_kinds(arg) for arg in typing.get_args(annotation)))
    if typing.get_origin(annotation) is typing.Literal:
        return {type(arg) for arg in typing.get_args(annotation)}
    return {annotation}


def _scalar(value: str, kinds: set, param: str, optional: bool) -> Any:
    text = value.strip()
    if text == "" and optional:
        return None
    if bool in kinds:
        if text.lower() in _TRUE | _FALSE:
            return text.lower() in _TRUE
        raise _invalid(param, f"must be a boolean (true or false), got {value!r}")
    if float not in kinds and re.fullmatch(r"[+-]?\d{1,30}", text):
        return int(text)
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise _invalid(param, f"must be a {'number' if float in kinds else 'integer'}, got {value!r}")
    if float in kinds:
        return number
    if not number.is_integer():
        raise _invalid(param, f"must be an integer, got {value!r}")
    return int(number)


def coerce_scalars(body: dict, model: type[BaseModel], _prefix: str = "") -> dict:
    """A copy of ``body`` with the strings of ``model``'s int / float / bool fields converted (nested models
    too). Fields that also accept ``str``, unknown fields and files are left for the model to judge; an empty
    string on an optional field is ``None`` (an HTML form's empty input)."""
    out = dict(body)
    for name, info in model.model_fields.items():
        value, param = out.get(name), f"{_prefix}{name}"
        kinds = _kinds(info.annotation)
        nested = [k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)]
        if isinstance(value, dict) and len(nested) == 1:
            out[name] = coerce_scalars(value, nested[0], f"{param}.")
        elif isinstance(value, str) and str not in kinds and kinds & {int, float, bool}:
            out[name] = _scalar(value, kinds, param, optional=type(None) in kinds)
        elif isinstance(value, str) and any(typing.get_origin(k) in (dict, list) for k in kinds):
            out[name] = _json(value, param)
    return out


def _json(value: str, param: str) -> Any:
    """A structured field (camera, layers, loras, metadata) sent as one form value: JSON text, as a manifest's
    column holds it (bracketed names stay strings at the leaves, which a camera path's numbers cannot be)."""
    import json

    if not value.strip():
        return None
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as error:
        raise _invalid(param, f"not valid JSON ({error})") from None

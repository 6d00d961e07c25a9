"""The normalisers of a request's structured fields (engine/request.py's ``REQUEST_FIELDS``): each turns one loose
value (or one list item) into its stored form, or raises naming the part that is wrong (:class:`ItemError` for a list
item's ``[i].part``, ValueError for the field)."""

from __future__ import annotations

import math
from typing import Any

from wan_dist.controls import ControlError
from wan_dist.controls.reframe import subject_keyframes
from wan_dist.controls.renditions import parse_renditions
from wan_dist.controls.storyboard import shot_item

__all__ = ["ItemError", "LORA_TRANSFORMERS", "MAX_LORA_SCALE", "MAX_URI_CHARS", "control_item", "lora_item",
           "renditions_item", "shot_entry", "subject_box_item"]

MAX_LORA_SCALE, MAX_URI_CHARS = 10.0, 2048
LORA_TRANSFORMERS = ("high", "low", "both")


class ItemError(ValueError):
    """A bad part of a structured field: ``path`` is what follows the field's name (``[0].scale``)."""

    def __init__(self, path: str, reason: str):
        super().__init__(reason)
        self.path = path


def lora_item(index: int, item: Any) -> dict:
    """One entry of ``loras``, normalised to ``{"path", "scale", "transformer"}`` (defaults 1.0 and "high")."""
    at = f"[{index}]"
    if not isinstance(item, dict):
        raise ItemError(at, f"must be an object {{path, scale, transformer}}, got {type(item).__name__}")
    unknown = sorted(set(item) - {"path", "scale", "transformer"})
    if unknown:
        raise ItemError(f"{at}.{unknown[0]}", "unknown field; known: path, scale, transformer")
    path = item.get("path")
    if not isinstance(path, str) or not path.strip():
        raise ItemError(f"{at}.path", "required: a path or URL of a LoRA .safetensors file")
    if len(path) > MAX_URI_CHARS or any(ord(c) < 32 for c in path):
        raise ItemError(f"{at}.path", f"must be a path or URL of at most {MAX_URI_CHARS} characters")
    scale = 1.0 if item.get("scale") is None else item["scale"]
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ItemError(f"{at}.scale", f"must be a finite number, got {scale!r:.60}")
    if abs(scale) > MAX_LORA_SCALE:
        raise ItemError(f"{at}.scale", f"must be in [-{MAX_LORA_SCALE:g}, {MAX_LORA_SCALE:g}], got {scale}")
    transformer = "high" if item.get("transformer") is None else item["transformer"]
    if transformer not in LORA_TRANSFORMERS:
        raise ItemError(f"{at}.transformer", f"must be one of {', '.join(LORA_TRANSFORMERS)}; got {transformer!r:.60}")
    return {"path": path, "scale": float(scale), "transformer": transformer}


def control_item(kind):
    """The normalised loose form of a creative control (wan_dist.controls), checked by the control itself."""
    def normalise(value: dict) -> dict:
        try:
            return kind.from_dict(value).to_dict()
        except ControlError as error:
            raise ValueError(str(error)) from None
    return normalise


def subject_box_item(value: list) -> list:
    try:
        return subject_keyframes(value, field="")
    except ControlError as error:
        raise ValueError(f"{error.field.lstrip('.')}: {error.reason}" if error.field else error.reason) from None


def shot_entry(index: int, item: Any) -> dict:
    try:
        return shot_item(index, item)
    except ControlError as error:
        raise ItemError(error.field, error.reason) from None


def renditions_item(value: list) -> list:
    try:
        return [profile.name for profile in parse_renditions(value, field="")]
    except ControlError as error:
        raise ValueError(f"{error.field.lstrip('.')}: {error.reason}" if error.field else error.reason) from None

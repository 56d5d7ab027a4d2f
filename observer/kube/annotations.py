"""Pod annotations that steer how the agent collects a pod's logs (docs/annotations.md).

All under one prefix, ``observer.dev/``; each setting is pod-wide, or for one container
when the container's name comes first (container names cannot contain dots):

- ``observer.dev/exclude: "true"``, ``observer.dev/<container>.exclude: "true"`` — the
  lines are read (so that the checkpoint moves on) but not sent, and counted as excluded.
- ``observer.dev/multiline``: ``"false"`` to never join stack traces, ``"true"`` for the
  configured languages, or a comma-separated list of ``java``, ``python``, ``go``, ``node``.
- ``observer.dev/parser``: ``json`` (every line is a JSON object; one that is not is kept,
  marked with ``error.message`` and counted), ``plain`` (never parsed, even if it looks
  like JSON) or ``auto`` (the default: a line that looks like a JSON object is parsed).

A container's own setting wins over the pod-wide one, which wins over the agent's
configuration (`sources.pod_logs`). A value that cannot be understood is ignored, with a
warning and a count, as Kubernetes itself ignores annotations it does not know.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, cast, get_args

from observer.config import MultilineLanguage

PREFIX = "observer.dev/"

Parser = Literal["auto", "json", "plain"]
SETTINGS = ("exclude", "multiline", "parser")
_TRUE = ("true", "yes", "on", "1")
_FALSE = ("false", "no", "off", "0")
_LANGUAGES: tuple[str, ...] = get_args(MultilineLanguage)
_PARSERS: tuple[str, ...] = get_args(Parser)


@dataclass(frozen=True, slots=True)
class CollectionHints:
    """What a container's annotations ask; None: as the agent is configured."""

    exclude: bool = False
    multiline: bool | None = None
    languages: tuple[MultilineLanguage, ...] | None = None
    """Set with `multiline` True: the languages to join; None: the configured ones."""
    parser: Parser = "auto"


NO_HINTS = CollectionHints()


def steering(annotations: Mapping[str, str] | None) -> dict[str, str]:
    """The pod's annotations under our prefix, without it: ``{"app.exclude": "true"}``."""
    return {
        key[len(PREFIX) :]: value
        for key, value in (annotations or {}).items()
        if key.startswith(PREFIX)
    }


def problems(annotations: Mapping[str, str]) -> list[str]:
    """Each annotation (from `steering`) that will be ignored, and why."""
    found = []
    for key, value in annotations.items():
        setting = key.rpartition(".")[2]
        if setting not in SETTINGS:
            found.append(f"{PREFIX}{key}: unknown setting; known: {', '.join(SETTINGS)}")
        elif _parse(setting, value) is None:
            found.append(f"{PREFIX}{key}: cannot use {value!r}")
    return found


def collection_hints(annotations: Mapping[str, str], container: str) -> CollectionHints:
    """The settings for one container: its own keys over the pod-wide ones (see the module
    docstring); invalid values are left out."""
    if not annotations:
        return NO_HINTS
    chosen: dict[str, object] = {}
    for setting in SETTINGS:
        for key in (f"{container}.{setting}", setting):
            if key in annotations:
                parsed = _parse(setting, annotations[key])
                if parsed is not None:
                    chosen[setting] = parsed
                    break
    multiline = chosen.get("multiline")
    return CollectionHints(
        exclude=chosen.get("exclude") is True,
        multiline=None if multiline is None else bool(multiline),
        languages=cast(tuple[MultilineLanguage, ...], multiline)
        if isinstance(multiline, tuple)
        else None,
        parser=cast(Parser, chosen.get("parser", "auto")),
    )


def _parse(setting: str, value: str) -> object | None:
    """The value's meaning, or None when it has none."""
    text = value.strip().lower()
    if setting == "exclude":
        return True if text in _TRUE else False if text in _FALSE else None
    if setting == "parser":
        return text if text in _PARSERS else None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    languages = tuple(part.strip() for part in text.split(",") if part.strip())
    if languages and all(language in _LANGUAGES for language in languages):
        return languages
    return None

"""Frozen config dataclasses as plain data, shared by every registry (saliency methods, attacks).

A registry entry names its ``Config``; these two functions are how a page's or the CLI's flat
settings become one, and how ``python -m engine methods --json`` describes one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


def config_fields(config_type: type) -> list[dict[str, Any]]:
    """Each setting of a config: name, type (as written in the dataclass) and default."""
    return [{"name": field.name, "type": str(field.type), "default": field.default}
            for field in dataclasses.fields(config_type)]


def config_from(config_type: type, values: Mapping[str, Any]) -> Any:
    """The config from the values that name its fields; the rest keep their defaults (a page's
    cap, step limit and epsilon serve every attack; ``patch`` goes only to occlusion)."""
    names = {field.name for field in dataclasses.fields(config_type)}
    return config_type(**{name: value for name, value in values.items() if name in names})

"""Where a configuration comes from: presets and YAML files (the CLI adds flags on top).

    >>> cfg = load_config(preset="clip", yaml_path="curate.yaml").with_overrides({"image.image_size": 384})

The typed tree itself lives in ``paircurate.schemas.config`` so that every
layer can import it without importing the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from paircurate.schemas.config import ConfigError, PipelineConfig, check


def load_config(preset: str | None = None, yaml_path: str | Path | None = None) -> PipelineConfig:
    """Preset defaults, then the YAML file over them (flags go on top with ``with_overrides``)."""
    data: dict[str, Any] = preset_dict(preset) if preset else {}
    if yaml_path:
        data = merge_sections(data, load_yaml(yaml_path))
    return PipelineConfig.from_dict(data)


# Named starting points, applied under the YAML file and the flags (preset < YAML < flags).
# Thresholds follow the published recipes they are named after.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    # DataComp's basic filtering: captions of more than 2 words and 5 characters,
    # images of at least 200 px with aspect ratio at most 3, CLIP-scored.
    "clip": {
        "caption": {"min_words": 3, "min_chars": 6, "english_only": True},
        "image": {"min_image_size": 200, "max_aspect_ratio": 3.0},
        "clip": {"enabled": True},
    },
    # Text-to-image training wants square-ish crops at the training size, images
    # big enough not to be upscaled into them, and captions that describe the
    # picture rather than name the file.
    "dalle": {
        "caption": {"min_words": 2, "reject_boilerplate": True, "english_only": True, "tokenize": True, "max_text_tokens": 256},
        "image": {"image_size": 256, "resize_mode": "center_crop", "min_image_size": 256, "max_aspect_ratio": 2.0},
    },
}


def preset_dict(name: str) -> dict[str, dict[str, Any]]:
    """A copy of preset ``name``'s config sections; ConfigError naming the known presets otherwise."""
    check(name in PRESETS, f"unknown preset {name!r}; known: {sorted(PRESETS)}")
    return {section: dict(values) for section, values in PRESETS[name].items()}


def merge_sections(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, one level deep: a YAML section overrides a preset key by key, not wholesale."""
    merged: dict[str, Any] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for section, values in top.items():
        if isinstance(values, Mapping) and isinstance(merged.get(section), dict):
            merged[section].update(values)
        else:
            merged[section] = values
    return merged


def load_yaml(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    check(isinstance(data, dict), f"config file {path} must hold a mapping of sections")
    return data

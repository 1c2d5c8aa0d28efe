"""Config fields that choose a component by name and carry that component's options.

A component field (``semantic.aux_loss``, ``semantic.calibration``) holds a mapping
``{name: ..., option: value, ...}``. The options belong to the named component, whose own
dataclass (beside its code) declares them and their defaults; ``component_options`` fills and
checks them when the component is built. A plain name is short for ``{name: NAME}``.
"""
from __future__ import annotations

import dataclasses
from typing import Any


class ConfigError(ValueError):
    """A config file, preset or override that cannot be used; the message says what to do."""


COMPONENTS = ("model.pixel_head", "semantic.aux_loss", "semantic.calibration")


def component_spec(value: Any, path: str) -> dict:
    """A component field's value as a mapping: ``"repa"`` is short for ``{"name": "repa"}``."""
    if isinstance(value, str):
        return {"name": value}
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path} takes a component name or a mapping {{name: ..., option: ...}}, "
                          f"got {value!r}")
    return dict(value)


def component_options(options_cls: type, spec: dict, path: str):
    """The dataclass ``options_cls`` filled from ``spec`` (without its "name"): unknown options and
    wrong types are errors that name the component and its valid options."""
    given = {k: v for k, v in spec.items() if k != "name"}
    fields = {f.name: f for f in dataclasses.fields(options_cls)}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        valid = ", ".join(fields) or "none"
        raise ConfigError(f"{path}={spec.get('name')} has no option {', '.join(map(repr, unknown))}; "
                          f"its options: {valid}")
    values = {}
    for k, v in given.items():
        default = getattr(options_cls(), k)
        if isinstance(default, float) and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        if default is not None and v is not None and not isinstance(v, type(default)):
            raise ConfigError(f"{path}.{k} must be a {type(default).__name__} "
                              f"(like its default {default!r}), got {v!r}")
        values[k] = v
    return options_cls(**values)


def choose(registry: dict, value: Any, path: str, default: str) -> tuple[str, Any, Any]:
    """(name, registered class, its filled options) of the component ``value`` names in
    ``registry`` (name -> class with an ``Options`` dataclass, or None for "no component")."""
    spec = component_spec(value, path)
    name = spec.get("name", default)
    if name not in registry:
        raise ConfigError(f"unknown {path} '{name}'; choose one of {', '.join(registry)}")
    cls = registry[name]
    return name, cls, None if cls is None else component_options(cls.Options, spec, path)


def resolved(registry: dict, value: Any, path: str, default: str) -> dict:
    """The component ``value`` names with every option spelled out (what config.yaml records)."""
    name, _, options = choose(registry, value, path, default)
    return {"name": name} if options is None else component_dict(name, options)


def component_dict(name: str, options) -> dict:
    """{name, every option} of a built component: what a run's config.yaml records."""
    d = {"name": name}
    for k, v in dataclasses.asdict(options).items():
        d[k] = list(v) if isinstance(v, tuple) else v
    return d

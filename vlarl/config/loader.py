"""Recipes and overrides into a :class:`~vlarl.config.run.Config`: YAML files of the sections,
``--section.field value`` on the command line, each value coerced to its field's annotated
type; ``save_config`` / ``to_dict`` / ``non_default`` back out, ``field_docs`` for ``--help``."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml

from vlarl.config.checks import ConfigError
from vlarl.config.policy import DEFAULT_POLICY, POLICY_CONFIGS, PolicyConfig
from vlarl.config.run import Config


def _convert(key: str, value: Any, tp: Any) -> Any:
    """Coerce ``value`` (from YAML or a command-line string) to the annotated type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(key, value, arg)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: cannot convert {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(args)}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list")
        return [_convert(key, v, args[0] if args else str) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{key}={value!r} must be a bool (true/false)")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be an int")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be an int") from None
        if not f.is_integer():
            raise ConfigError(f"{key}={value!r} must be an int")
        return int(f)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} must be a float")
        try:
            f = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r} must be a float") from None
        if math.isnan(f):
            raise ConfigError(f"{key}=nan is not a valid value")
        return f
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}={value!r} must be a string")
        return str(value)
    return value


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _retyped(section: PolicyConfig, name: str, key: str) -> PolicyConfig:
    """The policy section as policy ``name``'s class, with the fields set so far; a set field
    that ``name``'s class does not have is refused, naming it and the keys ``name`` has."""
    cls = PolicyConfig.for_name(name)
    if type(section) is cls:
        return section
    own = {f.name for f in dataclasses.fields(cls)}
    carried = {k: v for k, v in non_default(section).items() if k != "name"}
    for k in carried:
        if k not in own:
            raise ConfigError(f"{key}.{k} is a {section.name} key; {key}.name={name!r} has no "
                              f"such key (allowed: {sorted(own)})")
    return cls(**carried)


def _owners(key: str) -> dict[str, type[PolicyConfig]]:
    """The registered policy config classes that have field ``key``, by policy name."""
    return {n: c for n, c in sorted(POLICY_CONFIGS.items())
            if key in {f.name for f in dataclasses.fields(c)}}


def _own_policy_keys(section: PolicyConfig, mapping: dict) -> dict:
    """A recipe's ``policy`` mapping without the other policies' keys left at their defaults:
    a ``config.yaml`` saved before each policy had its own config class lists every policy's
    fields, and those had no effect on this one. Another policy's key set to anything else is
    still refused (by ``set_field``)."""
    own = {f.name for f in dataclasses.fields(section)}
    out = {}
    for k, v in mapping.items():
        owners = _owners(str(k)).values()
        if str(k) not in own and owners and all(v == getattr(c(), str(k)) for c in owners):
            continue
        out[k] = v
    return out


def set_field(obj: Any, dotted: str, value: Any, prefix: str = "") -> None:
    head, _, rest = dotted.partition(".")
    names = [f.name for f in dataclasses.fields(obj)]
    key = prefix + head
    if head not in names:
        close = difflib.get_close_matches(head, names, n=1)
        hint = f" (did you mean {prefix + close[0]!r}?)" if close else ""
        if isinstance(obj, PolicyConfig):  # another policy's key: say whose
            owners = _owners(head)
            if owners:
                hint = f" for policy.name={obj.name!r} (it is a key of {', '.join(owners)})"
        raise ConfigError(f"unknown key {key!r}{hint}; allowed: {names}")
    tp = _hints(type(obj))[head]
    current = getattr(obj, head)
    if isinstance(current, PolicyConfig):  # its name picks its class: set it first
        name = value.get("name") if isinstance(value, dict) and not rest else \
            value if rest == "name" else None
        if name is not None:
            current = _retyped(current, str(name), key)
            setattr(obj, head, current)
            if rest == "name":
                return
            if not rest:
                value = {k: v for k, v in value.items() if k != "name"}
    if dataclasses.is_dataclass(current):
        if rest:
            set_field(current, rest, value, key + ".")
            return
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping of its fields, got {value!r}")
        if isinstance(current, PolicyConfig):
            value = _own_policy_keys(current, value)
        for k, v in value.items():
            set_field(current, str(k), v, key + ".")
        return
    if rest:
        raise ConfigError(f"{key} has no sub-keys (got {prefix}{dotted!r})")
    setattr(obj, head, _convert(key, value, tp))


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                cls=Config, sections: Iterable[str] | None = None) -> Any:
    """Build a validated config from an optional YAML recipe and overrides.

    ``overrides`` is either ``["--algo.epsilon", "0.1", "--env.task=PushCube-v1"]`` or a
    ``{"algo.epsilon": 0.1}`` dict. Raises :class:`ConfigError` naming the bad key.
    """
    cfg = cls()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"recipe file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"YAML syntax error in {p}: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{p} must hold a mapping of sections, got {type(data).__name__}")
        for k, v in data.items():
            set_field(cfg, str(k), v)
    for key, value in parse_overrides(overrides or []):
        set_field(cfg, key, value)
    if hasattr(cfg, "resolve"):
        cfg.resolve()
    return cfg.validate(sections) if hasattr(cfg, "validate") else cfg


def parse_overrides(overrides: list[str] | dict) -> list[tuple[str, Any]]:
    if isinstance(overrides, dict):
        return list(overrides.items())
    out, i = [], 0
    while i < len(overrides):
        tok = overrides[i]
        if not tok.startswith("--"):
            raise ConfigError(f"expected --section.key, got {tok!r}")
        tok = tok[2:]
        if "=" in tok:
            k, v = tok.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(overrides):
                raise ConfigError(f"--{tok} needs a value")
            # `--eval.splits train wide_pose`: every token up to the next --key is a value;
            # several values make a list (as does the YAML form "[train, wide_pose]").
            j = i + 1
            while j < len(overrides) and not overrides[j].startswith("--"):
                j += 1
            k, values = tok, overrides[i + 1:j]
            i = j
            if len(values) > 1:
                out.append((k.replace("-", "_"), [yaml.safe_load(v) for v in values]))
                continue
            v = values[0]
        k = k.replace("-", "_")
        out.append((k, yaml.safe_load(v) if v not in ("",) else v))
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def non_default(section: Any) -> dict:
    """The fields of a config section that differ from the dataclass defaults: what cache keys
    hash, so adding a field (with a default) to vlarl does not invalidate cached stages."""
    default = type(section)()
    out = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)
           if getattr(section, f.name) != getattr(default, f.name)}
    if isinstance(section, PolicyConfig) and section.name != DEFAULT_POLICY:
        # each policy's class defaults ``name`` to its own: keep it, or two policies' default
        # configs would share a cache key (an SFT directory of one reused for the other)
        out = {"name": section.name, **out}
    return out


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def field_docs(cls) -> dict[str, str]:
    """Field docstrings (the string literal under each field) for ``--help``, inherited ones
    first (a policy's config: the shared fields, then its own)."""
    import ast
    import inspect
    import itertools

    docs: dict[str, str] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        body = ast.parse(inspect.getsource(klass)).body[0].body  # type: ignore[attr-defined]
        for node, nxt in itertools.pairwise(body):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and \
                    isinstance(getattr(nxt, "value", None), ast.Constant):
                docs[node.target.id] = str(nxt.value.value)  # type: ignore[union-attr]
    return docs

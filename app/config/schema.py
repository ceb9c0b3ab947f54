"""The machinery behind every typed configuration: fields with metadata, coercion, validation, YAML.

A configuration is a dataclass deriving from `Schema` whose fields are declared with `param()`:
default, help text, group, choices and bounds live on the field and nowhere else. The UI builds its
controls from that metadata, the CLI its flags, the README its reference table, and the worker reads
the YAML written from it.

    @dataclass
    class EvalConfig(Schema):
        FILE_NAME = "eval.yaml"
        max_new_tokens: int = param(256, "Longest generated answer.", "generation", minimum=1)
"""

from __future__ import annotations

import dataclasses
import functools
import shlex
import types
from dataclasses import field
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin, get_type_hints

import yaml

from app.atomic import write_text_atomic


class ConfigError(ValueError):
    """One or more bad fields; each message starts with the field's name."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def param(default: Any, help: str, group: str, choices: tuple | None = None, minimum: float | None = None,
          maximum: float | None = None, exclusive_min: bool = False) -> Any:
    meta = {"help": help, "group": group, "choices": choices, "min": minimum, "max": maximum,
            "exclusive_min": exclusive_min}
    return field(default=default, metadata=meta)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A config class's field types, resolved once: `get_type_hints` evaluates every annotation of the class
    on each call, and loading a full job.yaml asked it twice per key (0.13 s per load on 2 cores)."""
    return get_type_hints(cls)


class Schema:
    """Base of JobConfig and EvalConfig (subclasses are dataclasses whose fields use `param`)."""

    # The command that runs a config of this kind (`ftstudio <COMMAND> <run>/<FILE_NAME>`), and the
    # file it is saved as inside a run folder.
    COMMAND: ClassVar[str] = ""
    FILE_NAME: ClassVar[str] = "job.yaml"
    # LLaMA-Factory keys: supported nowhere yet (an error that says so) / bookkeeping with no effect here.
    UNSUPPORTED_KEYS: ClassVar[dict[str, str]] = {}
    IGNORED_KEYS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def spec(cls) -> dict[str, dataclasses.Field]:
        return {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    @classmethod
    def field_type(cls, name: str) -> type:
        """The base type of a field (str, int, float, bool), Optional unwrapped."""
        hint = _hints(cls)[name]
        if get_origin(hint) in (Union, types.UnionType):
            args = [a for a in get_args(hint) if a is not type(None)]
            return args[0] if len(args) == 1 else object
        return hint

    @classmethod
    def optional(cls, name: str) -> bool:
        return type(None) in get_args(_hints(cls)[name])

    @classmethod
    def normalise(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook: rewrite keys before they are read (e.g. LLaMA-Factory's inverted switches)."""
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], notes: list[str] | None = None):
        """Build and validate; unknown and unsupported keys are errors, ignored ones go to notes."""
        data = cls.normalise(dict(data or {}))
        problems: list[str] = []
        values: dict[str, Any] = {}
        spec = cls.spec()
        for key, raw in data.items():
            if key in spec:
                try:
                    values[key] = cls.coerce(key, raw)
                except ValueError as exc:
                    problems.append(f"{key}: {exc}")
            elif key in cls.UNSUPPORTED_KEYS:
                problems.append(f"{key}: known LLaMA-Factory key, not supported yet ({cls.UNSUPPORTED_KEYS[key]})")
            elif key in cls.IGNORED_KEYS:
                if notes is not None:
                    notes.append(f"{key}: LLaMA-Factory key with no effect here, ignored")
            else:
                close = [k for k in spec if k.startswith(str(key)[:4])][:3]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                problems.append(f"{key}: unknown key{hint}")
        if problems:
            raise ConfigError(problems)
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def coerce(cls, key: str, raw: Any) -> Any:
        """Turn a YAML/CLI/UI value into the field's type (strings from the CLI included)."""
        kind = cls.field_type(key)
        if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "null", "none")):
            if cls.optional(key):
                return None
            if kind is str and cls.spec()[key].default == "" and isinstance(raw, str) and not raw.strip():
                return ""  # a text field whose default is empty text may be empty
            raise ValueError("must not be empty")
        if kind is object:  # a union such as bool | str: the subclass decides
            return cls.coerce_union(key, raw)
        if kind is bool:
            return to_bool(raw)
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(f"must be a whole number, got {raw!r}")
            try:
                return int(float(raw)) if isinstance(raw, (str, float)) else int(raw)
            except (TypeError, ValueError):
                raise ValueError(f"must be a whole number, got {raw!r}") from None
        if kind is float:
            if isinstance(raw, bool):
                raise ValueError(f"must be a number, got {raw!r}")
            try:
                return float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"must be a number, got {raw!r}") from None
        if not isinstance(raw, (str, int, float)):
            raise ValueError(f"must be text, got {type(raw).__name__}")
        return str(raw).strip()

    @classmethod
    def coerce_union(cls, key: str, raw: Any) -> Any:
        """bool | str fields: true/false words become booleans, anything else stays text."""
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip()
        return to_bool(text) if text.lower() in ("true", "false", "yes", "no") else text

    def validate(self) -> None:
        """Choices and bounds of every field, then the subclass's own rules (`problems`)."""
        problems = []
        for name, f in self.spec().items():
            value = getattr(self, name)
            meta = f.metadata
            if value is None:
                continue
            if meta.get("choices") and value not in meta["choices"]:
                shown = ", ".join(str(c) for c in meta["choices"] if c is not None)
                problems.append(f"{name}: must be one of {shown}, got {value!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                low, high = meta.get("min"), meta.get("max")
                if low is not None and (value < low or (meta.get("exclusive_min") and value == low)):
                    sign = ">" if meta.get("exclusive_min") else ">="
                    problems.append(f"{name}: must be {sign} {low:g}, got {value:g}")
                if high is not None and value > high:
                    problems.append(f"{name}: must be <= {high:g}, got {value:g}")
        problems += self.problems()
        if problems:
            raise ConfigError(problems)

    def problems(self) -> list[str]:
        """Hook: rules that involve several fields; each message starts with a field name."""
        return []

    # -- serialisation ---------------------------------------------------------------------------
    def to_dict(self, only_changed: bool = False) -> dict[str, Any]:
        out = {}
        for name, f in self.spec().items():
            value = getattr(self, name)
            if only_changed and value == f.default:
                continue
            out[name] = value
        return out

    def to_yaml(self, only_changed: bool = False) -> str:
        return yaml.safe_dump(self.to_dict(only_changed), sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        write_text_atomic(Path(path), self.to_yaml())

    @classmethod
    def from_yaml_text(cls, text: str, notes: list[str] | None = None, source: str = "yaml"):
        return cls.from_dict(parse_yaml_mapping(text, source), notes)

    @classmethod
    def load(cls, path: str | Path, notes: list[str] | None = None):
        return cls.from_dict(read_yaml_mapping(path), notes)

    def replace(self, **changes: Any):
        return type(self).from_dict(self.to_dict() | changes)

    def cli_args(self) -> list[str]:
        """Flags that reproduce this config (only the values that differ from the defaults)."""
        args = []
        for name, value in self.to_dict(only_changed=True).items():
            args += [f"--{name}", "" if value is None else str(value).lower() if isinstance(value, bool)
                     else str(value)]
        return args

    def command_line(self) -> str:
        return shlex.join(["ftstudio", self.COMMAND, *self.cli_args()])


def to_bool(raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise ValueError(f"must be true or false, got {raw!r}")


def parse_yaml_mapping(text: str, source: str = "yaml") -> dict[str, Any]:
    """A YAML document that must be a mapping; errors name the source, line and column."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML: {_yaml_problem(exc)}"]) from None
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of keys to values, got {type(data).__name__}"])
    return data


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the file ({getattr(exc, 'strerror', None) or exc})"]) from None
    return parse_yaml_mapping(text, str(path))


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's error as one line: what is wrong, at line L, column C (1-based)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if mark is None:
        return problem
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"


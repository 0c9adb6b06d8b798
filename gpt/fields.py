"""Config fields declared once: type, default, choices, range, label and help in one place.

Every config dataclass (`GPTConfig`, `TrainConfig`, `SamplingConfig`, `CleanConfig`) declares its fields
with `option(...)`; the command line (flags, `--help` with choices), the app (labels, sliders, dropdowns,
info text) and validation (`check_fields`, called from `__post_init__`) all read the same metadata, so a
field is added or changed in one line:

    temperature: float = option(1.0, label="Temperature", help="...", minimum=0.0, maximum=2.0)

`FieldSpec` is what the readers get: `field_specs(SamplingConfig)` lists them in declaration order.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

from gpt.errors import UserInputError


def option(
    default: Any,
    *,
    label: str,
    help: str,
    choices: tuple[str, ...] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
    step: float | None = None,
    ui_maximum: float | None = None,
    optional: bool = False,
    noun: str | None = None,
) -> Any:
    """A dataclass field with its metadata. `minimum`/`maximum` bound numbers (inclusive unless the
    `exclusive_*` flag says otherwise); `ui_maximum` is a slider's end when the valid range is open-ended;
    `optional` means None is allowed ("not set"); `noun` names the value in messages ("unknown wandb mode")
    when the field name alone would read oddly."""
    metadata = {"label": label, "help": help, "choices": choices, "minimum": minimum, "maximum": maximum,
                "exclusive_minimum": exclusive_minimum, "exclusive_maximum": exclusive_maximum, "step": step,
                "ui_maximum": ui_maximum, "optional": optional, "noun": noun}
    if isinstance(default, list | dict | set):
        raise TypeError("use a tuple or None as a default, not a mutable value")
    return dataclasses.field(default=default, metadata={"spec": metadata})


@dataclass(frozen=True)
class FieldSpec:
    """One field as the CLI and the UI see it."""

    name: str
    kind: type  # bool, int, float, str or tuple (a tuple of strings)
    default: Any
    label: str
    help: str
    choices: tuple[str, ...] | None
    minimum: float | None
    maximum: float | None
    exclusive_minimum: bool
    exclusive_maximum: bool
    step: float | None
    ui_maximum: float | None
    optional: bool
    noun: str | None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def range_text(self) -> str:
        """'in [0, 1)', '>= 0', '> 0' or '' for the messages and the help."""
        low, high = self.minimum, self.maximum
        if low is not None and high is not None:
            return f"in {'(' if self.exclusive_minimum else '['}{_num(low)}, {_num(high)}" \
                   f"{')' if self.exclusive_maximum else ']'}"
        if low is not None:
            return f"{'>' if self.exclusive_minimum else '>='} {_num(low)}"
        if high is not None:
            return f"{'<' if self.exclusive_maximum else '<='} {_num(high)}"
        return ""

    def describe(self) -> str:
        """The help text with choices and range, as `--help` and the UI's info show it."""
        extra = []
        if self.choices:
            extra.append("choices: " + ", ".join(self.choices))
        if self.range_text():
            extra.append(self.range_text())
        return self.help + (f" ({'; '.join(extra)})" if extra else "")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _kind(annotation: Any) -> type:
    """bool/int/float/str/tuple from a resolved annotation such as `int | None` or `tuple[str, ...]`."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return _kind(args[0])
    if origin is tuple or annotation is tuple:
        return tuple
    return annotation


_SPECS: dict[type, list[FieldSpec]] = {}


def field_specs(cls: type) -> list[FieldSpec]:
    """The fields of a config dataclass declared with `option`, in order (cached per class)."""
    if cls not in _SPECS:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            meta = f.metadata.get("spec")
            if meta is None:
                continue
            specs.append(FieldSpec(name=f.name, kind=_kind(hints[f.name]), default=f.default, **meta))
        _SPECS[cls] = specs
    return _SPECS[cls]


def field_spec(cls: type, name: str) -> FieldSpec:
    for spec in field_specs(cls):
        if spec.name == name:
            return spec
    raise KeyError(name)


def check_field(spec: FieldSpec, value: Any) -> None:
    """Raise `UserInputError(field=spec.name)` unless `value` fits the spec's type, choices and range."""
    name = spec.name
    if value is None:
        if spec.optional:
            return
        raise UserInputError(f"{name} must be set", field=name)
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise UserInputError(f"{name} must be true or false, got {value!r}", field=name)
        return
    if spec.kind is str:
        if not isinstance(value, str):
            raise UserInputError(f"{name} must be text, got {value!r}", field=name)
        if spec.choices is not None and value not in spec.choices:
            raise UserInputError(f"unknown {spec.noun or name} {value!r}; choose one of: {', '.join(spec.choices)}",
                                 field=name)
        return
    if spec.kind is tuple:
        if not isinstance(value, tuple) or not all(isinstance(item, str) for item in value):
            raise UserInputError(f"{name} must be a list of strings, got {value!r}", field=name)
        return
    is_int = isinstance(value, int) and not isinstance(value, bool)
    is_number = is_int or (isinstance(value, float) and math.isfinite(value))
    low, high = spec.minimum, spec.maximum
    fits = is_int if spec.kind is int else is_number
    if fits:
        too_low = low is not None and (value <= low if spec.exclusive_minimum else value < low)
        too_high = high is not None and (value >= high if spec.exclusive_maximum else value > high)
        fits = not (too_low or too_high)
    if not fits:
        raise UserInputError(f"{name} must be {_what(spec)}, got {value!r}", field=name)


def _what(spec: FieldSpec) -> str:
    """'a positive integer', 'a number in [0, 1)', 'an integer >= 0', ..."""
    noun = "integer" if spec.kind is int else "number"
    positive = spec.maximum is None and (
        (spec.minimum == 0 and spec.exclusive_minimum) or (spec.kind is int and spec.minimum == 1))
    if positive:
        return f"a positive {noun}"
    article = "an" if noun == "integer" else "a"
    return f"{article} {noun} {spec.range_text()}".rstrip()


def check_fields(config: Any) -> None:
    """Validate every `option` field of a config dataclass instance (call from `__post_init__`)."""
    for spec in field_specs(type(config)):
        check_field(spec, getattr(config, spec.name))


def from_dict(cls: type, data: dict, what: str) -> Any:
    """`cls(**data)` with a clear message for keys the class does not have and for a non-object."""
    if not isinstance(data, dict):
        raise UserInputError(f"{what} must be a JSON object, got {type(data).__name__}")
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise UserInputError(f"unknown {what} option(s) {', '.join(unknown)}; allowed options: {', '.join(allowed)}")
    values = {}
    for key, value in data.items():
        if isinstance(value, list):  # JSON has no tuples
            value = tuple(value)
        values[key] = value
    return cls(**values)

"""JobConfig metadata -> Gradio controls: Dropdown for choices, Checkbox for bools, Number or Textbox.

Labels and help come from the i18n table (English help is the schema's own), defaults from
JobConfig's defaults: the UI keeps no second copy of either.
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from app.config import JobConfig
from app.ui.context import StudioContext
from app.ui.forms import choice_values, control_kind, group_fields, to_control


def field_control(ctx: StudioContext, name: str, **kwargs: Any) -> Any:
    """Create the control of one JobConfig field (registered for re-labelling and in ctx.fields)."""
    spec = JobConfig.spec()[name]
    kind = control_kind(name)
    value = to_control(name, spec.default)
    key = f"field.{name}"
    common: dict[str, Any] = {"value": value, "elem_id": f"field-{name}"} | kwargs
    if kind == "multiselect":
        control = ctx.make(gr.Dropdown, key, **({"choices": [], "multiselect": True} | common))
    elif kind == "dropdown":
        control = ctx.make(gr.Dropdown, key, **({"choices": choice_values(name)} | common))
    elif kind == "checkbox":
        control = ctx.make(gr.Checkbox, key, **common)
    elif kind == "number":
        is_int = JobConfig.field_type(name) is int
        step = 1 if is_int else _float_step(spec.default)
        control = ctx.make(gr.Number, key, precision=0 if is_int else None, step=step, **common)
    else:
        control = ctx.make(gr.Textbox, key, lines=1, **common)
    ctx.fields[name] = control
    return control


def _float_step(default: Any) -> float:
    if isinstance(default, float) and 0 < default < 0.01:
        return default  # learning rates: arrows move by the default's size
    return 0.01 if isinstance(default, float) and default < 1 else 1


def field_group(ctx: StudioContext, group: str, columns: int = 3, skip: tuple[str, ...] = ()) -> list[Any]:
    """Controls of every field in `group`, laid out `columns` to a row."""
    names = [n for n in group_fields(group) if n not in skip]
    controls = []
    for start in range(0, len(names), columns):
        with gr.Row():
            controls += [field_control(ctx, name) for name in names[start:start + columns]]
    return controls

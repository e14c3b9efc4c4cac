"""Forms built from config dataclass descriptions (`describe_fields`): one widget per field.

choices -> selectbox, bool -> checkbox, int/float -> number input with the field's bounds, list ->
text (comma separated or JSON), str -> text; the field's help is the widget's tooltip. Values go
back to the engine as they are; the engine parses and validates them and says what is wrong.
"""

from __future__ import annotations

import math

import streamlit as st

NONE_CHOICE = "(none)"


def _float_step(default, minimum, maximum) -> float:
    for value in (default, minimum, maximum):
        if isinstance(value, (int, float)) and value not in (0, None) and abs(value) < 1e6:
            return float(10.0 ** math.floor(math.log10(abs(value))))
    return 0.01


def _initial(key: str, default):
    """Widget keyword for its starting value, left out once session state holds one (no warning)."""
    return {} if key in st.session_state else {"value": default}


def field_widget(field: dict, key: str, *, overrides: dict | None = None, reference_options: list[str] | None = None,
                 reference_labels: dict | None = None):
    """One widget for one described field; returns its value in a form the engine parses."""
    overrides = overrides or {}
    name = field["name"]
    label = overrides.get("label") or name.replace("_", " ")
    help_text = field.get("help") or None
    default = overrides.get("default", field.get("default"))
    kind = field.get("type")
    optional = field.get("optional", False)
    minimum = overrides.get("min", field.get("min"))
    maximum = overrides.get("max", field.get("max"))
    choices = field.get("choices")

    if reference_options is not None:
        options = [""] + [o for o in reference_options if o]
        if key in st.session_state and st.session_state[key] not in options:
            options.append(st.session_state[key])
        index = options.index(default) if default in options else 0
        value = st.selectbox(
            label, options, index=None if key in st.session_state else index, key=key, help=help_text,
            accept_new_options=True, placeholder="a finished run, or type a model folder",
            format_func=lambda v: (reference_labels or {}).get(v, v) if v else "(choose a finished run)",
        )
        return value or None
    if choices and kind == "list":
        chosen = [v for v in (default or []) if v in choices]
        return st.multiselect(label, list(choices), key=key, help=help_text,
                              **({} if key in st.session_state else {"default": chosen}))
    if choices:
        options = list(choices) + ([NONE_CHOICE] if optional else [])
        start = NONE_CHOICE if default is None else default
        index = options.index(start) if start in options else 0
        value = st.selectbox(label, options, index=index if key not in st.session_state else None, key=key,
                             help=help_text)
        return None if value == NONE_CHOICE else value
    if kind == "bool":
        return st.checkbox(label, key=key, help=help_text, **_initial(key, bool(default)))
    if kind == "int":
        return st.number_input(
            label, min_value=None if minimum is None else int(minimum), max_value=None if maximum is None else int(maximum),
            step=1, key=key, help=help_text, placeholder=overrides.get("placeholder", "empty: none"),
            **_initial(key, None if default is None else int(default)),
        )
    if kind == "float":
        return st.number_input(
            label, min_value=None if minimum is None else float(minimum),
            max_value=None if maximum is None else float(maximum),
            step=overrides.get("step") or _float_step(default, minimum, maximum), format="%g", key=key, help=help_text,
            placeholder=overrides.get("placeholder", "empty: none"),
            **_initial(key, None if default is None else float(default)),
        )
    if kind == "list":
        text_default = ", ".join(str(v) for v in default) if isinstance(default, list) else ("" if default is None else str(default))
        text = st.text_input(label, key=key, help=(help_text or "") + " (comma separated)", **_initial(key, text_default))
        return text
    text = st.text_input(label, key=key, help=help_text, **_initial(key, "" if default is None else str(default)))
    return text if text != "" or not optional else None


def settings_form(fields: list[dict], key_prefix: str, *, columns: int = 2, overrides: dict | None = None,
                  references: dict[str, tuple[list[str], dict]] | None = None) -> dict:
    """Widgets for every field (advanced ones in an expander); returns {name: value}."""
    overrides = overrides or {}
    references = references or {}
    values: dict = {}
    basic = [f for f in fields if not f.get("advanced")]
    advanced = [f for f in fields if f.get("advanced")]

    def draw(group, container):
        if not group:
            return
        cols = container.columns(columns)
        for i, field in enumerate(group):
            with cols[i % columns]:
                options, labels = references.get(field["name"], (None, None))
                values[field["name"]] = field_widget(
                    field, f"{key_prefix}.{field['name']}", overrides=overrides.get(field["name"]),
                    reference_options=options, reference_labels=labels,
                )

    draw(basic, st.container())
    if advanced:
        draw(advanced, st.expander("Advanced settings"))
    return values

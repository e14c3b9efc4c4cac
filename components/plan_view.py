"""The Plan page's parts: what to plan (model, methods, device, shape, method settings), each
method's memory surface measured once with a progress bar, and the figures read off it.

Moving the batch, length or device only reads the cached surfaces, so the page redraws at once;
a new model or method setting measures nine estimates per method first.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import streamlit as st

from app.config_models import describe_config_models
from components import figures
from components.common import method_title

OWN_CONFIG = "Your own config.json…"
DEFAULT_MODEL = "config:llama-3.1-8b"
DEFAULT_METHODS = ("full_ft", "lora", "lst")
LST_REDUCTIONS = (2, 4, 8, 16, 32, 64)
LORA_RANKS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# A fixed label: one that showed the free amount would change as memory moves, and a selectbox
# whose options change forgets what was picked.
THIS_MACHINE = "this machine's free memory"
SURFACES_KEPT = 256
SHORTEST_DRAWN = 64  # shorter inputs change little that a plan needs


def _gib(value: int) -> str:
    return f"{value / 1024**3:,.2f} GiB"


@st.cache_data(show_spinner=False, max_entries=256)
def _lab_backbones() -> list[str]:
    # imported on first use: listing backbones loads transformers, which a first draw does not wait for
    from app.backbones import list_backbones

    return [row["name"] for row in list_backbones() if row.get("available")]


def model_choices() -> dict[str, str]:
    """Label of every model the page offers, by the name the engine takes."""
    shipped = {row["name"]: f"{row['title']} ({row['published_params']}, config only)"
               for row in describe_config_models()}
    lab = {name: f"{name} (weights on this machine)" for name in _lab_backbones()}
    return {**shipped, **lab, OWN_CONFIG: OWN_CONFIG}


@st.cache_data(show_spinner=False, max_entries=64)
def supported_methods_of(backbone: str, task: str = "classification") -> list[str] | str:
    """The methods this backbone takes for runs of `task`, or the engine's one-line message about it."""
    from app.backbones import get_backbone
    from app.errors import LabError
    from app.methods import METHODS, supported_methods

    try:
        return [m for m in supported_methods(get_backbone(backbone)) if task in METHODS[m].tasks]
    except LabError as exc:
        return str(exc)


@st.cache_data(show_spinner=False, max_entries=64)
def tasks_of(backbone: str) -> list[str]:
    """What runs on this backbone can train: classifiers, and on a decoder language models too."""
    from app.backbones import get_backbone
    from app.errors import LabError
    from app.tasks import CAUSAL_LM, CLASSIFICATION

    try:
        causal = get_backbone(backbone).family.causal
    except LabError:
        causal = False  # the methods list says what is wrong with it
    return [CLASSIFICATION, CAUSAL_LM] if causal else [CLASSIFICATION]


@st.cache_resource(show_spinner=False)
def _surfaces() -> OrderedDict:
    """Measured surfaces, shared by every session: (backbone, method, settings, bf16, precision) -> surface or
    the engine's one-line message. Not `st.cache_data`: a miss reports progress to the page."""
    return OrderedDict()


def _surface(backbone: str, method: str, settings_json: str, bf16: bool, precision: str, task: str, progress):
    from app.errors import LabError
    from app.planning import measure_surface

    cache, key = _surfaces(), (backbone, method, settings_json, bf16, precision, task)
    if key not in cache:
        try:
            cache[key] = measure_surface(backbone, method, json.loads(settings_json), bf16=bf16,
                                         backbone_precision=precision, progress=progress, task=task)
        except LabError as exc:
            cache[key] = str(exc)
        while len(cache) > SURFACES_KEPT:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return cache[key]


@st.cache_data(show_spinner=False, max_entries=512)
def _direct(backbone: str, method: str, settings_json: str, bf16: bool, precision: str, batch: int, length: int,
            task: str):
    from app.errors import LabError
    from app.estimate import estimate_memory

    try:
        return estimate_memory(backbone, method, batch, length, json.loads(settings_json), bf16=bf16,
                               backbone_precision=precision, task=task).as_dict()
    except LabError as exc:
        return {"error": str(exc)}


@st.cache_data(show_spinner=False, max_entries=64)
def length_choices(backbone: str) -> list[int]:
    from app.planning import PLAN_LENGTHS, longest_input

    longest = longest_input(backbone, "full_ft")
    return [n for n in PLAN_LENGTHS if SHORTEST_DRAWN <= n <= longest] or [longest]


def method_settings(method: str, lst_reduction: int, lst_dropping: str, lora_rank: int) -> dict:
    if method == "lst":
        return {"reduction_factor": lst_reduction, "layer_dropping": lst_dropping}
    if method == "lora":
        return {"rank": lora_rank}
    return {}


def precision_choices() -> list[str]:
    """The run setting's choices (`backbone_precision`)."""
    from app.config import describe_fields_cache

    return list(describe_fields_cache()["backbone_precision"]["choices"])


def precisions_of(methods: list[str], chosen: str) -> dict[str, str]:
    """The frozen-backbone precision each method is planned with: the one chosen where the method keeps
    a frozen backbone, fp32 for the rest (they train every weight)."""
    from app.methods import METHODS
    from app.precision import allowed_precisions

    return {m: chosen if chosen in allowed_precisions(METHODS[m]) else "fp32" for m in methods}


def measure(backbone: str, methods: list[str], settings: dict[str, dict], bf16: bool,
            precisions: dict[str, str], task: str = "classification") -> dict:
    """Every method's surface (or its error message), with one progress bar over the misses."""
    bar = st.empty()
    surfaces = {}
    for number, method in enumerate(methods, 1):
        def progress(done: int, total: int, method=method, number=number) -> None:
            bar.progress(done / total, text=f"Estimating {method_title(method)} ({number} of {len(methods)}): "
                                            f"{done} of {total} fake steps")

        surfaces[method] = _surface(backbone, method, json.dumps(settings[method], sort_keys=True), bf16,
                                    precisions[method], task, progress)
    bar.empty()
    return surfaces


def device_choices() -> dict[str, tuple[int | None, bool, str]]:
    """Label -> (capacity in bytes, whether the CUDA allowance applies, where the figure comes from)."""
    import torch

    from app.estimate import DEVICE_SIZES_GB, available_memory
    from app.planning import device_capacity

    choices = {f"{gb} GB GPU": (device_capacity(gb), True, f"a {gb} GB card") for gb in DEVICE_SIZES_GB}
    here = "cuda" if torch.cuda.is_available() else "cpu"
    free, source = available_memory(here)
    if free:
        choices[THIS_MACHINE] = (free, here == "cuda", f"{_gib(free)} free now, {source}")
    return choices


def render_plan(backbone: str, surfaces: dict, *, batch: int, length: int, device_label: str,
                device: tuple[int, bool, str], bf16: bool, settings: dict[str, dict],
                precisions: dict[str, str]) -> None:
    """`device`: the entry of `device_choices` picked, read once per rerun."""
    from app.estimate import ALLOCATOR_SLACK, CUDA_CONTEXT_BYTES
    from app.planning import fits_text, plan_lengths

    capacity, cuda, source = device
    errors = {m: s for m, s in surfaces.items() if isinstance(s, str)}
    for method, message in errors.items():
        st.warning(f"{method_title(method)}: {message}")
    good = {m: s for m, s in surfaces.items() if not isinstance(s, str)}
    if not good:
        return
    series = {}
    for method, surface in good.items():
        drawn = [n for n in plan_lengths(surface.longest) if n >= SHORTEST_DRAWN] or [surface.longest]
        series[method_title(method)] = [(n, surface.need(batch, n, cuda=cuda)) for n in drawn]
    what = "needed on CUDA (peak + allowance)" if cuda else "predicted peak"
    st.plotly_chart(
        figures.plan_curves(series, capacity=capacity, capacity_label=device_label, chosen_length=length,
                            y_title=f"memory {what}"),
        key="plan.curves", config={"displayModeBar": False},
    )
    allowance = (f"On a GPU each point adds a documented allowance to the predicted peak: {_gib(CUDA_CONTEXT_BYTES)} "
                 f"for the CUDA context and {ALLOCATOR_SLACK:.0%} for the caching allocator (`CUDA_CONTEXT_BYTES`, "
                 "`ALLOCATOR_SLACK` in `app/estimate.py`), taken from what CUDA set-ups commonly show, not measured by "
                 "this lab." if cuda else "This machine's memory is compared with the predicted peak itself (no CUDA "
                 "allowance).")
    st.caption(f"Batch {batch}; the dotted line marks {length} tokens; the dashed line is {device_label} ({source}). "
               f"{allowance} Every point is read off nine fake training steps per method (batch 1-3 at "
               f"{', '.join(str(n) for n in next(iter(good.values())).lengths)} tokens), which give every batch and "
               "length exactly.")

    rows, parts, extra = [], {}, {}
    for method, surface in good.items():
        title = method_title(method)
        if length > surface.longest:
            rows.append({"method": title, "frozen backbone": precisions[method], "peak": "—", "needed": "—",
                         "fits": "input too long",
                         f"largest batch at {length} tokens": "—", "trainable": f"{surface.trainable_params:,}",
                         "measured in": f"{surface.seconds:.1f} s"})
            continue
        breakdown = surface.breakdown(batch, length)
        peak = sum(breakdown.values())
        need = surface.need(batch, length, cuda=cuda)
        parts[title] = breakdown
        extra[title] = need - peak
        rows.append({"method": title, "frozen backbone": precisions[method], "peak": _gib(peak), "needed": _gib(need),
                     "fits": "yes" if need <= capacity else "no",
                     f"largest batch at {length} tokens": fits_text(surface.largest_batch(length, capacity, cuda=cuda)),
                     "trainable": f"{surface.trainable_params:,}", "measured in": f"{surface.seconds:.1f} s"})
    st.markdown(f"**At batch {batch} × {length} tokens on {device_label}**")
    st.dataframe(rows, hide_index=True, width="stretch")
    if parts:
        st.plotly_chart(figures.plan_breakdown(parts, allowance=extra if cuda else None), key="plan.breakdown",
                        config={"displayModeBar": False})
        _show_check(backbone, good, parts, batch=batch, length=length, bf16=bf16, settings=settings,
                    precisions=precisions)


def _show_check(backbone: str, surfaces: dict, parts: dict, *, batch: int, length: int, bf16: bool,
                settings: dict[str, dict], precisions: dict[str, str]) -> None:
    """The point on screen, estimated directly: the surface must agree with it to the byte."""
    disagree = []
    for method, surface in surfaces.items():
        if method_title(method) not in parts:
            continue
        direct = _direct(backbone, method, json.dumps(settings[method], sort_keys=True), bf16, precisions[method],
                         batch, length, surface.task)
        if "error" in direct:
            disagree.append(f"{method_title(method)}: {direct['error']}")
        elif direct["breakdown"] != parts[method_title(method)]:
            disagree.append(f"{method_title(method)}: direct estimate {_gib(direct['predicted_peak_bytes'])}")
    if disagree:
        st.warning("The surface and a direct estimate of this point differ — trust the direct one: "
                   + "; ".join(disagree))
    else:
        st.caption(f"Checked: a direct estimate of batch {batch} × {length} tokens equals the surface to the byte for "
                   "every method shown.")

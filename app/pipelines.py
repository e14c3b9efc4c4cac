"""Multi-run recipes queued as one chain: "fine-tune a predecessor, then compress it".

A chain runs in order on one worker; a later run names an earlier one with "@chain:N", which the
run manager replaces by that run's id. A run whose predecessor did not finish fails with that
reason instead of starting.
"""

from __future__ import annotations

from .config import RunConfig
from .errors import ConfigError

RUN_ONLY_FIELDS = ("method", "method_config")


def _base(base_config: RunConfig | dict) -> dict:
    values = base_config.as_dict() if isinstance(base_config, RunConfig) else dict(base_config)
    for key in RUN_ONLY_FIELDS:
        values.pop(key, None)
    return values


def _named(values: dict, suffix: str) -> str:
    prefix = (values.get("name") or "").strip()
    return f"{prefix} · {suffix}" if prefix else suffix


def theseus_chain(
    base_config: RunConfig | dict,
    *,
    layers: int | None = None,
    include_truncate: bool = True,
    include_distill: bool = False,
    predecessor_overrides: dict | None = None,
    theseus_settings: dict | None = None,
    truncate_settings: dict | None = None,
    distill_settings: dict | None = None,
) -> list[dict]:
    """Run configs for a full Theseus experiment on one backbone and dataset, in chain order:

    0. the predecessor: full fine-tuning of the backbone (`predecessor_overrides` changes its run
       settings, e.g. more steps);
    1. Theseus with predecessor "@chain:0" and `layers` successor layers (default: half);
    2. optionally the truncation baseline with the same number of layers (what Theseus must beat);
    3. optionally distillation from the same predecessor into the same number of layers.
    """
    base = _base(base_config)
    if layers is not None and layers < 1:
        raise ConfigError(f"layers must be at least 1, got {layers}")
    for name, settings in (("theseus_settings", theseus_settings), ("truncate_settings", truncate_settings),
                           ("distill_settings", distill_settings)):
        if layers is not None and settings and "layers" in settings:
            raise ConfigError(f"give the layer count once, as layers=, not also inside {name}")
    depth = {} if layers is None else {"layers": layers}
    label = f"{layers} layers" if layers is not None else "half the layers"

    predecessor = dict(base, **(predecessor_overrides or {}))
    predecessor.update(method="full_ft", method_config={}, name=_named(base, "predecessor (full fine-tuning)"))
    configs = [predecessor]
    configs.append(dict(base, method="theseus", name=_named(base, f"Theseus → {label}"),
                        method_config={**(theseus_settings or {}), **depth, "predecessor": "@chain:0"}))
    if include_truncate:
        configs.append(dict(base, method="truncate", name=_named(base, f"truncate to {label}"),
                            method_config={**(truncate_settings or {}), **depth}))
    if include_distill:
        configs.append(dict(base, method="distill", name=_named(base, f"distill into {label}"),
                            method_config={**(distill_settings or {}), **depth, "teacher": "@chain:0"}))
    return configs


def submit_theseus_chain(manager, base_config: RunConfig | dict, **options) -> dict[str, str]:
    """Queue `theseus_chain(...)` on a RunManager; returns the run ids by role."""
    configs = theseus_chain(base_config, **options)
    ids = manager.submit_chain(configs)
    return {config["method"] if config["method"] != "full_ft" else "predecessor": run_id
            for config, run_id in zip(configs, ids)}

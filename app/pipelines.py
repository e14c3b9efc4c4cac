"""Multi-run recipes queued as one chain: "fine-tune a predecessor, then compress it".

A recipe is its runs by role, in order: {role: run config}. A method setting that names a run the
recipe makes first says so in one form wherever the recipe comes from: "@role:NAME" (`role_ref`).
Theseus's chain below writes it, so do the lessons (app.lessons), and on the command line
`train --method theseus --set predecessor=new` (`NEW_RUN`) asks for that chain. `queue_recipe`
resolves every reference through `resolve_role_refs` and queues the runs as one chain: they run in
order on one worker, and a run whose reference did not finish fails with that reason instead of
starting.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from .errors import ConfigError
from .run_refs import resolve_role_refs, role_ref

if TYPE_CHECKING:  # the recipes are plain data: importing them (lessons, the CLI's listing) loads no torch
    from .config import RunConfig

# What a user types for a reference setting to have that run made first (the command line's shorthand).
NEW_RUN = "new"
RUN_ONLY_FIELDS = ("method", "method_config")


def asks_for_new_run(value) -> bool:
    return str(value or "").strip().lower() == NEW_RUN


@dataclass
class QueuedRecipe:
    runs: dict[str, str]  # role -> run id (given and reused runs included)
    reused: list[str] = field(default_factory=list)  # roles whose identical finished run was taken


def queue_recipe(manager, recipe: dict[str, dict], *, given: dict[str, str] | None = None,
                 reuse: Callable[[dict], str | None] | None = None, name: str = "recipe") -> QueuedRecipe:
    """Queue a recipe's runs as one chain. `given` maps roles already made to their runs (they are
    left out of `recipe`); `reuse(config)` may return a finished run to take instead of training
    one (asked only of a run whose references all name existing runs). Every check runs before
    anything is queued."""
    run_ids = dict(given or {})
    chain: dict[str, dict] = {}
    reused: list[str] = []
    for role, config in recipe.items():
        settings, pending = resolve_role_refs(config.get("method_config") or {}, run_ids, list(chain),
                                              whose=f"{name}: role '{role}'")
        config = dict(config, method_config=settings)
        existing = None if pending or reuse is None else reuse(config)
        if existing:
            run_ids[role] = existing
            reused.append(role)
        else:
            chain[role] = config
    if chain:
        run_ids.update(manager.submit_chain(chain))
    return QueuedRecipe(run_ids, reused)


def _base(base_config: RunConfig | dict) -> dict:
    values = base_config.as_dict() if hasattr(base_config, "as_dict") else dict(base_config)
    for key in RUN_ONLY_FIELDS:
        values.pop(key, None)
    return values


def _named(values: dict, suffix: str) -> str:
    prefix = (values.get("name") or "").strip()
    return f"{prefix} · {suffix}" if prefix else suffix


def theseus_recipe(
    base_config: RunConfig | dict,
    *,
    layers: int | None = None,
    include_truncate: bool = True,
    include_distill: bool = False,
    predecessor_overrides: dict | None = None,
    theseus_settings: dict | None = None,
    truncate_settings: dict | None = None,
    distill_settings: dict | None = None,
) -> dict[str, dict]:
    """Run configs for a full Theseus experiment on one backbone and dataset, by role in chain order:

    - predecessor: full fine-tuning of the backbone (`predecessor_overrides` changes its run
      settings, e.g. more steps);
    - theseus: Theseus from "@role:predecessor" to `layers` successor layers (default: half);
    - truncate, optionally: the truncation baseline with the same number of layers (what Theseus
      must beat);
    - distill, optionally: distillation from the same predecessor into the same number of layers.
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
    recipe = {"predecessor": predecessor}
    recipe["theseus"] = dict(base, method="theseus", name=_named(base, f"Theseus → {label}"),
                             method_config={**(theseus_settings or {}), **depth,
                                            "predecessor": role_ref("predecessor")})
    if include_truncate:
        recipe["truncate"] = dict(base, method="truncate", name=_named(base, f"truncate to {label}"),
                                  method_config={**(truncate_settings or {}), **depth})
    if include_distill:
        recipe["distill"] = dict(base, method="distill", name=_named(base, f"distill into {label}"),
                                 method_config={**(distill_settings or {}), **depth,
                                                "teacher": role_ref("predecessor")})
    return recipe


def submit_theseus_chain(manager, base_config: RunConfig | dict, **options) -> dict[str, str]:
    """Queue `theseus_recipe(...)` on a RunManager; returns the run ids by role."""
    return queue_recipe(manager, theseus_recipe(base_config, **options), name="Theseus chain").runs

"""How one run's setting names another run (a Theseus predecessor, a distillation teacher): a
finished run's id, a model folder, or "@role:NAME" for the run NAME of the same recipe, made
first. Recipes (lessons, the Theseus chain, `train --set predecessor=new`) and the run manager
read and write references only through these functions."""

from __future__ import annotations

from .errors import ConfigError

ROLE_REF = "@role:"


def role_ref(role: str) -> str:
    """The setting value that names the run `role` of the same recipe."""
    return ROLE_REF + role


def referenced_role(value) -> str | None:
    """The role a setting value names ("@role:NAME"), or None for any other value."""
    if isinstance(value, str) and value.startswith(ROLE_REF):
        return value[len(ROLE_REF):]
    return None


def resolve_role_refs(settings: dict, run_ids: dict[str, str], queued: list[str], *,
                      whose: str) -> tuple[dict, bool]:
    """`settings` with every "@role:NAME" whose run exists (`run_ids`: given, reused or just made)
    replaced by that run's id. A reference to a role queued before this run (`queued`) stays as it
    is, for the run manager to fill in once the chain has ids. Also returns whether any such
    reference is left; a reference to any other role is refused."""
    resolved, pending = dict(settings), False
    for key, value in settings.items():
        role = referenced_role(value)
        if role is None:
            continue
        if role in run_ids:
            resolved[key] = run_ids[role]
        elif role in queued:
            pending = True
        else:
            raise ConfigError(f"{whose} names '{role}', which is not before it")
    return resolved, pending

"""The facts a method declares about itself (class attributes the pages, the lessons and the
explanations read instead of lists of method names) against what the method does: its input
positions and the memory the estimate measures for one step on the tiny backbone."""

from __future__ import annotations

import pytest

from app.methods import METHODS, create_method

# A parameter-efficient method trains under this share of the weights.
FEW_TRAINABLE = 0.10
# Methods that need another finished run to build (a predecessor or a teacher).
NEEDS_A_REFERENCE = tuple(name for name, cls in METHODS.items() if cls.reference_fields)


@pytest.mark.parametrize("name", list(METHODS))
def test_virtual_token_methods_and_only_they_add_input_positions(name):
    method = create_method(name)
    assert type(method).prepends_virtual_tokens == (method.extra_input_tokens() > 0)


@pytest.fixture(scope="module")
def step_memory():
    """Activations and trainable share of one step of each method that builds on its own."""
    from app.estimate import estimate_memory

    measured = {}
    for name in METHODS:
        if name in NEEDS_A_REFERENCE:
            continue
        estimate = estimate_memory("tiny-random", name, 8, 32)
        measured[name] = (estimate.activations, estimate.trainable_params / estimate.total_params)
    return measured


def test_methods_that_backprop_through_the_backbone_keep_its_activations(step_memory):
    full_activations, _ = step_memory["full_ft"]
    for name, (activations, trainable) in step_memory.items():
        cls = METHODS[name]
        if trainable >= FEW_TRAINABLE:
            assert not cls.backprop_crosses_frozen_backbone and not cls.trains_side_network, name
            continue
        keeps_most = activations >= 0.6 * full_activations
        assert cls.backprop_crosses_frozen_backbone == keeps_most, (name, activations / full_activations)
        assert cls.trains_side_network == (activations < full_activations / 3), (name, activations / full_activations)
    assert any(cls.trains_side_network for cls in METHODS.values())
    assert any(cls.backprop_crosses_frozen_backbone for cls in METHODS.values())


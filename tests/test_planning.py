"""The planner's two shortcuts, each against the full estimate: the peak at any batch from batches
1 and 2, and a deep stack from three shallow ones; the largest batch a device holds; data-parallel
figures."""

from __future__ import annotations

import copy

import pytest

from app.backbones import get_backbone
from app.methods import METHODS, supported_methods

PARTS = ("weights", "gradients", "optimizer", "activations")
BATCH_CASES = [("tiny-random", m) for m in METHODS] + [
    ("tiny-random-llama", m) for m in METHODS if m in supported_methods(get_backbone("tiny-random-llama"))]


@pytest.mark.parametrize("backbone,method", BATCH_CASES, ids=[f"{b}-{m}" for b, m in BATCH_CASES])
def test_the_surface_equals_the_full_estimate_at_points_it_did_not_measure(backbone, method):
    from app.estimate import estimate_memory
    from app.planning import measure_surface

    surface = measure_surface(backbone, method)
    assert surface.lengths[0] == 16 and surface.lengths[2] == surface.longest
    for batch, length in ((1, 40), (4, 100), (11, 24), (7, surface.longest)):
        direct = estimate_memory(backbone, method, batch, length)
        assert surface.breakdown(batch, length) == direct.breakdown, (batch, length)


LM_CASES = [("tiny-random-llama", m) for m in ("full_ft", "lora", "lst", "theseus")]


@pytest.mark.parametrize("backbone,method", LM_CASES, ids=[f"{b}-{m}-causal-lm" for b, m in LM_CASES])
def test_a_language_model_surface_equals_the_full_estimate(backbone, method):
    """Planned as a language model (a label at every position, the chunked loss's own part), the
    surface still gives every point exactly, and the loss part grows with the tokens."""
    from app.estimate import estimate_memory
    from app.planning import measure_surface

    surface = measure_surface(backbone, method, task="causal-lm")
    for batch, length in ((1, 40), (4, 100), (7, surface.longest)):
        direct = estimate_memory(backbone, method, batch, length, task="causal-lm")
        assert surface.breakdown(batch, length) == direct.breakdown, (batch, length)
    assert 0 < surface.breakdown(2, 64)["loss"] < surface.breakdown(4, 64)["loss"] < surface.breakdown(4, 128)["loss"]
    assert measure_surface(backbone, method).breakdown(4, 64)["loss"] == 0


def _deep(backbone: str, layers: int = 18):
    config = copy.deepcopy(get_backbone(backbone).config)
    config.num_hidden_layers = layers
    if getattr(config, "layer_types", None):
        config.layer_types = [config.layer_types[0]] * layers
    return config


LAYERED = [m for m in METHODS if METHODS[m]().memory_affine_in_layers()]
DEPTH_CASES = [(b, m) for b in ("tiny-random", "tiny-random-llama", "tiny-random-gpt2") for m in LAYERED
               if m in supported_methods(get_backbone(b))]


@pytest.mark.parametrize("backbone,method", DEPTH_CASES, ids=[f"{b}-{m}" for b, m in DEPTH_CASES])
def test_a_deep_stack_extended_from_three_shallow_ones_equals_the_full_step(backbone, method):
    from app.estimate import estimate_memory

    config = _deep(backbone)
    extended = estimate_memory(config, method, 4, 32)
    full = estimate_memory(config, method, 4, 32, extrapolate=False)
    assert any(note.startswith("stepped at 1, 2, 3 layers") for note in extended.notes)
    for name in (*PARTS, "trainable_params", "total_params"):
        assert getattr(extended, name) == getattr(full, name), name


def test_methods_whose_layers_differ_are_stepped_at_full_depth():
    from app.estimate import estimate_memory

    assert set(LAYERED) == {"full_ft", "lora", "adapter", "bitfit", "prompt_tuning", "p_tuning", "lst"}
    config = _deep("tiny-random")
    for method, settings in (("lst", {"layer_dropping": "every_other"}), ("truncate", {}), ("theseus", {})):
        estimate = estimate_memory(config, method, 2, 16, settings)
        assert not any(note.startswith("stepped at") for note in estimate.notes), method
    mixed = _deep("tiny-random-llama")
    mixed.layer_types = ["full_attention", "sliding_attention"] * 9
    mixed.sliding_window = 8
    assert not any(n.startswith("stepped at") for n in estimate_memory(mixed, "lora", 2, 16).notes)


def test_the_largest_batch_is_the_last_one_whose_need_fits():
    from app.estimate import GiB, cuda_requirement
    from app.planning import measure_surface

    surface = measure_surface("config:qwen2.5-0.5b", "lst")
    for capacity in (4 * GiB, 8 * GiB, 24 * GiB):
        batch = surface.largest_batch(1024, capacity)
        assert batch >= 1
        assert cuda_requirement(surface.peak(batch, 1024)) <= capacity < cuda_requirement(surface.peak(batch + 1, 1024))
    assert surface.largest_batch(8192, surface.need(1, 8192) - 1) == 0
    assert surface.largest_batch(128, 10**15) == 4096  # the run setting's own limit
    cpu = surface.largest_batch(512, 8 * GiB, cuda=False)
    assert surface.peak(cpu, 512) <= 8 * GiB < surface.peak(cpu + 1, 512)


def test_plan_lengths_stop_at_the_longest_input():
    from app.planning import longest_input, plan_lengths

    assert plan_lengths(512) == [16, 32, 64, 128, 256, 512]
    assert plan_lengths(600)[-2:] == [512, 600]
    assert longest_input("config:llama-3.1-8b", "lora") == 8192  # the run setting's limit, not 131,072
    assert longest_input("config:bert-base", "prompt_tuning", {"num_virtual_tokens": 30}) == 482


def test_a_large_models_point_is_checked_against_the_direct_estimate():
    """LST on Llama-3.1-8B as a language model (what LST's successors tune): the surface's point
    equals a direct estimate there, the chunked loss's part included."""
    from app.planning import check_point, measure_surface

    surface = measure_surface("config:llama-3.1-8b", "lst", {"reduction_factor": 16}, task="causal-lm")
    check = check_point(surface, "config:llama-3.1-8b", {"reduction_factor": 16}, 6, 3000)
    assert check["agrees"], check
    assert check["direct"]["loss"] == 6 * 2999 * 4 * 4096 + 8  # the states' gradient (the head is frozen), the count


def test_data_parallel_figures_are_one_process_with_its_gradient_buckets():
    from app.errors import ConfigError
    from app.estimate import estimate_memory

    alone = estimate_memory("tiny-random", "lora", 3, 32)
    shared = estimate_memory("tiny-random", "lora", 12, 32, processes=4)
    assert shared.batch_size == 3 and shared.processes == 4
    assert shared.activations == alone.activations and shared.weights == alone.weights
    assert shared.gradient_buckets == alone.gradients and shared.gradients == 2 * alone.gradients
    assert shared.predicted_peak_bytes == alone.predicted_peak_bytes + alone.gradients
    assert estimate_memory("tiny-random", "lora", 7, 32, processes=2).batch_size == 4  # the larger share
    with pytest.raises(ConfigError, match="cannot share a batch of 2"):
        estimate_memory("tiny-random", "lora", 2, 32, processes=3)


def test_the_cli_estimates_per_process_and_names_the_padding(capsys):
    import json

    from app.cli import main

    assert main(["estimate", "--backbone", "tiny-random", "--method", "lora", "--batch-size", "8", "--max-length",
                 "32", "--processes", "2", "--padding", "max", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["batch_size"] == 4 and result["processes"] == 2 and result["gradient_buckets"] > 0
    assert result["notes"][0].startswith("padding = max: every batch")
    assert main(["estimate", "--backbone", "tiny-random", "--padding", "none"]) == 2
    assert "'padding' must be one of dynamic, max" in capsys.readouterr().err

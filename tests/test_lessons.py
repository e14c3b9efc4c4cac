"""Lessons: recipes in the engine, queued the same way by the CLI and the app, checked on their runs.

The recipes run here on their `tiny` preset (random tiny-random weights: the path, not the claim);
the claims themselves are measured by `benchmarks/lessons.py` on the default preset, and the
real-weights Theseus lesson test lives in test_real_methods.py.
"""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.errors import ConfigError
from app.lessons import (
    LESSONS, Check, LessonRuns, check_lst_memory, check_shrink, check_theseus, get_lesson, lesson_findings,
    role_configs, submit_lesson,
)
from app.lessons.lst_language_model import check_lst_language_model
from app.run_refs import referenced_role, resolve_role_refs, role_ref

CONTRACT = {"lesson", "preset", "seed", "runs", "wall_seconds", "findings", "demonstrated", "reason"}


def _cli_json(capsys, *args) -> tuple[int, dict]:
    code = main(list(args))
    out = capsys.readouterr().out.strip().splitlines()
    return code, json.loads(out[-1])


def test_lessons_lists_every_lesson_with_its_presets(capsys, tmp_path):
    code, listed = _cli_json(capsys, "lessons", "--json", "--runs-dir", str(tmp_path))
    assert code == 0
    by_name = {lesson["name"]: lesson for lesson in listed["lessons"]}
    assert set(by_name) == {"lst-memory", "theseus", "shrink", "lst-language-model"}
    for lesson in by_name.values():
        assert {"cpu", "cuda", "tiny"} <= set(lesson["presets"])
        assert lesson["default_preset"] == "cpu"  # no CUDA on the test machine
        assert lesson["claim"] and lesson["page"] in ("memory", "theseus", "compress")
    # the GPU preset is bigger than the CPU one: more steps, longer inputs, the whole dataset
    cpu, cuda = (by_name["theseus"]["presets"][p]["run"] for p in ("cpu", "cuda"))
    assert cuda["steps"] > cpu["steps"] and cuda["max_length"] > cpu["max_length"]
    assert cuda["max_train_examples"] is None


def test_lesson_cli_runs_the_recipe_and_prints_the_contract(capsys, tmp_path):
    from app.store import RunStore

    runs_dir = tmp_path / "runs"
    code, result = _cli_json(capsys, "lesson", "theseus", "--preset", "tiny", "--seed", "5", "--runs-dir",
                             str(runs_dir), "--json", "--quiet")
    assert code == 0 and CONTRACT <= set(result)
    assert (result["lesson"], result["preset"], result["seed"]) == ("theseus", "tiny", 5)
    assert set(result["runs"]) == {"predecessor", "theseus", "truncate"}
    assert isinstance(result["demonstrated"], bool) and result["reason"]
    assert {"predecessor_test", "successor_test", "truncation_test", "successor_minus_truncation",
            "majority_test"} <= set(result["findings"])
    store = RunStore(runs_dir)
    expected = {c["name"]: c for c in role_configs(get_lesson("theseus"), "tiny", 5)}
    for role, run_id in result["runs"].items():
        record = store.get_run(run_id)
        assert record["status"] == "finished"
        config = expected[record["config"]["name"]]
        assert {k: record["config"][k] for k in ("steps", "batch_size", "seed", "backbone")} == \
            {k: config[k] for k in ("steps", "batch_size", "seed", "backbone")}
    assert store.get_run(result["runs"]["theseus"])["config"]["method_config"]["predecessor"] == \
        result["runs"]["predecessor"]
    # a second call with the same seed trains nothing again
    code, again = _cli_json(capsys, "lesson", "theseus", "--preset", "tiny", "--seed", "5", "--runs-dir",
                            str(runs_dir), "--json", "--quiet")
    assert again["runs"] == result["runs"] and sorted(again["reused"]) == ["predecessor", "theseus", "truncate"]
    assert again["findings"] == result["findings"]


def test_shrink_lesson_compresses_the_given_run_or_trains_one_first(capsys, tmp_path, finished_full_ft,
                                                                     session_store):
    code, given = _cli_json(capsys, "lesson", "shrink", "--preset", "tiny", "--run", finished_full_ft["id"],
                            "--runs-dir", str(session_store.runs_dir), "--json", "--quiet")
    assert code == 0 and given["runs"] == {"model": finished_full_ft["id"]}
    assert given["seed"] == finished_full_ft["config"]["seed"]
    assert {"int8_speedup", "int8_points_lost", "2bit_points_lost", "1bit_points_lost",
            "fastest_mask_speedup"} <= set(given["findings"])
    assert given["findings"]["int8_speedup"] > 0
    code, own = _cli_json(capsys, "lesson", "shrink", "--preset", "tiny", "--runs-dir", str(tmp_path / "runs"),
                          "--json", "--quiet")
    assert code == 0 and own["status"] == "done" and own["reused"] == []


@pytest.mark.parametrize("args, message", [
    (["lesson", "nope"], "unknown lesson 'nope'"),
    (["lesson", "theseus", "--preset", "huge"], "no preset 'huge'"),
    (["lesson", "theseus", "--run", "20260101-000000-abcdef"], "--run applies to the shrink lesson only"),
    (["lesson", "shrink", "--run", "20260101-000000-abcdef"], "20260101-000000-abcdef"),
    (["lesson", "theseus", "--seed", "-1"], "seed"),
])
def test_bad_lesson_input_exits_2_with_one_line(capsys, tmp_path, args, message):
    code = main([*args, "--runs-dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "runs" / "lab.sqlite3").exists() or not _runs(tmp_path / "runs")


def _runs(path):
    from app.store import RunStore

    return RunStore(path).list_runs()


# --- the claims, checked on runs as stored ------------------------------------------------------


def _record(method: str, test: float, counts=(60, 40), **metrics) -> dict:
    return {"id": method, "status": "finished", "metrics": {"test_accuracy": test, **metrics},
            "summary": {"dataset": {"class_counts": {"test": list(counts)}}}}


def test_theseus_claim_holds_only_when_the_successor_beats_truncation_by_a_point():
    lesson = get_lesson("theseus")
    shown = check_theseus(LessonRuns(lesson, {"predecessor": _record("p", 0.80), "theseus": _record("t", 0.76),
                                              "truncate": _record("c", 0.74)}))
    assert all(c.passed for c in shown.checks)
    assert any("beat truncation" in line and "2.0 points" in line for line in shown.notice)
    lost = check_theseus(LessonRuns(lesson, {"predecessor": _record("p", 0.80), "theseus": _record("t", 0.745),
                                             "truncate": _record("c", 0.74)}))
    failed = [c.name for c in lost.checks if not c.passed]
    assert failed == ["successor_minus_truncation"]
    assert any("by only 0.5 points" in line for line in lost.notice)
    # both compressed models at the majority class: not a demonstration whatever the gap
    flat = check_theseus(LessonRuns(lesson, {"predecessor": _record("p", 0.80), "theseus": _record("t", 0.62),
                                             "truncate": _record("c", 0.60)}))
    assert [c.name for c in flat.checks if not c.passed] == ["lowest_minus_majority"]


def test_shrink_claim_reads_side_by_side_speedups_and_collapse():
    lesson = get_lesson("shrink")
    points = [
        {"key": "baseline", "kind": "baseline", "setting": "fp32", "test_accuracy": 0.80},
        {"key": "int8", "kind": "int8", "setting": "int8", "test_accuracy": 0.795, "speedup": 2.1},
        {"key": "2bit", "kind": "kbit", "setting": "2bit", "test_accuracy": 0.58},
        {"key": "1bit", "kind": "kbit", "setting": "1bit", "test_accuracy": 0.70},
        {"key": "sparsity=0.5/global", "kind": "unstructured", "setting": "0.5", "test_accuracy": 0.79,
         "speedup": 1.02},
    ]
    runs = LessonRuns(lesson, {"model": _record("m", 0.80)}, points)
    assert all(c.passed for c in check_shrink(runs).checks)
    points[4]["speedup"] = 1.4  # a masked model that got faster would contradict the lesson
    assert [c.name for c in check_shrink(runs).checks if not c.passed] == ["fastest_mask_speedup"]


def test_shrink_claim_waits_for_the_sweeps_int8_point():
    runs = LessonRuns(get_lesson("shrink"), {"model": _record("m", 0.80)},
                      [{"key": "baseline", "kind": "baseline", "setting": "fp32", "test_accuracy": 0.80}])
    found = check_shrink(runs)
    assert found.status == "pending" and "int8" in found.reason and found.demonstrated is None


def _memory_record(method: str, test: float, peak: float, activations: float) -> dict:
    return _record(method, test, counts=(90, 10), peak_memory_bytes=peak,
                   memory_breakdown={"activations": activations})


def test_memory_claim_checks_the_activations_of_every_method_that_backprops_through_the_backbone():
    from app.methods import method_class

    lesson = get_lesson("lst-memory")
    records = {"full_ft": _memory_record("f", 0.97, 100.0, 40.0), "adapter": _memory_record("a", 0.96, 70.0, 39.2),
               "lora": _memory_record("l", 0.96, 65.0, 36.0), "prompt_tuning": _memory_record("p", 0.91, 75.0, 44.0),
               "lst": _memory_record("s", 0.96, 25.0, 4.0)}
    found = check_lst_memory(LessonRuns(lesson, records))
    shares = [c for c in found.checks if c.name.endswith("_activation_share")]
    # which roles are checked comes from the methods' own fact, in the recipe's (the claim's) order
    assert [c.name.removesuffix("_activation_share") for c in shares] == [
        role.name for role in lesson.roles if method_class(role.method).backprop_crosses_frozen_backbone]
    assert [c.name for c in shares] == ["adapter_activation_share", "lora_activation_share",
                                        "prompt_tuning_activation_share"]
    assert all(c.passed for c in found.checks), [c.name for c in found.checks if not c.passed]
    assert found.findings["lst_peak_ratio"] == pytest.approx(0.25)
    assert any(line.startswith("Adapter, LoRA and prompt tuning train few parameters yet keep 98%, 90%, 110%")
               for line in found.notice)
    records["lora"] = _memory_record("l", 0.96, 45.0, 20.0)  # half of the activations: against the claim
    assert [c.name for c in check_lst_memory(LessonRuns(lesson, records)).checks if not c.passed] == [
        "lora_activation_share"]


def test_the_int8_preset_compares_lst_with_lora_on_the_same_quantized_backbone():
    from app.lessons import role_configs

    lesson = get_lesson("lst-memory")
    configs = {c["method"]: c for c in role_configs(lesson, "smollm2-int8", 0)}
    assert configs["full_ft"].get("backbone_precision", "fp32") == "fp32"
    assert {configs[m]["backbone_precision"] for m in ("adapter", "lora", "prompt_tuning", "lst")} == {"int8"}
    records = {"full_ft": _memory_record("f", 0.97, 100.0, 40.0), "adapter": _memory_record("a", 0.96, 60.0, 39.2),
               "lora": _memory_record("l", 0.96, 50.0, 36.0), "prompt_tuning": _memory_record("p", 0.91, 65.0, 44.0),
               "lst": _memory_record("s", 0.95, 12.0, 4.0)}
    plain = {c.name for c in check_lst_memory(LessonRuns(lesson, records)).checks}
    assert "lst_over_lora_peak" not in plain  # fp32 runs: no QLoRA comparison
    for role in ("lora", "lst"):
        records[role]["config"] = {"backbone_precision": "int8"}
    found = check_lst_memory(LessonRuns(lesson, records))
    checks = {c.name: c for c in found.checks}
    assert checks["lst_over_lora_peak"].value == pytest.approx(0.24) and checks["lst_over_lora_peak"].passed
    assert checks["lst_minus_lora_test"].value == pytest.approx(-0.01) and checks["lst_minus_lora_test"].passed
    assert any(line.startswith("With both frozen backbones in int8, LST trained with 0.24× LoRA's peak")
               for line in found.notice)
    records["lst"] = dict(_memory_record("s", 0.90, 30.0, 4.0), config={"backbone_precision": "int8"})
    failed = [c.name for c in check_lst_memory(LessonRuns(lesson, records)).checks if not c.passed]
    assert {"lst_over_lora_peak", "lst_minus_lora_test"} <= set(failed)


def _lm_record(peak: float, ppl_end: float) -> dict:
    return {"id": "r", "status": "finished", "metrics": {"peak_memory_bytes": peak, "val_perplexity": ppl_end,
                                                         "test_perplexity": ppl_end + 1, "steps_done": 8}}


def _lm_passes(ppl_start: float, ppl_end: float, first: list[str], last: list[str]) -> list[dict]:
    def written(answers):
        return [{"prompt": f"line {i}", "reference": f"reply {i}", "answer": a} for i, a in enumerate(answers)]

    return [{"step": 0, "perplexity": ppl_start, "generations": written(first)},
            {"step": 8, "perplexity": ppl_end, "generations": written(last)}]


def test_language_model_claim_reads_memory_the_perplexity_fall_from_step_0_and_the_answers():
    lesson = get_lesson("lst-language-model")
    untuned = ["and then he said", "i don't know what"]
    records = {"full_ft": _lm_record(100.0, 20.0), "lora": _lm_record(45.0, 24.0), "lst": _lm_record(23.0, 22.0)}
    validation = {"full_ft": _lm_passes(40.0, 20.0, untuned, ["yes.", "no."]),
                  "lora": _lm_passes(40.0, 24.0, untuned, ["yes.", "i know."]),
                  "lst": _lm_passes(40.0, 22.0, untuned, ["yes.", untuned[1]])}
    found = check_lst_language_model(LessonRuns(lesson, records, validation=validation))
    checks = {c.name: c for c in found.checks}
    assert all(c.passed for c in found.checks), [c.name for c in found.checks if not c.passed]
    assert checks["lst_peak_ratio"].value == pytest.approx(0.23)
    assert checks["lst_over_lora_fall"].value == pytest.approx(18 / 16)  # 40 -> 22 against 40 -> 24
    assert checks["lora_fall_fraction"].value == pytest.approx(0.4)
    assert checks["lst_answers_changed"].value == pytest.approx(0.5)  # the second answer stayed the same
    assert found.findings["lst_ppl_start"] == 40.0 and found.findings["lst_ppl_end"] == 22.0
    assert any("from the untuned model's 40.00 after 8 steps" in line for line in found.notice)
    assert any("untuned model (step 0) wrote “and then he said”" in line and "after its last step “yes.”" in line
               for line in found.notice)
    # LST falling less far than LoRA, and over the memory target: the checks say so, with the numbers
    records["lst"], validation["lst"] = _lm_record(30.0, 30.0), _lm_passes(40.0, 30.0, untuned, untuned)
    found = check_lst_language_model(LessonRuns(lesson, records, validation=validation))
    assert [c.name for c in found.checks if not c.passed] == ["lst_peak_ratio", "lst_over_lora_fall",
                                                               "lst_answers_changed"]
    assert {c.name: c.value for c in found.checks}["lst_over_lora_fall"] == pytest.approx(10 / 16)
    assert any("not the saving the paper reports" in line for line in found.notice)
    # LoRA that did not learn: no multiple of its fall, and the check on it fails
    records["lora"], validation["lora"] = _lm_record(45.0, 41.0), _lm_passes(40.0, 41.0, untuned, untuned)
    found = check_lst_language_model(LessonRuns(lesson, records, validation=validation))
    checks = {c.name: c for c in found.checks}
    assert checks["lst_over_lora_fall"].value is None and not checks["lora_fall_fraction"].passed
    # runs without a step-0 pass (or no passes at all): nothing to compare, nothing passes
    found = check_lst_language_model(LessonRuns(lesson, records))
    assert {c.name for c in found.checks if c.value is None} == {"lora_fall_fraction", "lst_over_lora_fall",
                                                                 "lst_answers_changed"}


def test_language_model_lesson_trains_three_decoders_on_the_same_batches_from_the_cli(capsys, tmp_path):
    from app.store import RunStore

    runs_dir = tmp_path / "runs"
    code, result = _cli_json(capsys, "lesson", "lst-language-model", "--preset", "tiny", "--runs-dir", str(runs_dir),
                             "--json", "--quiet")
    assert code == 0 and CONTRACT <= set(result) and set(result["runs"]) == {"full_ft", "lora", "lst"}
    assert result["status"] == "done" and isinstance(result["demonstrated"], bool)
    assert result["reason"].startswith("The tiny preset's random 4-layer backbone shows nothing")
    findings = result["findings"]
    assert {c["name"] for c in result["checks"]} == {"lst_peak_ratio", "lora_fall_fraction", "lst_over_lora_fall",
                                                     "lst_answers_changed"}
    assert 0 < findings["lst_peak_ratio"] < findings["lora_peak_ratio"] < 1
    # every method starts from the untuned backbone: one step-0 perplexity
    assert findings["full_ft_ppl_start"] == pytest.approx(findings["lora_ppl_start"]) == \
        pytest.approx(findings["lst_ppl_start"])
    assert findings["full_ft_ppl_end"] < findings["full_ft_ppl_start"]
    assert any("The answers:" in line and "step 0" in line for line in result["notice"])
    store = RunStore(runs_dir)
    configs = {c["method"]: c for c in role_configs(get_lesson("lst-language-model"), "tiny", 0)}
    for role, run_id in result["runs"].items():
        record = store.get_run(run_id)
        assert record["config"]["task"] == "causal-lm" and record["config"]["lr"] == configs[role]["lr"]
        assert record["config"]["backbone"] == "tiny-random-llama"
        assert [e["step"] for e in store.evals(run_id, "validation")][0] == 0


def test_language_model_presets_compare_every_method_on_equal_steps_and_data():
    lesson = get_lesson("lst-language-model")
    for preset in lesson.presets:
        configs = role_configs(lesson, preset, 0)
        shared = [{k: v for k, v in c.items() if k not in ("method", "method_config", "lr", "name")} for c in configs]
        assert all(s == shared[0] for s in shared), preset
        assert shared[0]["task"] == "causal-lm" and shared[0]["padding"] == "max"
        rates = {c["method"]: c["lr"] for c in configs}
        assert rates == {"full_ft": 1e-4, "lora": 8e-3, "lst": 3e-3}
        if preset != "tiny":  # the help states every rate
            assert all(f"{rate:.0e}".replace("e-0", "e-") in lesson.presets[preset].help for rate in rates.values())
    cpu, cuda = (lesson.presets[p].run for p in ("cpu", "cuda"))
    assert cpu["backbone"] == cuda["backbone"] == "smollm2-135m"
    assert cuda["steps"] > cpu["steps"] and cuda["batch_size"] * cuda["max_length"] > cpu["batch_size"] * cpu["max_length"]


def test_a_check_without_a_number_fails():
    assert not Check("x", None, 1.0, False, "x").passed
    assert Check("x", 0.2, 0.3, True, "x").passed and not Check("x", 0.4, 0.3, True, "x").passed


def test_findings_wait_for_every_run_and_name_a_failed_one(store):
    from app.config import RunConfig

    from conftest import tiny_config

    queued = store.create_run(RunConfig(**tiny_config()).as_dict())
    record = {"lesson": "lst-memory", "runs": {"full_ft": queued}, "created_at": 0.0}
    assert lesson_findings(store, record).status == "pending"
    store.set_status(queued, "failed", error="out of memory")
    found = lesson_findings(store, record)
    assert found.status == "failed" and "out of memory" in found.reason and found.demonstrated is None


def test_every_lesson_role_names_a_registered_method_and_references_come_before():
    from app.methods import METHODS

    for lesson in LESSONS.values():
        seen = set()
        for role in lesson.roles:
            assert role.method in METHODS
            for value in role.method_config.values():
                if referenced_role(value) is not None:
                    assert referenced_role(value) in seen
            seen.add(role.name)
        assert set(lesson.main_roles) <= seen


def test_every_lesson_declares_what_its_page_and_buttons_need_with_roles_it_has():
    for name, lesson in LESSONS.items():
        roles = {role.name for role in lesson.roles}
        assert lesson.name == name and lesson.page in ("memory", "theseus", "compress")
        assert set(lesson.page_roles) <= roles
        assert lesson.given_role in roles | {None} and lesson.sweep_role in roles | {None}
        assert bool(lesson.given_role) == bool(lesson.given_role_label)
        assert all(preset.plan for preset in lesson.presets.values()) == bool(lesson.sweep_role)
        runs = {role: f"run-{role}" for role in roles}
        query = lesson.page_query("L1", runs)
        assert query["lesson"] == "L1"
        named = query[lesson.page_param].split(",")
        assert named == [runs[r] for r in (lesson.page_roles or runs)]


def test_role_references_resolve_to_known_runs_or_earlier_places_in_the_chain():
    settings = {"predecessor": role_ref("predecessor"), "layers": 2}
    resolved, pending = resolve_role_refs(settings, {"predecessor": "20260101-000000-abcdef"}, [], whose="x")
    assert resolved == {"predecessor": "20260101-000000-abcdef", "layers": 2} and not pending
    resolved, pending = resolve_role_refs(settings, {}, ["other", "predecessor"], whose="x")
    assert pending and resolved["predecessor"] == role_ref("predecessor")  # the manager fills in the id
    with pytest.raises(ConfigError, match="lesson 'y': role 'theseus' names 'predecessor', which is not before it"):
        resolve_role_refs(settings, {}, [], whose="lesson 'y': role 'theseus'")
    assert referenced_role("20260101-000000-abcdef") is None and referenced_role(7) is None


def test_submit_refuses_a_run_that_is_not_finished(store, runs_dir):
    from app.config import RunConfig
    from app.errors import ConfigError
    from app.manager import RunManager

    from conftest import tiny_config

    manager = RunManager(store)
    try:
        queued = store.create_run(RunConfig(**tiny_config()).as_dict())
        with pytest.raises(ConfigError, match="needs a finished run"):
            submit_lesson(manager, "shrink", preset="tiny", given={"model": queued})
    finally:
        manager.shutdown()


def test_every_preset_of_every_lesson_gives_runs_its_backbone_can_train():
    """A preset a button offers must not queue a run its backbone refuses (e.g. BitFit on a decoder)."""
    from app.backbones import get_backbone
    from app.config import RunConfig
    from app.methods import create_method

    for lesson in LESSONS.values():
        for preset_name in lesson.presets:
            for values in role_configs(lesson, preset_name, seed=0):
                config = RunConfig.from_dict({**values, "method_config": {
                    k: v for k, v in values["method_config"].items() if referenced_role(v) is None}})
                backbone = get_backbone(config.backbone)
                refusal = create_method(config.method, {}).backbone_refusal(backbone)
                assert refusal is None, (lesson.name, preset_name, config.method, refusal)


def test_every_lesson_asks_for_a_guess_at_one_of_its_checks_and_the_memory_one_has_an_estimate(store):
    from app.estimate import estimate_memory
    from app.lessons import LESSONS, prediction_estimate, role_configs, save_guess, saved_guess

    for lesson in LESSONS.values():
        assert lesson.prediction is not None, lesson.name
        assert lesson.prediction.low <= lesson.prediction.default <= lesson.prediction.high
    record = {"lesson_id": "lst-memory-x", "lesson": "lst-memory", "preset": "tiny", "seed": 0,
              "runs": {"full_ft": "r1", "lst": "r2"}}
    configs = {c["method"]: c for c in role_configs(LESSONS["lst-memory"], "tiny", 0)}
    expected = [estimate_memory(configs[m]["backbone"], m, configs[m]["batch_size"], configs[m]["max_length"])
                for m in ("lst", "full_ft")]
    assert prediction_estimate(record) == expected[0].predicted_peak_bytes / expected[1].predicted_peak_bytes
    assert prediction_estimate(dict(record, lesson="theseus")) is None  # accuracy: only training can tell
    assert saved_guess(store, record) is None
    save_guess(store, record, 0.25)
    save_guess(store, record, 0.3)  # a second lock-in replaces the first
    assert saved_guess(store, record) == 0.3

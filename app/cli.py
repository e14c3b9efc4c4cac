"""Command line: `python -m app train|execute|estimate|runs|methods|backbones|datasets|export|compress|lesson|lessons`.

Every subcommand takes `--runs-dir` (default: `$LAB_RUNS_DIR` or `runs/`). With `--json` the last
line of stdout is one JSON object. Bad input exits with status 2 and a one-line reason on stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

from .backbones import get_backbone, list_backbones
from .compression import CompressionPlan, as_plan, compress_run
from .config import RunConfig
from .config_models import PREFIX as CONFIG_PREFIX
from .config_models import describe_config_models, is_config_name
from .data import list_datasets
from .data_files import split_sheet, with_sheet
from .distributed import DataParallel, cancel_request_path, launched_world_size
from .errors import ConfigError, LabError
from .estimate import GiB, estimate_memory
from .bundles import checkpoint_bytes, export_bundle, import_bundle
from .export import export_run
from .predict import load_predictor, load_writer
from .lessons import LESSONS, describe_lessons, get_lesson, lessons_with_given_role, run_lesson
from .manager import RunManager, default_runs_dir
from .methods import describe_methods, method_class, supported_methods
from .options import add_config_flags, checked_values, given_flags
from .pipelines import asks_for_new_run, queue_recipe, theseus_recipe
from .preparation import prepare_run
from .runner import execute_run, failure_message, prepare_on_every_rank, train_on_this_rank
from .store import ACTIVE_STATUSES, RunStore
from .tasks import CAUSAL_LM, CLASSIFICATION
from .training import LANGUAGE_MODEL_SCORES, LoopHooks

EXIT_BAD_INPUT = 2
EXIT_RUN_FAILED = 1


def _runs_dir(args) -> Path:
    return Path(args.runs_dir) if args.runs_dir else default_runs_dir()


def _store(args):
    return RunStore(_runs_dir(args))


def _print_json(value) -> None:
    print(json.dumps(value, default=str))


def parse_sets(pairs: list[str] | None) -> dict:
    values = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise LabError(f"--set expects KEY=VALUE, got '{pair}'")
        values[key.strip()] = value
    return values


# What a causal-lm run adds to the contract.
LANGUAGE_MODEL_METRICS = tuple(f"{split}_{name}" for split in ("val", "test") for name in LANGUAGE_MODEL_SCORES)


def run_summary(record: dict) -> dict:
    """The JSON contract of `train --json` for a stored run."""
    summary, metrics = record.get("summary", {}), record.get("metrics", {})
    out = {
        "run_id": record["id"],
        "status": record["status"],
        "method": record["method"],
        "backbone": record["backbone"],
        "dataset": record["dataset"],
        "steps": record["config"].get("steps"),
        "steps_done": record.get("step"),
        "task": record["config"].get("task", CLASSIFICATION),
        "metrics": {k: metrics.get(k) for k in (
            "val_accuracy", "val_macro_f1", "val_loss", "test_accuracy", "test_macro_f1", "test_loss")},
        "trainable_params": summary.get("trainable_params"),
        "total_params": summary.get("total_params"),
        "peak_memory_bytes": metrics.get("peak_memory_bytes"),
        "memory_breakdown": metrics.get("memory_breakdown"),
        "train_seconds": metrics.get("train_seconds"),
        "steps_per_second": metrics.get("steps_per_second"),
        "padding": record["config"].get("padding", "max"),
        "backbone_precision": record["config"].get("backbone_precision", "fp32"),
        "examples_per_second": metrics.get("examples_per_second"),
        "tokens_per_second": metrics.get("tokens_per_second"),
        "padding_fraction": metrics.get("padding_fraction"),
        "peak_memory_shape": metrics.get("peak_memory_shape"),
        "run_dir": None,
    }
    out["metrics"].update({k: metrics[k] for k in LANGUAGE_MODEL_METRICS if k in metrics})
    if "cuda_max_allocated_bytes" in metrics:
        out["cuda_max_allocated_bytes"] = metrics["cuda_max_allocated_bytes"]
    if record.get("error"):
        out["error"] = record["error"]
    return out


# --- subcommands -----------------------------------------------------------------------------


def method_preset(method: str, name: str) -> dict:
    """A method's named preset, or a ConfigError that lists the ones it has."""
    presets = method_class(method).presets
    if name not in presets:
        offered = ", ".join(presets) or "none"
        raise ConfigError(f"method {method!r} has no preset {name!r}; its presets: {offered}")
    return presets[name]


def train_values(args) -> dict:
    """Every run setting of `train`: a flag given wins over the preset's value, which wins over
    RunConfig's default; `--set` lays method settings over the preset's the same way."""
    given = checked_values(RunConfig, given_flags(args, RunConfig))
    values = RunConfig().as_dict()
    method = given.get("method", values["method"])
    preset = method_preset(method, args.preset) if args.preset else {"method_config": {}, "run": {}}
    values.update(preset["run"])
    values.update(given)
    values["method_config"] = {**preset["method_config"], **parse_sets(args.set)}
    if args.sheet:
        dataset = values["dataset"]
        if not split_sheet(dataset)[0].lower().endswith(".xlsx"):
            raise LabError(f"--sheet applies to .xlsx files; '{dataset}' is not one")
        values["dataset"] = with_sheet(split_sheet(dataset)[0], args.sheet)
    return values


def cmd_train(args) -> int:

    values = train_values(args)
    new_predecessor = asks_for_new_run(values["method_config"].get("predecessor"))
    world = None
    if launched_world_size() > 1:
        if values["method"] == "theseus" and new_predecessor:
            raise ConfigError("under torchrun, train the predecessor first (--method full_ft), then Theseus "
                              "with --set predecessor=<its run id>")
        world = DataParallel.start(values["device"])
        values["processes"] = world.world_size
    elif values["method"] == "theseus" and new_predecessor:
        return _train_predecessor_then_theseus(args, values)
    main = world is None or world.is_main
    finished = False
    try:
        store = RunStore(_runs_dir(args))
        if main:
            store.mark_orphans_interrupted()
        prepared = prepare_on_every_rank(world, values, store) if world else prepare_run(values, store)
        config = prepared.config
        run_id = store.create_run(config.as_dict()) if main else None
        if world:
            run_id = world.broadcast(run_id)
        bar = tqdm(total=config.steps, desc=f"{config.method} {run_id}", unit="step", file=sys.stderr,
                   disable=args.quiet or not main, dynamic_ncols=True)

        def on_step(step, total, loss):
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            bar.update(step - bar.n)

        def on_message(message):
            bar.set_description_str(f"{config.method} {run_id}: {message}")

        hooks = LoopHooks(on_step=on_step, on_message=on_message)
        try:
            if world:
                record = train_on_this_rank(world, store, run_id, prepared, hooks)
            else:
                record = execute_run(store, run_id, hooks, prepared=prepared)
            finished = _ended_in_step(record)
        finally:
            bar.close()
    finally:
        if world:
            world.close(finished=finished)
    if record is None:
        return 0  # a data-parallel helper process: rank 0 reports the run
    return _report_run(args, store, record)


def _ended_in_step(record: dict | None) -> bool:
    """Whether this process's part of a data-parallel run ended with the others: rank 0's run
    finished, or another rank returned from training (None) without raising."""
    return record is None or record.get("status") == "finished"


def _report_run(args, store, record: dict) -> int:
    result = run_summary(record)
    result["run_dir"] = str(store.run_dir(record["id"]))
    if args.json:
        _print_json(result)
    else:
        _print_human(result)
    if record["status"] != "finished":
        print(f"run {record['id']} {record['status']}: {record.get('error') or ''}", file=sys.stderr)
        return EXIT_RUN_FAILED
    return 0


def cmd_execute(args) -> int:
    """Train a queued run stored in the runs folder: how the app starts a data-parallel run
    (`torchrun --nproc_per_node N -m app execute RUN_ID`), followed through the store."""
    store = _store(args)
    record = store.get_run(args.run_id)
    if record["status"] != "queued":
        raise LabError(f"run '{args.run_id}' is {record['status']}; only a queued run can be started")
    hooks = LoopHooks(cancel_file=cancel_request_path(store, args.run_id))
    if launched_world_size() == 1:
        return _report_run(args, store, execute_run(store, args.run_id, hooks))
    world = DataParallel.start(record["config"].get("device", "auto"))
    finished = False
    try:
        try:
            prepared = prepare_on_every_rank(world, record["config"], store)
        except Exception as exc:
            if world.is_main:
                store.set_status(args.run_id, "failed", error=failure_message(exc))
            raise
        record = train_on_this_rank(world, store, args.run_id, prepared, hooks)
        finished = _ended_in_step(record)
    finally:
        world.close(finished=finished)
    return 0 if record is None else _report_run(args, store, record)


SWEEPABLE = ("batch_size", "max_length")
# The run settings the memory estimate takes, as `train` names them.
ESTIMATED_SETTINGS = ("backbone", "method", "task", "batch_size", "max_length", "padding", "bf16",
                      "backbone_precision", "processes")


def parse_sweep(pairs: list[str] | None, values: dict) -> list[dict]:
    """The points of `--sweep NAME=V1,V2 ...` (a grid over every name given), each with both shapes."""
    axes = {"batch_size": [values["batch_size"]], "max_length": [values["max_length"]]}
    for pair in pairs or []:
        name, sep, values = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in SWEEPABLE:
            raise LabError(f"--sweep expects batch_size=... or max_length=... with comma-separated whole numbers, "
                           f"got '{pair}'")
        try:
            axes[name] = [int(v) for v in values.split(",") if v.strip()]
        except ValueError:
            raise LabError(f"--sweep {name} takes whole numbers, got '{values}'") from None
        if not axes[name]:
            raise LabError(f"--sweep {name} names no value")
    return [{"batch_size": b, "max_length": m} for b in axes["batch_size"] for m in axes["max_length"]]


def cmd_estimate(args) -> int:
    defaults = RunConfig()
    values = {name: getattr(defaults, name) for name in ESTIMATED_SETTINGS}
    values.update(checked_values(RunConfig, given_flags(args, RunConfig)))
    backbone, method = values["backbone"], values["method"]
    if backbone.endswith(".json") and not is_config_name(backbone):
        backbone = CONFIG_PREFIX + backbone
    labels = [f"class_{i}" for i in range(args.num_labels)]
    points = parse_sweep(args.sweep, values)
    rows = []
    for point in points:
        estimate = estimate_memory(backbone, method, point["batch_size"], point["max_length"],
                                   parse_sets(args.set), bf16=values["bf16"], label_names=labels, device=args.device,
                                   processes=values["processes"], padding=values["padding"],
                                   backbone_precision=values["backbone_precision"], task=values["task"])
        rows.append(estimate.as_dict())
    if args.json:
        _print_json(rows[0] if not args.sweep else {"backbone": backbone, "method": method, "rows": rows})
        return 0
    if args.sweep:
        print(f"{method} on {backbone}: predicted peak per point (GiB), the estimate's own time per point")
        print(f"  {'batch':>6} {'length':>7} {'peak':>9} {'on CUDA':>9} {'seconds':>8}")
        for row in rows:
            print(f"  {row['batch_size']:>6} {row['max_length']:>7} {row['predicted_peak_bytes'] / GiB:>9.3f} "
                  f"{row['cuda_requirement_bytes'] / GiB:>9.3f} {row['seconds']:>8.2f}")
        return 0
    result = rows[0]
    print(f"{result['method']} on {result['backbone']}, batch {result['batch_size']} x {result['input_length']} "
          f"tokens: {result['predicted_peak_bytes'] / GiB:.2f} GiB predicted peak ({result['seconds']:.2f} s)")
    for part, value in result["breakdown"].items():
        print(f"  {part:<12} {value / GiB:8.3f} GiB")
    print(f"  trainable parameters {result['trainable_params']:,} of {result['total_params']:,}")
    print(f"  on CUDA with the documented overhead: {result['cuda_requirement_bytes'] / GiB:.2f} GiB; fits "
          + ", ".join(f"{size}: {'yes' if ok else 'no'}" for size, ok in result["fits"].items()))
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0


def _train_predecessor_then_theseus(args, values: dict) -> int:
    """`train --method theseus --set predecessor=new`: fine-tune a predecessor (full_ft, same run
    settings), then Theseus it, as one chain; prints both runs (with --json, the last line is the
    Theseus run with its predecessor under "predecessor_run")."""

    settings = dict(values["method_config"])
    settings.pop("predecessor")
    recipe = theseus_recipe(values, include_truncate=False, theseus_settings=settings)
    manager = RunManager(_store(args))
    records = []
    try:
        ids = queue_recipe(manager, recipe).runs  # every check runs before anything is queued
        for role, config in recipe.items():
            run_id = ids[role]
            bar = tqdm(total=config.get("steps"), desc=f"{config['method']} {run_id}", unit="step", file=sys.stderr,
                       disable=args.quiet, dynamic_ncols=True)
            try:
                while True:
                    record = manager.store.get_run(run_id)
                    bar.update(max(0, (record.get("step") or 0) - bar.n))
                    if record["status"] not in ACTIVE_STATUSES:
                        break
                    time.sleep(0.25)
            finally:
                bar.close()
            records.append(record)
    finally:
        manager.shutdown(wait=True)
    results = []
    for record in records:
        result = run_summary(record)
        result["run_dir"] = str(manager.store.run_dir(record["id"]))
        results.append(result)
    if args.json:
        _print_json(dict(results[-1], predecessor_run=results[0]))
    else:
        for result in results:
            _print_human(result)
    failed = [record for record in records if record["status"] != "finished"]
    for record in failed:
        print(f"run {record['id']} {record['status']}: {record.get('error') or ''}", file=sys.stderr)
    return EXIT_RUN_FAILED if failed else 0


def _print_human(result: dict) -> None:
    metrics = result["metrics"]
    lines = [f"run {result['run_id']}: {result['status']}"]
    if metrics.get("test_accuracy") is not None:
        lines.append(f"  validation accuracy {metrics['val_accuracy']:.4f}, test accuracy {metrics['test_accuracy']:.4f}")
    if result.get("trainable_params") is not None:
        lines.append(f"  trainable parameters {result['trainable_params']:,} of {result['total_params']:,}")
    if result.get("peak_memory_bytes"):
        lines.append(f"  peak training memory {result['peak_memory_bytes'] / 2**20:.1f} MiB "
                     + str({k: f"{v / 2**20:.1f} MiB" for k, v in (result['memory_breakdown'] or {}).items()}))
    if result.get("train_seconds") is not None:
        lines.append(f"  {result['train_seconds']:.1f} s, {result['steps_per_second']:.2f} steps/s")
    if result.get("error"):
        lines.append(f"  error: {result['error']}")
    print("\n".join(lines))


def cmd_runs(args) -> int:
    store = _store(args)
    if args.runs_command == "list":
        store.mark_orphans_interrupted()
        runs = [run_summary(r) for r in store.list_runs(status=args.status, method=args.method)]
        if args.json:
            _print_json({"runs": runs})
        else:
            for run in runs:
                if run["task"] == CAUSAL_LM:
                    ppl = run["metrics"].get("test_perplexity")
                    score = f"test_ppl={'-' if ppl is None else f'{ppl:.2f}'}"
                else:
                    acc = run["metrics"].get("test_accuracy")
                    score = f"test_acc={'-' if acc is None else f'{acc:.4f}'}"
                print(f"{run['run_id']}  {run['status']:<11} {run['method']:<14} {run['backbone']:<12} "
                      f"{run['dataset']:<16} {score}")
        return 0
    if args.runs_command == "show":
        record = store.get_run(args.run_id)
        detail = dict(run_summary(record))
        detail.update(
            config=record["config"],
            summary=record["summary"],
            metrics_all=record["metrics"],
            traceback=record.get("traceback"),
            step_series=store.steps(args.run_id),
            eval_series=store.evals(args.run_id),
            telemetry_keys=sorted(store.telemetry_kinds(args.run_id)),
            records={kind: store.records(args.run_id, kind) for kind in ("compress",)},
        )
        if args.json:
            _print_json(detail)
        else:
            print(json.dumps({k: v for k, v in detail.items() if k not in ("step_series", "eval_series")},
                             indent=2, default=str))
        return 0
    if args.runs_command == "delete":
        store.delete_run(args.run_id)
        if args.json:
            _print_json({"deleted": args.run_id})
        return 0
    if args.runs_command == "export":
        result = export_bundle(store, args.run_ids, args.out, checkpoints=args.checkpoints)
        if args.json:
            _print_json(result)
        else:
            print(f"bundled {len(result['runs'])} run(s) into {result['path']} ({result['bytes'] / 2**20:.1f} MiB"
                  + (", with checkpoints)" if args.checkpoints else "; add --checkpoints to carry the trained weights, "
                     f"{checkpoint_bytes(store, result['runs']) / 2**20:.1f} MiB more)"))
        return 0
    if args.runs_command == "import":
        result = import_bundle(store, Path(args.bundle).expanduser())
        if args.json:
            _print_json(result)
        else:
            print(f"imported {len(result['imported'])} run(s)" + (f"; already here, skipped: {', '.join(result['skipped'])}"
                                                                  if result["skipped"] else ""))
        return 0
    raise LabError(f"unknown runs command {args.runs_command}")


def cmd_methods(args) -> int:
    methods = describe_methods()
    if args.json:
        _print_json({"methods": methods})
    else:
        for m in methods:
            print(f"{m['name']:<14} {m['summary']}")
            for f in m["fields"]:
                print(f"    {f['name']} = {f['default']!r}: {f['help']}")
    return 0


def cmd_backbones(args) -> int:
    for name in args.prepare or ():
        info = get_backbone(name).info()
        print(f"{name}: ready in {info.source}", file=sys.stderr)
    rows = list_backbones()
    for row in rows:
        if row["available"]:
            row["methods"] = list(supported_methods(get_backbone(row["name"])))
    config_only = describe_config_models()
    if args.json:
        _print_json({"backbones": rows, "config_only": config_only})
    else:
        for row in rows:
            if row["available"]:
                print(f"{row['name']:<17} {row['model_type']}, {row['num_layers']} layers, hidden "
                      f"{row['hidden_size']}, {row['num_heads']} heads, {row['num_params']:,} parameters: "
                      f"{row['description']}; methods: {', '.join(row['methods'])}")
            else:
                print(f"{row['name']:<12} not installed; install with: {row['install']}")
        for row in config_only:
            print(f"{row['name']:<20} {row['title']}, {row['published_params']} parameters ({row['note']})")
    return 0


def cmd_datasets(args) -> int:
    rows = list_datasets()
    if args.json:
        _print_json({"datasets": rows})
    else:
        for row in rows:
            state = f"{row['examples']} examples, classes {row['label_names']}" if row["available"] else \
                f"not installed; install with: {row['install']}"
            print(f"{row['name']:<16} {state}")
    return 0


def cmd_export(args) -> int:
    result = export_run(_store(args), args.run_id, args.out, onnx=not args.no_onnx)
    if args.json:
        _print_json(result)
        return 0
    print(f"exported run {args.run_id} to {result['path']}; the model card (README.md) says how to load each format")
    for item in result["formats"]:
        checked = f", checked: largest logit difference {item['max_difference']:.1e}" if "max_difference" in item else ""
        print(f"  {item['format']:<12} {item['path']}{checked}\n               load: {item['load']}")
    for note in result["notes"]:
        print(f"  note: {note}")
    return 0


def cmd_predict(args) -> int:
    result = load_predictor(_store(args), args.run_id).predict(args.text)
    if args.json:
        _print_json(result)
        return 0
    for text, label, probabilities in zip(result["texts"], result["labels"], result["probabilities"]):
        shown = ", ".join(f"{name} {p:.3f}" for name, p in zip(result["label_names"], probabilities))
        print(f"{label:<12} ({shown})  {text}")
    return 0


def cmd_generate(args) -> int:
    writer = load_writer(_store(args), args.run_id)
    if args.json:
        result = writer.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 seed=args.seed)
        _print_json(dataclasses.asdict(result))
        return 0
    shown = 0

    def show(text: str) -> None:  # stream: print what each token added
        nonlocal shown
        print(text[shown:], end="", flush=True)
        shown = len(text)

    writer.generate(args.prompt, max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed,
                    on_text=show)
    print()
    return 0


def cmd_compress(args) -> int:

    plan = as_plan(given_flags(args, CompressionPlan))
    store = _store(args)
    store.mark_orphans_interrupted()
    bars = []  # made at the first report, which comes after every input check

    def progress(done, total, message):
        if not bars:
            bars.append(tqdm(total=total, desc=f"compress {args.run_id}", unit="point", file=sys.stderr,
                             disable=args.quiet, dynamic_ncols=True))
        bars[0].set_postfix_str(message[:60], refresh=False)
        bars[0].update(done - bars[0].n)

    try:
        points = compress_run(store, args.run_id, plan, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    if args.json:
        _print_json({"run_id": args.run_id, "points": points})
    else:
        print(f"run {args.run_id}: {len(points)} points")
        score, title, digits = (("test_perplexity", "perplexity", 2) if any("test_perplexity" in p for p in points)
                                else ("test_accuracy", "accuracy", 4))
        kind_width = max(len("kind"), *(len(str(p["kind"])) for p in points)) + 2
        setting_width = max(len("setting"), *(len(str(p["setting"])) for p in points)) + 2
        print(f"  {'kind':<{kind_width}}{'setting':<{setting_width}}{title:>11}{'agree':>8}{'params':>12}{'MiB':>9}"
              f"{'ms/batch':>10}")
        for p in points:
            accuracy = "-" if p.get(score) is None else f"{p[score]:.{digits}f}"
            agreement = "-" if p.get("agreement") is None else f"{p['agreement']:.3f}"
            latency = "-" if p.get("latency_ms") is None else f"{p['latency_ms']:.1f}"
            params = "-" if p.get("params") is None else f"{p['params']:,}"
            print(f"  {p['kind']:<{kind_width}}{p['setting']:<{setting_width}}{accuracy:>11}{agreement:>8}{params:>12}"
                  f"{p['bytes'] / 2**20:>9.2f}{latency:>10}")
    return 0


def cmd_lessons(args) -> int:
    lessons = describe_lessons()
    if args.json:
        _print_json({"lessons": lessons})
    else:
        for lesson in lessons:
            print(f"{lesson['name']:<12} {lesson['title']}: {lesson['claim']}")
            for name, preset in lesson["presets"].items():
                default = " (default here)" if name == lesson["default_preset"] else ""
                print(f"    preset {name}{default}: {preset['help']}")
    return 0


def cmd_lesson(args) -> int:
    given_role = get_lesson(args.name).given_role
    if args.run and not given_role:
        raise LabError(f"--run applies to the {' and '.join(lessons_with_given_role())} lesson only")
    manager = RunManager(_store(args))
    try:
        result = run_lesson(manager, args.name, seed=args.seed, preset=args.preset,
                            given={given_role: args.run} if args.run else None,
                            on_progress=None if args.quiet else lambda message: print(message, file=sys.stderr))
    finally:
        manager.shutdown(wait=True)
    if args.json:
        _print_json(result)
    else:
        verdict = {True: "demonstrated", False: "NOT demonstrated", None: result["status"]}[result["demonstrated"]]
        print(f"lesson {result['lesson']} (preset {result['preset']}, seed {result['seed']}): {verdict} "
              f"in {result['wall_seconds']:.0f} s")
        for check in result["checks"]:
            print(f"  [{'x' if check['passed'] else ' '}] {check['says']}: {check['shown']} (target "
                  f"{check['comparison']} {check['target_shown']})")
        for line in result["notice"]:
            print(f"  - {line}")
        print(f"  {result['reason']}")
        print(f"  runs: {', '.join(f'{role} {run_id}' for role, run_id in result['runs'].items())}")
    return 0 if result["status"] == "done" else EXIT_RUN_FAILED


SUBCOMMANDS = {
    "train": cmd_train,
    "execute": cmd_execute,
    "runs": cmd_runs,
    "methods": cmd_methods,
    "backbones": cmd_backbones,
    "datasets": cmd_datasets,
    "export": cmd_export,
    "predict": cmd_predict,
    "generate": cmd_generate,
    "estimate": cmd_estimate,
    "compress": cmd_compress,
    "lesson": cmd_lesson,
    "lessons": cmd_lessons,
}


def _add_run_flags(train: argparse.ArgumentParser) -> None:
    settings = train.add_argument_group(
        "run settings", "A flag left out takes the --preset's value, else the default shown. The method's own "
                        "settings (method_config) are given with --set.")
    add_config_flags(settings, RunConfig, skip=["method_config"])


def _add_sweep_flags(compress: argparse.ArgumentParser) -> None:
    settings = compress.add_argument_group("sweep settings", "A flag left out takes the default shown.")
    add_config_flags(settings, CompressionPlan, more_names={"sparsities": ["--sparsity"]},
                     shortcuts={"scope": {"--global": "global", "--per-layer": "per_layer"}})


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs-dir", help="runs folder (default: $LAB_RUNS_DIR or ./runs)")
    common.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")

    parser = argparse.ArgumentParser(prog="python -m app", description="Ladder & Theseus Lab engine")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", parents=[common], help="train one run in the foreground")
    _add_run_flags(train)
    train.add_argument("--preset", help="a method's named preset (e.g. theseus: official); flags given "
                                        "alongside override its values")
    train.add_argument("--sheet", help="the sheet of an .xlsx --dataset to read (default: the first)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a method setting (repeatable; see `python -m app methods`); with --method theseus, "
                            "predecessor=new first fine-tunes a predecessor with the same settings")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    execute = sub.add_parser("execute", parents=[common],
                             help="train a queued run from the runs folder (the app starts data-parallel runs so)")
    execute.add_argument("run_id")

    estimate = sub.add_parser("estimate", parents=[common],
                              help="predict a run's training memory before launching it (no step is computed)")
    shape = estimate.add_argument_group(
        "the run to estimate", "The run settings of `train`, same names and defaults; the estimate is for a full "
        "batch of max_length tokens (the worst case of dynamic padding), per process when processes > 1.")
    add_config_flags(shape, RunConfig, skip=[f.name for f in dataclasses.fields(RunConfig)
                                             if f.name not in ESTIMATED_SETTINGS])
    estimate.add_argument("--set", action="append", metavar="KEY=VALUE", help="a method setting (repeatable)")
    estimate.add_argument("--sweep", action="append", metavar="NAME=V1,V2",
                          help="estimate every point of a grid: batch_size=1,8 and/or max_length=128,512,2048 "
                               "(repeatable); prints one row per point, with --json {\"rows\": [...]}")
    estimate.add_argument("--num-labels", type=int, default=2, help="classes of the head (default 2)")
    estimate.add_argument("--device", default="cpu",
                          help="device whose kernels the fake step uses: cpu (default) or cuda when present")

    runs = sub.add_parser("runs", help="list, show or delete stored runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_sub.add_parser("list", parents=[common])
    runs_list.add_argument("--status")
    runs_list.add_argument("--method")
    runs_show = runs_sub.add_parser("show", parents=[common])
    runs_show.add_argument("run_id")
    runs_delete = runs_sub.add_parser("delete", parents=[common])
    runs_delete.add_argument("run_id")
    runs_export = runs_sub.add_parser("export", parents=[common],
                                      help="bundle ended runs into one zip that another lab imports (JSON and "
                                           "safetensors only)")
    runs_export.add_argument("run_ids", nargs="+", metavar="RUN_ID")
    runs_export.add_argument("--out", required=True, help="the .zip to write")
    runs_export.add_argument("--checkpoints", action="store_true",
                             help="also carry the trained weights (Explain, Compress and export need them)")
    runs_import = runs_sub.add_parser("import", parents=[common], help="add a bundle's runs to this runs folder")
    runs_import.add_argument("bundle")

    for name, help_text in (("methods", "training methods and their settings"), ("datasets", "registered datasets")):
        sub.add_parser(name, parents=[common], help=help_text)
    backbones = sub.add_parser("backbones", parents=[common], help="registered backbones")
    backbones.add_argument("--prepare", nargs="+", metavar="NAME",
                           help="unpack or convert these registered backbones now (set-up does smollm2-135m), "
                                "so the first run does not wait for it")

    export = sub.add_parser("export", parents=[common], help="write a finished run's trained model")
    export.add_argument("run_id")
    export.add_argument("--out", required=True)
    export.add_argument("--no-onnx", action="store_true", help="skip the ONNX export (and its check)")

    predict = sub.add_parser("predict", parents=[common],
                             help="a finished run's predictions on texts (the reference its exports are checked on)")
    predict.add_argument("run_id")
    predict.add_argument("--text", action="append", required=True, metavar="TEXT", help="a text to classify (repeatable)")

    generate = sub.add_parser("generate", parents=[common],
                              help="a finished causal-lm run's continuation of a prompt, streamed token by token")
    generate.add_argument("run_id")
    generate.add_argument("--prompt", required=True, metavar="TEXT")
    generate.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="default: 64")
    generate.add_argument("--temperature", type=float, default=0.0, metavar="T",
                          help="0 (the default) is greedy; above 0 samples, seeded by --seed")
    generate.add_argument("--seed", type=int, default=0)

    compress = sub.add_parser("compress", parents=[common],
                              help="prune and quantize a finished run's model; measure accuracy, size, latency")
    compress.add_argument("run_id")
    compress.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_sweep_flags(compress)

    sub.add_parser("lessons", parents=[common], help="the one-click lessons and their presets")
    lesson = sub.add_parser("lesson", parents=[common],
                            help="run a lesson headless, exactly as its button does, and check its claim")
    lesson.add_argument("name", help=", ".join(LESSONS))
    lesson.add_argument("--seed", type=int, default=0)
    lesson.add_argument("--preset", help="one of the lesson's presets, as `lessons` lists them (default: cuda "
                                         "where present, else cpu)")
    lesson.add_argument("--run", metavar="RUN_ID",
                        help=f"{', '.join(lessons_with_given_role())}: a finished run to start from (default: "
                             "train one first)")
    lesson.add_argument("--quiet", action="store_true", help="no progress lines")

    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = SUBCOMMANDS[args.command]
    try:
        return handler(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

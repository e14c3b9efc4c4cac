"""What fits where: one method's training memory at every batch size and sequence length.

A step's memory has a simple shape, which nine estimates pin down exactly:

- From batch 2 on it is affine in the batch size: weights, gradients and optimizer states do not
  depend on it, and every saved activation either has the batch as a dimension or is shared by
  the whole batch (a causal mask, rotary tables). At batch 1 some of those shared tensors are the
  very storage a batch-shaped one views, so batch 1 is its own case.
- At a fixed batch it is a quadratic in the length: activations are token-shaped (linear) or
  attention-map-shaped (quadratic), and a method's virtual tokens only shift the length.

So estimates at batch 1, 2 and 3, each at three lengths, give every other point, one quadratic
per batch and part, for each kind of step a method has (Theseus has two; the peak is the larger).
The tests hold every method on encoders and decoders to the full estimate at other points, and
the Plan page checks the point it shows against a direct estimate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

from .config import RunConfig
from .errors import ConfigError
from .estimate import GiB, cuda_requirement, estimate_memory
from .memory import PARTS
from .tasks import CLASSIFICATION
# Powers of two that people train at; a model's own position limit cuts the list.
PLAN_LENGTHS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SAMPLE_BATCHES = (1, 2, 3)


def _run_limit(name: str) -> int:
    return int(RunConfig.__dataclass_fields__[name].metadata["max"])


def _quadratic_at(xs: tuple[int, ...], ys: list[int], x: int) -> int:
    """The quadratic through three points, at x (exact: Lagrange's form in fractions)."""
    total = Fraction(0)
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        term = Fraction(yi)
        for j, xj in enumerate(xs):
            if j != i:
                term *= Fraction(x - xj, xi - xj)
        total += term
    return round(total)


@dataclass(frozen=True)
class MemorySurface:
    """One method's breakdown at every batch and length up to `longest`."""

    method: str
    lengths: tuple[int, int, int]  # where it was measured
    longest: int  # the longest input its backbone takes with this method
    # kind of step -> batch in SAMPLE_BATCHES -> part -> bytes at each of `lengths`
    samples: dict[str, dict[int, dict[str, list[int]]]]
    trainable_params: int
    total_params: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    task: str = CLASSIFICATION  # what the planned runs train: a classifier, or a language model (causal-lm)

    def _kind_breakdown(self, kind: str, batch_size: int, length: int) -> dict[str, int]:
        at = {b: {part: _quadratic_at(self.lengths, values, length) for part, values in parts.items()}
              for b, parts in self.samples[kind].items()}
        if batch_size == 1:
            return at[1]
        return {part: at[2][part] + (batch_size - 2) * (at[3][part] - at[2][part]) for part in PARTS}

    def step_kind(self, batch_size: int, length: int) -> str:
        return max(self.samples, key=lambda kind: sum(self._kind_breakdown(kind, batch_size, length).values()))

    def breakdown(self, batch_size: int, length: int) -> dict[str, int]:
        return self._kind_breakdown(self.step_kind(batch_size, length), batch_size, length)

    def peak(self, batch_size: int, length: int) -> int:
        return sum(self.breakdown(batch_size, length).values())

    def need(self, batch_size: int, length: int, *, cuda: bool = True) -> int:
        """Device memory for this shape: on CUDA the peak plus the documented allowance."""
        peak = self.peak(batch_size, length)
        return cuda_requirement(peak) if cuda else peak

    def largest_batch(self, length: int, capacity_bytes: int, *, cuda: bool = True) -> int:
        """The largest batch whose need at `length` fits `capacity_bytes` (0 when not even one
        example does), at most the run setting's own limit."""
        if self.need(1, length, cuda=cuda) > capacity_bytes:
            return 0
        low, high = 1, _run_limit("batch_size")  # need grows with the batch: bisect for the last that fits
        while low < high:
            middle = (low + high + 1) // 2
            if self.need(middle, length, cuda=cuda) <= capacity_bytes:
                low = middle
            else:
                high = middle - 1
        return low


def longest_input(backbone, method: str, method_config: dict | None = None) -> int:
    """The longest max_length a run of this method on this backbone accepts (positions less the
    method's virtual tokens, at most the run setting's limit)."""
    from .backbones import get_backbone
    from .methods import create_method

    backbone_obj = get_backbone(backbone) if isinstance(backbone, str) else backbone
    extra = create_method(method, dict(method_config or {})).extra_input_tokens()
    return min(_run_limit("max_length"), int(backbone_obj.max_length) - extra)


def measure_surface(backbone, method: str, method_config: dict | None = None, *, bf16: bool = False,
                    device: str = "cpu", backbone_precision: str = "fp32", progress=None,
                    task: str = CLASSIFICATION) -> MemorySurface:
    """Nine estimates of one method (batch 1-3 at three lengths) for runs of `task`; raises `LabError` on
    bad input. `progress(done, total)` is called after each."""
    longest = longest_input(backbone, method, method_config)
    grid = plan_lengths(longest)
    if len(grid) < 3:
        raise ConfigError(f"'{backbone}' with {method} takes inputs of at most {longest} tokens: too short to plan")
    lengths = (grid[0], grid[len(grid) // 2], grid[-1])
    samples: dict[str, dict[int, dict[str, list[int]]]] = {}
    estimates = []
    total = len(SAMPLE_BATCHES) * len(lengths)
    for batch in SAMPLE_BATCHES:
        for length in lengths:
            estimate = estimate_memory(backbone, method, batch, length, dict(method_config or {}), bf16=bf16,
                                       device=device, backbone_precision=backbone_precision, task=task)
            estimates.append(estimate)
            for row in estimate.steps:
                parts = samples.setdefault(row["kind"], {}).setdefault(batch, {p: [] for p in PARTS})
                for part in PARTS:
                    parts[part].append(row[part])
            if progress is not None:
                progress(len(estimates), total)
    first = estimates[0]
    return MemorySurface(
        method=first.method, lengths=lengths, longest=longest, samples=samples,
        trainable_params=first.trainable_params, total_params=first.total_params,
        seconds=sum(e.seconds for e in estimates),
        notes=[n for n in first.notes if not n.startswith(("worst-case", "peak from the step kind"))], task=task,
    )


def check_point(surface: MemorySurface, backbone, method_config: dict | None, batch_size: int, length: int, *,
                bf16: bool = False, device: str = "cpu", backbone_precision: str = "fp32") -> dict:
    """The surface's breakdown at one point beside a direct estimate there."""
    direct = estimate_memory(backbone, surface.method, batch_size, length, dict(method_config or {}), bf16=bf16,
                             device=device, backbone_precision=backbone_precision, task=surface.task)
    read = surface.breakdown(batch_size, length)
    return {"surface": read, "direct": direct.breakdown, "agrees": read == direct.breakdown, "seconds": direct.seconds}


def plan_lengths(longest: int) -> list[int]:
    """The lengths a plan draws: `PLAN_LENGTHS` up to `longest`, and `longest` itself when it falls
    between two of them."""
    lengths = [n for n in PLAN_LENGTHS if n <= longest]
    if longest not in lengths and longest >= 8:
        lengths.append(longest)
    return lengths


def device_capacity(gigabytes: float) -> int:
    """Bytes of a device sold as N GB, counted as `fits` counts them (GPU makers' GB are GiB: an
    "80 GB" card reports about 80 GiB)."""
    return int(gigabytes * GiB)


def fits_text(batch: int) -> str:
    return "does not fit" if batch == 0 else f"{batch:,}" + ("+" if batch >= _run_limit("batch_size") else "")

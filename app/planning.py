"""What fits where: the memory estimate over sequence lengths and batch sizes, per method.

From batch 2 on, a step's memory is affine in the batch size: weights, gradients and optimizer
states do not depend on it, and every saved activation either has the batch as a dimension or is
shared by the whole batch (a causal mask, rotary tables). At batch 1 some of those shared tensors
are the very storage a batch-shaped one views, so batch 1 is measured on its own. Three estimates,
at batch 1, 2 and 3, therefore give the peak at every batch size exactly, and the largest batch a
device holds without a search. The tests hold every method to that at other batch sizes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import RunConfig
from .estimate import GiB, cuda_requirement, estimate_memory

PARTS = ("weights", "gradients", "optimizer", "activations")
# Powers of two that people train at; a model's own position limit cuts the list.
PLAN_LENGTHS = (128, 256, 512, 1024, 2048, 4096, 8192)
DEVICE_GB = (8, 16, 24, 40, 80)


def _batch_limit() -> int:
    return int(RunConfig.__dataclass_fields__["batch_size"].metadata["max"])


@dataclass(frozen=True)
class StepLine:
    """One kind of training step's breakdown as a function of the batch size."""

    at_one: dict[str, int]  # the breakdown at batch 1
    at_two: dict[str, int]  # and at batch 2
    per_example: dict[str, int]  # what each example beyond the second adds, part by part

    def breakdown(self, batch_size: int) -> dict[str, int]:
        if batch_size == 1:
            return dict(self.at_one)
        return {part: self.at_two[part] + (batch_size - 2) * self.per_example[part] for part in PARTS}


@dataclass(frozen=True)
class PlanPoint:
    """One method at one sequence length, at every batch size. A method with several kinds of
    step (Theseus) has one line per kind, and the peak at a batch is the largest of them there."""

    method: str
    max_length: int
    lines: dict[str, StepLine]
    trainable_params: int
    total_params: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def step_kind(self, batch_size: int) -> str:
        return max(self.lines, key=lambda kind: sum(self.lines[kind].breakdown(batch_size).values()))

    def breakdown(self, batch_size: int) -> dict[str, int]:
        return self.lines[self.step_kind(batch_size)].breakdown(batch_size)

    @property
    def per_example(self) -> dict[str, int]:
        """What one more example adds (beyond two) on the step kind that grows fastest."""
        return max((line.per_example for line in self.lines.values()), key=lambda row: sum(row.values()))

    def peak(self, batch_size: int) -> int:
        return sum(self.breakdown(batch_size).values())

    def need(self, batch_size: int, *, cuda: bool = True) -> int:
        """Device memory for this batch: on CUDA the peak plus the documented allowance."""
        peak = self.peak(batch_size)
        return cuda_requirement(peak) if cuda else peak

    def largest_batch(self, capacity_bytes: int, *, cuda: bool = True) -> int:
        """The largest batch whose need fits `capacity_bytes` (0 when not even one example does),
        at most the run setting's own limit."""
        if self.need(1, cuda=cuda) > capacity_bytes:
            return 0
        low, high = 1, _batch_limit()  # need grows with the batch: bisect for the last that fits
        while low < high:
            middle = (low + high + 1) // 2
            if self.need(middle, cuda=cuda) <= capacity_bytes:
                low = middle
            else:
                high = middle - 1
        return low


def plan_point(backbone, method: str, max_length: int, method_config: dict | None = None, *,
               bf16: bool = False, device: str = "cpu") -> PlanPoint:
    """Estimates at batch 1, 2 and 3 of one method and length; raises `LabError` on bad input."""
    estimates = [estimate_memory(backbone, method, batch, max_length, dict(method_config or {}), bf16=bf16,
                                 device=device) for batch in (1, 2, 3)]
    by_kind = [{row["kind"]: {part: row[part] for part in PARTS} for row in e.steps} for e in estimates]
    one, two, three = by_kind
    lines = {kind: StepLine(at_one=one[kind], at_two=two[kind],
                            per_example={part: three[kind][part] - two[kind][part] for part in PARTS})
             for kind in one}
    first = estimates[0]
    return PlanPoint(
        method=first.method, max_length=max_length, lines=lines, trainable_params=first.trainable_params,
        total_params=first.total_params, seconds=sum(e.seconds for e in estimates),
        notes=[n for n in first.notes if not n.startswith(("worst-case", "peak from the step kind"))],
    )


def plan_lengths(position_limit: int | None) -> list[int]:
    """The lengths a plan draws: `PLAN_LENGTHS` up to the model's position limit (and the run
    setting's own), plus the limit itself when it falls between two of them."""
    top = int(RunConfig.__dataclass_fields__["max_length"].metadata["max"])
    if position_limit:
        top = min(top, int(position_limit))
    lengths = [n for n in PLAN_LENGTHS if n <= top]
    if top not in lengths and top >= 8:
        lengths.append(top)
    return lengths


def device_capacity(gigabytes: float) -> int:
    """Bytes of a device sold as N GB, counted as `fits` counts them (GPU makers' GB are GiB: an
    "80 GB" card reports about 80 GiB)."""
    return int(gigabytes * GiB)


def fits_text(batch: int) -> str:
    return "does not fit" if batch == 0 else f"{batch:,}" + ("+" if batch >= _batch_limit() else "")


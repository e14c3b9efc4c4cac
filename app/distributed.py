"""Data-parallel training over several processes (PyTorch DDP), started by torchrun or accelerate.

One run, N processes: every process builds the same model from the same seed and draws the same
global batches; each takes its share of every batch, and DDP averages the gradients of the
trainable parameters (a frozen backbone adds no traffic). Rank 0 alone writes the store,
evaluates and saves. A process that fails tells the others through the collectives (a closed
connection) and leaves its reason in the run's folder, so rank 0 records the run as failed with
that reason instead of hanging.
"""

from __future__ import annotations

import datetime
import gc
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as torch_dist
from torch import nn

from .errors import ConfigError, LabError, RunCancelled

# Collectives that wait longer than this mean a process is gone; the run fails instead of hanging.
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)
# How long a process that finished waits for the others before it leaves the group.
SHUTDOWN_WAIT = datetime.timedelta(seconds=30)
CANCEL_CODES = {0: None, 1: "cancelled", 2: "interrupted"}
# A file in the run's folder through which the app asks a run in other processes to stop; its
# text is the status the run ends with (cancelled or interrupted).
CANCEL_REQUEST = "cancel.request"


class RankLost(LabError):
    """Another process of a data-parallel run stopped; the message names it when it could say why."""


def cancel_request_path(store, run_id: str) -> Path:
    return store.run_dir(run_id) / CANCEL_REQUEST


def launch_command(run_id: str, runs_dir: Path, processes: int) -> list[str]:
    """How the app starts a stored data-parallel run: torchrun on this machine, one process per GPU
    (or CPU share), each running `python -m app execute RUN_ID`."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
            "-m", "app", "execute", run_id, "--runs-dir", str(runs_dir)]


def launch_environment(processes: int, environ: dict | None = None) -> dict:
    """The environment the app starts torchrun with. Without OMP_NUM_THREADS torchrun gives every
    process one CPU thread, which leaves most of a many-core machine idle; each process gets its
    share of this process's torch threads instead (one thread each on 2 cores with 2 processes). A
    value the user set is kept."""
    environ = dict(os.environ if environ is None else environ)
    if not environ.get("OMP_NUM_THREADS"):
        environ["OMP_NUM_THREADS"] = str(max(1, torch.get_num_threads() // max(1, processes)))
    return environ


def launched_world_size() -> int:
    """How many processes torchrun / accelerate started for this run (1 when none did)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


@dataclass
class DataParallel:
    """This process's place in a data-parallel run, and the few collectives the loop needs."""

    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: torch.device
    run_dir: Path | None = None  # where a failing process leaves its reason for rank 0
    failing: bool = False  # a lost process is being turned into this run's failure

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- starting -------------------------------------------------------------------------
    @classmethod
    def start(cls, device_name: str) -> "DataParallel":
        """Join the process group torchrun set up (env:// rendezvous): NCCL on CUDA, gloo on the CPU."""
        if "RANK" not in os.environ or "MASTER_ADDR" not in os.environ:
            raise ConfigError("a data-parallel run starts under torchrun or accelerate launch "
                              "(e.g. torchrun --nproc_per_node 2 -m app train ...)")
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        wants_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        if wants_cuda:
            if not torch.cuda.is_available():
                raise ConfigError(f"device '{device_name}' asked for, but CUDA is not available on this machine")
            if local_rank >= torch.cuda.device_count():
                raise ConfigError(f"process {local_rank} has no GPU: {torch.cuda.device_count()} CUDA device(s) "
                                  f"for {os.environ.get('LOCAL_WORLD_SIZE', '?')} processes on this machine")
            device, backend = torch.device("cuda", local_rank), "nccl"
            torch.cuda.set_device(device)
        elif device_name in ("auto", "cpu"):
            device, backend = torch.device("cpu"), "gloo"
        else:
            raise ConfigError(f"device '{device_name}' cannot be shared by data-parallel processes: use cpu or cuda")
        if not torch_dist.is_initialized():
            torch_dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
        return cls(torch_dist.get_rank(), local_rank, torch_dist.get_world_size(), backend, device)

    def describe(self) -> dict:
        return {"rank": self.rank, "pid": os.getpid(), "host": socket.gethostname(), "device": str(self.device)}

    def close(self, finished: bool = False) -> None:
        """Leave the process group. After work that finished on this process, every process first
        waits for the others (at most SHUTDOWN_WAIT), so none closes its connections while a peer
        still sends on them; garbage goes first, so no collective work outlives the interpreter
        (gloo threads that reach Python during its shutdown abort the process)."""
        gc.collect()
        if not torch_dist.is_initialized():
            return
        if finished and not self.failing:
            try:
                if self.backend == "gloo":
                    torch_dist.monitored_barrier(timeout=SHUTDOWN_WAIT)
                else:
                    torch_dist.barrier()
            except RuntimeError:
                pass  # a peer already left: there is nothing left to wait for
        torch_dist.destroy_process_group()

    # -- batches --------------------------------------------------------------------------
    def share(self, indices: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This process's part of a global batch, and the factor that makes DDP's gradient average
        equal the global batch's mean when the parts are unequal (a last, smaller batch)."""
        part = indices.tensor_split(self.world_size)[self.rank]
        return part, len(part) * self.world_size / len(indices)

    def usable(self, indices: torch.Tensor) -> bool:
        """A batch smaller than the number of processes would leave one with nothing: skipped."""
        return len(indices) >= self.world_size

    # -- agreeing -------------------------------------------------------------------------
    def _all_reduce(self, values: list[float], op) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        try:
            torch_dist.all_reduce(tensor, op=op)
        except RuntimeError as exc:
            raise self.lost(exc) from exc
        return tensor.tolist()

    def total(self, values: list[float]) -> list[float]:
        return self._all_reduce(values, torch_dist.ReduceOp.SUM)

    def any(self, flag: bool) -> bool:
        return self._all_reduce([1.0 if flag else 0.0], torch_dist.ReduceOp.MAX)[0] > 0

    def check_cancel(self, check) -> None:
        """Rank 0 decides (it alone watches the user's cancel); every process stops at the same step."""
        code = 0
        if self.is_main:
            try:
                check()
            except RunCancelled as stop:
                code = 2 if stop.status == "interrupted" else 1
        agreed = int(self._all_reduce([float(code)], torch_dist.ReduceOp.MAX)[0])
        if agreed:
            raise RunCancelled("the app stopped while this run was training" if agreed == 2 else "cancelled by the user",
                               status=CANCEL_CODES[agreed])

    def gather(self, value) -> list:
        gathered = [None] * self.world_size
        try:
            torch_dist.all_gather_object(gathered, value)
        except RuntimeError as exc:
            raise self.lost(exc) from exc
        return gathered

    def broadcast(self, value):
        holder = [value]
        try:
            torch_dist.broadcast_object_list(holder, src=0)
        except RuntimeError as exc:
            raise self.lost(exc) from exc
        return holder[0]

    # -- failures -------------------------------------------------------------------------
    def lost(self, exc: BaseException) -> RankLost:
        """The error a failed collective becomes: the other process's own reason when it left one."""
        self.failing = True
        reasons = self.reasons_left()
        if reasons:
            return RankLost("; ".join(reasons))
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return RankLost(f"another process of this {self.world_size}-process run stopped ({first_line})")

    def explain(self, exc: BaseException) -> BaseException:
        """A failure of DDP's own gradient all-reduce (raised from backward) becomes the lost
        process's reason; any other error stays as it is."""
        text = str(exc)
        if isinstance(exc, torch_dist.DistError) or (
                isinstance(exc, RuntimeError) and any(word in text for word in ("gloo", "NCCL", "Connection reset"))):
            return self.lost(exc)
        return exc

    def reasons_left(self, wait_seconds: float = 1.0) -> list[str]:
        if self.run_dir is None:
            return []
        deadline = time.monotonic() + wait_seconds
        while True:  # a failing process writes its reason just before its connections close
            reasons = [f"process {path.stem.split('-')[-1]} failed: {path.read_text(encoding='utf-8').strip()}"
                       for path in sorted(self.run_dir.glob("rank-*.error"))]
            if reasons or time.monotonic() > deadline:
                return reasons
            time.sleep(0.1)

    def leave_reason(self, message: str) -> None:
        if self.run_dir is not None and not self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / f"rank-{self.rank}.error").write_text(message, encoding="utf-8")

    def fail_on_terminate(self) -> None:
        """torchrun ends the surviving processes with SIGTERM when one fails: rank 0 turns that into
        a recorded failure instead of dying silently."""
        world = self.world_size

        def on_terminate(signum, frame):
            # Once: a second SIGTERM, or one arriving while a lost process is already being
            # recorded, must not interrupt the recording of the failure.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            if self.failing:
                return
            reasons = self.reasons_left(wait_seconds=0.5)
            raise RankLost("; ".join(reasons) if reasons else
                           f"torchrun stopped this {world}-process run (another process ended)")

        signal.signal(signal.SIGTERM, on_terminate)

    # -- the model ------------------------------------------------------------------------
    def wrap_step(self, method, model: nn.Module, state) -> nn.Module:
        """The method's whole training step as one DDP module, so DDP sees every forward the step
        makes and the method's code stays as it is."""
        step = TrainingStepModule(method, model, state)
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # No buffer sync on every forward: every process built the same buffers from the same seed
        # and no method changes them while training. Some methods leave parameters unused in a
        # step (a Theseus module that draws the predecessor's block): DDP then looks for them.
        return nn.parallel.DistributedDataParallel(step, device_ids=device_ids, forward_sync_buffers=False,
                                                   find_unused_parameters=method.varying_graph)


class TrainingStepModule(nn.Module):
    """`forward(batch, scale)` runs `method.training_step` and returns (scaled loss, loss, output)."""

    def __init__(self, method, model: nn.Module, state):
        super().__init__()
        self.model = model
        self._method = method
        self._state = state

    def forward(self, batch: dict, scale: float):
        out = self._method.training_step(self.model, batch, self._state)
        return out.loss * scale, out

"""Post-training compression of a finished run: unstructured and structured pruning,
half-precision casts, dynamic int8 and k-bit weight fake-quantization, each measured for accuracy,
size and CPU latency. `compress_run` is the entry point (CLI `python -m app compress`, UI page)."""

from .quantization import QUANTIZE_KINDS
from .sweep import RECORD_KIND, CompressionPlan, as_plan, compress_run, stored_points

__all__ = ["QUANTIZE_KINDS", "RECORD_KIND", "CompressionPlan", "as_plan", "compress_run", "stored_points"]

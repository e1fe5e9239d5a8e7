"""vithub.bench: the benchmarks behind ``vithub bench TARGET`` (the targets and their flags: :mod:`vithub.bench.cli`:
kernels, models, gpu, data, detection, segmentation, tokens, export).

Each logs a table and writes JSON (default: into the current directory); all time through
:func:`vithub.bench.timing.measure`, so CPU rows are round-robin medians and CUDA rows are timed with CUDA events.
Committed measurements live in the repository's ``benchmarks/results/``.
"""

from .timing import device_name, device_slug, measure, write_json

__all__ = ["device_name", "device_slug", "measure", "write_json"]

"""A small, fair timing helper for benchmarks (not for tests).

Candidates are warmed up, then timed round-robin ("interleaved"): repetition r runs
every candidate once before repetition r + 1 starts, so slow drifts of a shared
machine (other processes, thermal state) hit all candidates alike. The median of
the repetitions is reported, as wall-clock time and as process CPU time (all
threads); on a shared machine the CPU time is the steadier of the two, while the wall
time shows what multi-threading buys.

Example::

    from brainseg.utils.benchmark import benchmark, format_table

    timings = benchmark({"ours": run_ours, "reference": run_reference}, repeats=20)
    print(format_table(timings, baseline="reference"))
"""
import platform
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Mapping, Optional, Tuple

__all__ = ["Timing", "benchmark", "format_table", "cpu_model_name"]


@dataclass(frozen=True)
class Timing:
    """Wall-clock ``times`` and process CPU ``cpu_times`` of one candidate, in seconds."""

    name: str
    times: Tuple[float, ...]
    cpu_times: Tuple[float, ...] = ()

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu_times)

    @property
    def min(self) -> float:
        return min(self.times)

    @property
    def max(self) -> float:
        return max(self.times)


def benchmark(
    candidates: Mapping[str, Callable[[], object]],
    *,
    warmup: int = 2,
    repeats: int = 10,
    synchronize: Optional[Callable[[], None]] = None,
) -> Dict[str, Timing]:
    """Time callables: ``warmup`` untimed calls each, then ``repeats`` interleaved rounds.

    Args:
        candidates: name -> zero-argument callable doing one unit of work.
        warmup: untimed calls per candidate before timing (caches, allocator, JIT).
        repeats: timed rounds; every round calls each candidate once, in order.
        synchronize: called before starting and before stopping each timer, e.g.
            ``torch.cuda.synchronize`` for asynchronous devices.

    Returns:
        name -> :class:`Timing`, in the order of ``candidates``.

    Raises:
        ValueError: if there are no candidates, ``warmup < 0`` or ``repeats < 1``.
    """
    if not candidates:
        raise ValueError("benchmark: no candidates given")
    if warmup < 0 or repeats < 1:
        raise ValueError(f"benchmark: need warmup >= 0 and repeats >= 1, got {warmup} and {repeats}")
    sync = synchronize or (lambda: None)
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, list] = {name: [] for name in candidates}
    cpu_times: Dict[str, list] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            sync()
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
    return {name: Timing(name, tuple(times[name]), tuple(cpu_times[name])) for name in candidates}


def format_table(timings: Mapping[str, Timing], *, baseline: Optional[str] = None) -> str:
    """Render timings as a Markdown table (wall median/min and CPU median in ms,
    speed-up of the wall median vs ``baseline``).

    Args:
        timings: as returned by :func:`benchmark`.
        baseline: name of the candidate the speed-up column divides by; no such
            column when None.

    Returns:
        The table as a string (header, separator and one row per candidate).

    Raises:
        KeyError: if ``baseline`` is not one of the timed candidates.
    """
    header = "| candidate | median ms | min ms | CPU ms |"
    separator = "|---|---:|---:|---:|"
    if baseline is not None:
        if baseline not in timings:
            raise KeyError(f"format_table: baseline {baseline!r} not in {list(timings)}")
        header += f" speed-up vs {baseline} |"
        separator += "---:|"
    rows = [header, separator]
    for name, t in timings.items():
        cpu = f"{t.cpu_median * 1e3:.2f}" if t.cpu_times else "-"
        row = f"| {name} | {t.median * 1e3:.2f} | {t.min * 1e3:.2f} | {cpu} |"
        if baseline is not None:
            row += f" {timings[baseline].median / t.median:.2f}x |"
        rows.append(row)
    return "\n".join(rows)


def cpu_model_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (Linux), else the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"

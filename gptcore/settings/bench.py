"""The benchmark's schedule (`gptcore bench`, benchmarks/gpu_check.py): how many interleaved rounds time each
variant. Not a params.yaml section: the benchmark measures the machine, not a pipeline's run."""

from dataclasses import dataclass

from . import check_fields, setting


@dataclass(frozen=True)
class BenchConfig:
    rounds: int = setting(3, "at least this many timed rounds of every variant, interleaved, after a warm-up round; "
                             "more until the ratios settle", low=1)
    max_rounds: int = setting(10, "at most this many", low=1)
    settled_within: float = setting(0.02, "settled: one more round moves no paired ratio by more than this share",
                                    low=0, low_open=True, high=1)

    def __post_init__(self):
        check_fields(self, "bench")

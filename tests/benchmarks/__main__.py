"""`make bench`: run every benchmark and print one JSON document."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
from typing import Any

from tests.benchmarks.feast_compare import bench_feast_compare
from tests.benchmarks.features import bench_feature_reads
from tests.benchmarks.flows import bench_flow_throughput, bench_freshness
from tests.benchmarks.learner import bench_learner
from tests.benchmarks.monitor import bench_monitor
from tests.benchmarks.monitor_stats import bench_monitor_stats
from tests.benchmarks.parity import bench_parity
from tests.benchmarks.serving import bench_serving
from tests.benchmarks.simulator import bench_simulator
from tests.benchmarks.stack import benchmark_stack
from tests.benchmarks.steady_replay import bench_steady_replay
from tests.benchmarks.torch_train import bench_torch_train


def machine() -> dict[str, Any]:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo", encoding="utf-8")  # noqa: PTH123, SIM115
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}


def main() -> None:
    # libraries print progress to stdout (MLflow's "View run" lines); only the
    # JSON document may go there
    with contextlib.redirect_stdout(sys.stderr):
        results = run_all()
    json.dump(results, sys.stdout, indent=2)
    sys.stdout.write("\n")


def run_all() -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine()}
    results["torch_train"] = bench_torch_train()  # needs no stack
    results["monitor"] = bench_monitor()  # needs no stack: in-memory Kafka, a temporary lake
    results["monitor_stats"] = bench_monitor_stats()  # needs no stack
    # needs no stack; ~35 minutes of one core: 51 simulated days, 37 of them served by a model
    results["steady_replay"] = bench_steady_replay()
    with benchmark_stack() as settings:
        results["feature_reads"] = bench_feature_reads(settings)
        results["flows"] = bench_flow_throughput(settings)
        results["freshness"] = bench_freshness(settings)
        results["learner"] = bench_learner(settings)
        results["feast_compare"] = bench_feast_compare(settings)
        results["parity"] = bench_parity(settings)
        # before the pinning below: the API and wrk run as child processes
        results["serving"] = bench_serving(settings)
        # last: it pins this process to one core
        results["simulator"] = bench_simulator(settings)
    return results


if __name__ == "__main__":
    main()

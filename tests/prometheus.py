"""A real Prometheus (the Debian binary) for tests, scraping what a test names, every second.

:func:`running_prometheus` writes a config with one job per entry of
``targets`` and the project's alert rules (``monitoring/alerts/*.rules.yml``,
or the rule files given), starts ``prometheus`` on a free loopback port, and
stops it at the end.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import httpx

from tests.local_stack import free_port

RULE_FILES: Final = tuple(
    sorted((Path(__file__).resolve().parent.parent / "monitoring" / "alerts").glob("*.rules.yml"))
)


@contextmanager
def running_prometheus(
    folder: Path,
    targets: Mapping[str, Sequence[str]],
    rules: Sequence[Path] = RULE_FILES,
    *,
    labels: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[str]:
    """Prometheus scraping ``targets`` (job → addresses) each second; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError("prometheus is not installed: apt-get install prometheus")
    folder.mkdir(parents=True, exist_ok=True)
    rule_files = [str(path.resolve()) for path in rules]
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": rule_files,
        "scrape_configs": [
            {
                "job_name": job,
                "static_configs": [
                    {"targets": list(addresses), "labels": dict((labels or {}).get(job, {}))}
                ],
            }
            for job, addresses in targets.items()
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config, indent=1))  # JSON is YAML
    port = free_port()
    argv = [
        binary, f"--config.file={folder / 'prometheus.yml'}",
        f"--storage.tsdb.path={folder / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]  # fmt: skip
    log = (folder / "prometheus.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"prometheus at {url} not ready within {timeout:.0f} s")


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector ``expr`` evaluates to now (``/api/v1/query``)."""
    response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10.0)
    body = response.json()
    if body.get("status") != "success":
        raise ValueError(f"{expr!r}: {body.get('errorType')}: {body.get('error')}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def wait_for(url: str, expr: str, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Poll until ``expr`` returns at least one series; the series (TimeoutError if never)."""
    deadline = time.monotonic() + timeout
    while True:
        found = query(url, expr)
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expr} returned nothing within {timeout:.0f} s")
        time.sleep(0.5)

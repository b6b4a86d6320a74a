"""CPU per request of tokenlb revisions at saturation, alternating, with wrk.

    bench/.venv/bin/python bench/cpu_ab.py . HEAD~1 [--rounds 3] [--seconds 8]

``.`` is the working tree; anything else is a git revision, exported with ``git archive``.
Each round starts one replica of every revision in turn (pinned to CPU 1; wrk, the mock
and Redis on CPU 0), saturates it with ``wrk -c16`` (closed loop, one small chat body)
and divides the replica's CPU seconds by the requests it answered.

Latency under load is ``run.py``'s job (open loop); this answers a narrower question that
the shared machine's noise cannot blur as easily: how much CPU does one request cost?
Throughput swings with whatever else runs on the machine, CPU per request much less,
and alternating revisions round by round spreads the noise over both.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import run

BODY = (
    '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You are a helpful '
    'assistant."},{"role":"user","content":"the balancer routes each request to the target '
    'with the lowest decayed usage so that tokens spread evenly across deployments"}]}'
)


def wrk(url: str, script: Path, seconds: float) -> tuple[float, int, int]:
    """(requests/s, requests, non-2xx) of one wrk run."""
    out = subprocess.run(
        [
            *("taskset", "-c", "0", "wrk", "-t1", "-c16", f"-d{seconds:g}s"),
            *("-s", str(script), url),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rate is None or count is None:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return float(rate.group(1)), int(count.group(1)), int(failed.group(1)) if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help=". for the working tree, or git revisions")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (bench/setup.sh installs it)")
    with tempfile.TemporaryDirectory(prefix="tokenlb-cpu-ab-") as tmp:
        workdir = Path(tmp)
        script = workdir / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = '{BODY}'\n"
        )
        redis_proc, redis_port = harness.start_redis(workdir, 0)
        mock, mock_port = harness.start_mock(workdir, sys.executable, 0)
        config = harness.write_tokenlb_config(workdir, mock_port)
        sources = {
            rev: harness.REPO if rev == "." else run.export_revision(rev, workdir)
            for rev in args.revisions
        }
        cpu_us: dict[str, list[float]] = {rev: [] for rev in args.revisions}
        rates: dict[str, list[float]] = {rev: [] for rev in args.revisions}
        try:
            for round_ in range(args.rounds):
                for rev in args.revisions:
                    name = f"r{round_}-{rev.replace('/', '_')}"
                    proc, port = harness.start_tokenlb(
                        workdir, sys.executable, config, redis_port, 1, name, sources[rev]
                    )
                    try:
                        url = f"http://127.0.0.1:{port}/v1/chat/completions"
                        wrk(url, script, 2)  # warm up
                        before = harness.cpu_seconds(proc.pid)
                        rate, count, failed = wrk(url, script, args.seconds)
                        used = harness.cpu_seconds(proc.pid) - before
                    finally:
                        proc.stop()
                    cpu_us[rev].append(used / max(1, count) * 1e6)
                    rates[rev].append(rate)
                    print(
                        f"round {round_} {rev:12} {rate:8.0f} req/s "
                        f"{cpu_us[rev][-1]:6.0f} µs CPU/request  non-2xx {failed}",
                        flush=True,
                    )
        finally:
            mock.stop()
            redis_proc.stop()
    for rev in args.revisions:
        print(
            f"{rev:12} median {statistics.median(rates[rev]):8.0f} req/s, "
            f"{statistics.median(cpu_us[rev]):6.0f} µs CPU/request"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

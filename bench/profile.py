"""Profile one tokenlb replica under open-loop load with py-spy.

    bench/.venv/bin/python bench/profile.py [--rate 200] [--seconds 15] [--kind plain]

Starts Redis, the mock and one replica (pinned like ``run.py`` does), offers the load,
records the replica with ``py-spy record`` (sampling, so the replica runs at full speed),
and prints the functions holding the most samples, by own time and by total time. The
collapsed stacks (``profile.txt``, for any flame-graph tool) land in ``bench/results/``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness
import run


def summarize(collapsed: Path, top: int) -> str:
    """Own and total sample shares per function from py-spy's collapsed stacks."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = stack.split(";")
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    lines = [f"{samples} samples"]
    for title, counter in (("own time", own), ("total time", total)):
        lines.append(f"-- top {top} by {title}")
        lines.extend(
            f"{count / samples:6.1%}  {frame}" for frame, count in counter.most_common(top)
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=15)
    parser.add_argument("--kind", choices=("plain", "stream"), default="plain")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--out", type=Path, default=run.RESULTS)
    parser.add_argument("--native", action="store_true", help="include C frames (py-spy --native)")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tokenlb-profile-") as tmp:
        workdir = Path(tmp)
        redis_proc, redis_port = harness.start_redis(workdir, 0)
        mock, mock_port = harness.start_mock(workdir, sys.executable, 0)
        ctx = run.Context(
            workdir=workdir,
            python=sys.executable,
            litellm=None,
            sut_cpu=1,
            harness_cpu=0,
            redis=redis_proc,
            redis_port=redis_port,
            mock=mock,
            mock_port=mock_port,
            bodies=run.write_bodies(workdir),
        )
        system = run.start_tokenlb(ctx, 1)
        try:
            run.warm_up(ctx, system)
            replica = next(iter(system.processes.values()))
            collapsed = args.out / "profile.txt"
            load = subprocess.Popen(
                [
                    *("taskset", "-c", "0", sys.executable, str(run.BENCH / "loadgen.py")),
                    *("--url", system.url, "--bodies", str(ctx.bodies[args.kind])),
                    *("--rate", str(args.rate), "--duration", str(args.seconds + 2)),
                    *("--warmup", "1", "--out", str(workdir / "load.json")),
                ],
            )
            time.sleep(1.5)
            # --native has to pause the process to unwind C stacks.
            sampling = ["--native"] if args.native else ["--nonblocking"]
            spy = subprocess.run(
                [
                    *(py_spy, "record", *sampling, "--rate", "250", "--format", "raw"),
                    *("--duration", str(int(args.seconds)), "--output", str(collapsed)),
                    *("--pid", str(replica.pid)),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            load.wait(timeout=args.seconds + 60)
            if spy.returncode != 0:
                raise SystemExit(f"py-spy failed: {spy.stderr.strip()}")
        finally:
            system.stop()
            mock.stop()
            redis_proc.stop()
    print(summarize(collapsed, args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""``tokenlb demo`` end to end: a small fleet, some traffic, and its final table."""

from __future__ import annotations

import os
import subprocess

import pytest

from tests.support import tokenlb_command


def test_the_final_table_shows_each_share_of_what_the_balancer_counts() -> None:
    result = subprocess.run(
        tokenlb_command("demo", "--requests", "40", "--replicas", "1", "--concurrency", "4"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "target" in line and "requests" in line)
    # The demo balancer is lowest-usage by total tokens: that is what the share is of.
    assert header.split("┃")[-2].strip() == "share of total tokens"
    rows = [line.split("│")[1:-1] for line in lines if line.startswith("│ gpt-")]
    assert len(rows) == 2, result.stdout
    totals = [int(row[4]) for row in rows]
    shown = [float(row[-1].strip().rstrip("%")) for row in rows]
    expected = [100 * total / sum(totals) for total in totals]
    assert shown == pytest.approx(expected, abs=0.05)

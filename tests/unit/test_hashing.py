"""consistent-hashing: deterministic, weight-proportional, minimally disruptive."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import pytest

from tokenlb_proxy.hashing import ConsistentHash

TARGETS = [("t-alpha", 100), ("t-bravo", 100), ("t-charlie", 100)]
KEYS = [f"user-{n}" for n in range(6000)]
#: Sticky sessions must not move when tokenlb is upgraded: these orders are fixed forever.
GOLDEN: dict[str, tuple[int, ...]] = {
    "alice": (0, 1, 2),
    "bob": (1, 2, 0),
    "carol": (2, 1, 0),
    "dave": (2, 1, 0),
}


def firsts(hashing: ConsistentHash, targets: list[tuple[str, int]]) -> dict[str, str]:
    return {key: targets[hashing.order(key)[0]][0] for key in KEYS}


def test_every_order_holds_every_target_once() -> None:
    hashing = ConsistentHash(TARGETS, 10000)
    for key in KEYS[:500]:
        assert sorted(hashing.order(key)) == [0, 1, 2]


def test_keys_fall_into_slots_buckets() -> None:
    hashing = ConsistentHash(TARGETS, 10)
    assert {hashing.bucket(key) for key in KEYS} == set(range(10))
    assert len({hashing.order(key) for key in KEYS}) <= 10


@pytest.mark.parametrize(("weights", "slots"), [((300, 100), 10000), ((70, 25, 5), 65536)])
def test_keys_spread_in_proportion_to_weight(weights: tuple[int, ...], slots: int) -> None:
    hashing = ConsistentHash([(f"t{i}", w) for i, w in enumerate(weights)], slots)
    shares = Counter(hashing.order(key)[0] for key in KEYS)
    for index, weight in enumerate(weights):
        assert shares[index] / len(KEYS) == pytest.approx(weight / sum(weights), abs=0.025)


def test_the_same_key_maps_the_same_in_another_process() -> None:
    """Replicas share no state: the mapping must not depend on the process (hash seeds)."""
    code = (
        "from tokenlb_proxy.hashing import ConsistentHash\n"
        f"hashing = ConsistentHash({TARGETS!r}, 10000)\n"
        f"print([hashing.order(k) for k in {KEYS[:50]!r}])\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            check=True,
            capture_output=True,
            text=True,
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": ":".join(sys.path)},
        ).stdout
        for seed in ("1", "2")
    }
    here = str([ConsistentHash(TARGETS, 10000).order(k) for k in KEYS[:50]]) + "\n"
    assert outputs == {here}


def test_mapping_is_stable_across_releases() -> None:
    hashing = ConsistentHash(TARGETS, 10000)
    assert {key: hashing.order(key) for key in GOLDEN} == GOLDEN


def test_removing_a_target_moves_only_its_own_keys() -> None:
    before = firsts(ConsistentHash(TARGETS, 10000), TARGETS)
    kept = [t for t in TARGETS if t[0] != "t-bravo"]
    after = firsts(ConsistentHash(kept, 10000), kept)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert moved
    assert all(before[key] == "t-bravo" for key in moved)
    # ...and bravo's keys go where their failover order already said.
    full = ConsistentHash(TARGETS, 10000)
    assert all(after[key] == TARGETS[full.order(key)[1]][0] for key in moved)


def test_adding_a_target_takes_keys_only_for_itself() -> None:
    before = firsts(ConsistentHash(TARGETS, 10000), TARGETS)
    grown = [*TARGETS, ("t-delta", 100)]
    after = firsts(ConsistentHash(grown, 10000), grown)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "t-delta" for key in moved)
    assert len(moved) / len(KEYS) == pytest.approx(0.25, abs=0.025)


def test_reweighting_one_target_moves_keys_only_to_or_from_it() -> None:
    before = firsts(ConsistentHash(TARGETS, 10000), TARGETS)
    heavier = [("t-alpha", 300), *TARGETS[1:]]
    after = firsts(ConsistentHash(heavier, 10000), heavier)
    moved = [key for key in KEYS if before[key] != after[key]]
    assert all(after[key] == "t-alpha" for key in moved)

"""The out-of-process engine protocol of the benchmarks (benchmarks/_rounds.py), with fake engines
in a child run by this python: how DeepSparse joins obert's interleaved rounds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))
from _rounds import RemoteEngine, RemoteError, interleaved  # noqa: E402

pytestmark = pytest.mark.slow  # starts child processes (about a second in all)

CHILD = """
import os, sys, time
sys.path.insert(0, {bench!r})
from _rounds import serve

calls = 0

def sleepy():
    print("chatter a library writes to stdout")  # must not reach the protocol channel
    os.write(1, b"and a native one\\n")
    time.sleep(0.003)

def flaky():
    global calls
    calls += 1
    if calls > {die_after}:
        os._exit(3)

def broken():
    raise ValueError("no such model")

def info():
    if {fail_start}:
        raise RuntimeError("deepsparse is not installed")
    return {{"version": "9.9"}}

sys.exit(serve({{"sleepy": lambda: sleepy, "flaky": lambda: flaky, "broken": broken}}, info))
"""


def child(tmp_path: Path, die_after: int = 10**9, fail_start: bool = False) -> list[str]:
    script = tmp_path / f"child-{die_after}-{fail_start}.py"
    script.write_text(CHILD.format(bench=str(BENCH), die_after=die_after, fail_start=fail_start))
    return [sys.executable, str(script)]


def test_runner_times_on_command_and_survives_bad_commands(tmp_path: Path) -> None:
    with RemoteEngine(child(tmp_path), timeout=30) as r:
        assert r.ready == ["sleepy", "flaky"] and r.info == {"version": "9.9"}
        assert r.failed == {"broken": "ValueError: no such model"}
        ms = r.time("sleepy", 3)
        assert len(ms) == 3 and all(3.0 <= x < 1000 for x in ms)  # timed in the child
        with pytest.raises(RemoteError, match="no engine 'nope'"):
            r.time("nope", 1)
        with pytest.raises(RemoteError, match="calls must be a positive integer"):
            r.time("sleepy", 0)
        assert r.dead is None and len(r.engine("sleepy").time(2)) == 2  # still serving
    assert r.proc.returncode == 0  # quit on close


def test_runner_that_dies_is_reported_in_one_line_and_stays_dead(tmp_path: Path) -> None:
    r = RemoteEngine(child(tmp_path, die_after=1), timeout=30)
    r.time("flaky", 1)
    with pytest.raises(RemoteError, match="runner exited with code 3") as e:
        r.time("flaky", 1)
    assert "\n" not in str(e.value)
    with pytest.raises(RemoteError, match="exited with code 3"):
        r.time("sleepy", 1)
    r.close()
    assert r.proc.returncode == 3


def test_runner_that_cannot_start_or_prints_garbage(tmp_path: Path) -> None:
    with pytest.raises(RemoteError, match="code 2: runner: RuntimeError: deepsparse is not ins"):
        RemoteEngine(child(tmp_path, fail_start=True), timeout=30)
    garbage = [sys.executable, "-c", "print('Welcome to FastEngine 2.0'); input()"]
    with pytest.raises(RemoteError, match="printed 'Welcome to FastEngine 2.0', not a protocol"):
        RemoteEngine(garbage, start_timeout=30)
    with pytest.raises(RemoteError, match="no answer within 0.5 s"):
        RemoteEngine([sys.executable, "-c", "input()"], start_timeout=0.5)
    with pytest.raises(RemoteError, match="did not start"):
        RemoteEngine([str(tmp_path / "no-such-python")])


def test_rounds_rotate_and_a_dead_runner_leaves_the_others(tmp_path: Path) -> None:
    order: list[str] = []

    def busy(name: str):
        def run() -> None:
            order.append(name)
            x = 0
            for i in range(20000):
                x += i

        return run

    steady = RemoteEngine(child(tmp_path), timeout=30)
    dying = RemoteEngine(child(tmp_path, die_after=2), timeout=30)  # dies in round 2
    failed: dict[str, str] = {}
    try:
        out = interleaved({"a": busy("a"), "b": busy("b"), "ds": steady.engine("sleepy"),
                           "flaky": dying.engine("flaky")}, rounds=4, calls=1, warmup=1,
                          refs=("a",), failed=failed)
    finally:
        steady.close()
        dying.close()
    assert set(out) == {"a", "b", "ds"} and list(failed) == ["flaky"]
    assert "runner exited with code 3" in failed["flaky"]
    # warm-up a b; round r starts at engine r of those left (flaky dies in round 1)
    assert "".join(order) == "ab" + "ab" + "ba" + "ab" + "ab"
    ds = out["ds"]
    assert len(ds["rounds_ms"]) == 4 and all(x >= 3.0 for x in ds["rounds_ms"])
    assert ds["own_process"] and 0 < ds["x_a"]["min"] <= ds["x_a"]["median"] <= ds["x_a"]["max"]
    # the child sleeps on its pipe while "a" and "b" run, and we on ours while it times
    if ds["cpu_while_others"] is not None:
        assert ds["cpu_while_others"] < 0.5
    assert ds["our_cpu_while_it"] < 0.5
    assert "own_process" not in out["a"]

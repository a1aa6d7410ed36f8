"""Timing engines in interleaved rounds, in this process or in a child that holds them.

Every engine of a table runs in the same rounds (each round: ``calls`` calls of each engine, the
round's median kept, the order rotated by the round), so a drift of the machine hits all of a
round alike, and each speed-up is a per-round ratio. An engine that cannot live in the
benchmark's process (DeepSparse needs its own venv) runs in a child process that holds it
compiled and times N calls on command: :class:`RemoteEngine` here, :func:`serve` in the child.
While one side times, the other waits on a pipe, so the two never compete for the cores.

Protocol, one JSON object a line each way (the child's stdout carries nothing else: whatever its
libraries print is sent to stderr):

- child, once its engines are built: ``{"ready": [names], "failed": {name: reason}, "info": {}}``
- ``{"op": "time", "engine": name, "calls": N}`` -> ``{"ok": true, "ms": [N per-call ms]}`` or
  ``{"ok": false, "error": "one line"}`` (the child carries on)
- ``{"op": "quit"}`` (or stdin closed) -> ``{"ok": true}``, and the child exits 0

A child that cannot start prints one line on stderr and exits 2. Standard library only: the
child's venv has neither torch nor obert.
"""

from __future__ import annotations

import json
import math
import os
import select
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

Call = Callable[[], object]


class Timed(Protocol):
    def time(self, calls: int) -> list[float]: ...


class RemoteError(RuntimeError):
    """The child died, hung, refused a command or answered outside the protocol (one line)."""


def one_line(msg: object, limit: int = 240) -> str:
    s = " ".join(str(msg).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def time_calls(fn: Call, calls: int) -> list[float]:
    """Milliseconds of each of ``calls`` calls of ``fn``."""
    ms = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        ms.append((time.perf_counter() - t0) * 1e3)
    return ms


class Local:
    """An in-process callable as a :class:`Timed` engine."""

    def __init__(self, fn: Call) -> None:
        self.fn = fn

    def time(self, calls: int) -> list[float]:
        return time_calls(self.fn, calls)


# ---------------------------------------------------------------------------------- the child
def serve(builders: Mapping[str, Callable[[], Call]],
          info: Callable[[], dict[str, Any]] = dict) -> int:
    """Run in the child: build each engine (``builders[name]()`` returns its call), report them
    ready, then answer commands on stdin until quit or EOF. Returns the exit code."""
    proto = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # native libraries write to fd 1: keep it off the protocol channel
    sys.stdout = sys.stderr

    def say(obj: dict) -> None:
        proto.write(json.dumps(obj) + "\n")
        proto.flush()

    try:
        meta = info()
    except Exception as e:  # noqa: BLE001 - any failure to start is reported the same way
        print(f"runner: {one_line(f'{type(e).__name__}: {e}')}", file=sys.stderr, flush=True)
        return 2
    engines: dict[str, Call] = {}
    failed: dict[str, str] = {}
    for name, build in builders.items():
        try:
            engines[name] = build()
        except Exception as e:  # noqa: BLE001 - one engine failing leaves the others usable
            failed[name] = one_line(f"{type(e).__name__}: {e}")
    say({"ready": list(engines), "failed": failed, "info": meta})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            op = cmd.get("op") if isinstance(cmd, dict) else None
            if op == "quit":
                say({"ok": True})
                return 0
            if op != "time":
                raise ValueError(f"unknown command {line.strip()[:80]!r}")
            name, calls = cmd.get("engine"), cmd.get("calls")
            if name not in engines:
                raise ValueError(f"no engine {name!r} (ready: {', '.join(engines) or 'none'})")
            if not isinstance(calls, int) or isinstance(calls, bool) or calls < 1:
                raise ValueError(f"calls must be a positive integer, not {calls!r}")
            say({"ok": True, "ms": time_calls(engines[name], calls)})
        except Exception as e:  # noqa: BLE001 - a bad command or a failing call is answered
            say({"ok": False, "error": one_line(f"{type(e).__name__}: {e}")})
    return 0


# --------------------------------------------------------------------------------- the parent
class RemoteEngine:
    """A child process (``cmd``) running :func:`serve`; waits until its engines are built.

    ``ready``, ``failed`` and ``info`` are the child's hello. Any failure (the child exits,
    hangs past ``timeout`` s, prints a line that is not the protocol's) raises
    :class:`RemoteError` with one line and leaves this object dead: later calls raise the same.
    """

    def __init__(self, cmd: Sequence[str], env: Mapping[str, str] | None = None,
                 start_timeout: float = 1800.0, timeout: float = 600.0) -> None:
        self.timeout = timeout
        self.dead: str | None = None
        self._buf = b""
        self._err = tempfile.TemporaryFile()  # a file, not a pipe: a chatty child never blocks
        try:
            self.proc = subprocess.Popen(list(cmd), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=self._err,
                                         env=None if env is None else dict(env))
        except OSError as e:
            self._err.close()
            raise RemoteError(one_line(f"runner did not start: {e}")) from None
        try:
            hello = self._reply(start_timeout)
            if not (isinstance(hello.get("ready"), list) and isinstance(hello.get("failed"), dict)):
                raise self._fail(f"runner's first line is not its hello: {one_line(hello, 120)}")
        except BaseException:
            self.close()
            raise
        self.ready: list[str] = [str(n) for n in hello["ready"]]
        self.failed: dict[str, str] = {str(k): one_line(v) for k, v in hello["failed"].items()}
        self.info: dict[str, Any] = hello.get("info") or {}

    def __enter__(self) -> RemoteEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def engine(self, name: str) -> RemoteCall:
        """``name`` as a :class:`Timed` engine for :func:`interleaved`."""
        return RemoteCall(self, name)

    def time(self, engine: str, calls: int) -> list[float]:
        """Milliseconds of each of ``calls`` calls of ``engine``, timed in the child."""
        self._send({"op": "time", "engine": engine, "calls": calls})
        r = self._reply(self.timeout)
        if r.get("ok") is not True:
            raise RemoteError(f"{engine}: {one_line(r.get('error', r))}")
        ms = r.get("ms")
        if not (isinstance(ms, list) and len(ms) == calls and all(
                isinstance(x, int | float) and math.isfinite(x) and x > 0 for x in ms)):
            raise self._fail(f"runner answered {one_line(r, 120)} to {calls} calls of {engine}")
        return [float(x) for x in ms]

    def cpu_s(self) -> float | None:
        """CPU seconds the child has used so far (all its threads), where /proc tells."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return None

    def close(self) -> None:
        """Ask the child to quit; kill it if it does not within 10 s. Safe to call twice."""
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
                self.proc.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self._err):
            try:
                f.close()
            except OSError:
                pass
        self.dead = self.dead or "closed"

    def _fail(self, why: str) -> RemoteError:
        """Mark this runner dead (its channel can no longer be trusted) and stop it."""
        self.dead = one_line(why)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return RemoteError(self.dead)

    def _send(self, obj: dict) -> None:
        if self.dead:
            raise RemoteError(self.dead)
        try:
            self.proc.stdin.write((json.dumps(obj) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            raise self._fail(self._exit_reason()) from None

    def _reply(self, timeout: float) -> dict:
        """The next line from the child as a JSON object; waits (idle) up to ``timeout`` s."""
        if self.dead:
            raise RemoteError(self.dead)
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._fail(f"runner gave no answer within {timeout:g} s (killed)")
            if not select.select([fd], [], [], left)[0]:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self._fail(self._exit_reason())
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        try:
            obj = json.loads(line)
        except ValueError:
            obj = None
        if not isinstance(obj, dict):
            raise self._fail(f"runner printed {one_line(line.decode(errors='replace'), 120)!r},"
                             " not a protocol line")
        return obj

    def _exit_reason(self) -> str:
        try:
            rc = self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._err.seek(0, os.SEEK_END)
        self._err.seek(max(0, self._err.tell() - 4096))
        tail = [x for x in self._err.read().decode(errors="replace").splitlines() if x.strip()]
        return f"runner exited with code {rc}" + (f": {tail[-1]}" if tail else "")


class RemoteCall:
    """One engine of a :class:`RemoteEngine` as a :class:`Timed` engine."""

    def __init__(self, remote: RemoteEngine, name: str) -> None:
        self.remote, self.name = remote, name

    def time(self, calls: int) -> list[float]:
        return self.remote.time(self.name, calls)


# -------------------------------------------------------------------------------- the rounds
def _as_timed(e: Call | Timed) -> Timed:
    return e if hasattr(e, "time") else Local(e)  # type: ignore[arg-type]


def interleaved(engines: Mapping[str, Call | Timed], rounds: int, calls: int, warmup: int,
                refs: tuple[str, ...] = ("dense_fp32", "dense_int8"),
                failed: dict[str, str] | None = None) -> dict:
    """Time every engine in ``rounds`` rounds (each round: ``calls`` calls of each engine, the
    median kept; round r starts at engine r and goes round, so none always runs first or after
    the same one), after ``warmup`` untimed calls of each. Per engine: the median over rounds of
    the per-round medians, their spread (max / min), and its speed-up over each reference
    engine per round (median, min and max over rounds): a drift of the machine hits every
    engine of a round alike, so the ratios hold where single timings swing.

    Engines are callables (timed here) or :class:`Timed` (e.g. :class:`RemoteCall`). A remote
    engine that fails (:class:`RemoteError`) is dropped from the rounds, its one-line reason in
    ``failed``; the others carry on. Each remote engine's entry also holds ``cpu_while_others``
    (cores its process kept busy while this process timed: ~0 when it is truly idle) and
    ``our_cpu_while_it`` (cores this process kept busy while it timed)."""
    timed = {n: _as_timed(e) for n, e in engines.items()}
    failed = {} if failed is None else failed
    cross: dict[str, list[float]] = {n: [0.0, 0.0, 0.0, 0.0] for n, e in timed.items()
                                     if isinstance(e, RemoteCall)}

    def run(n: str, k: int) -> list[float] | None:
        e = timed[n]
        try:
            if not isinstance(e, RemoteCall):
                before = {m: timed[m].remote.cpu_s() for m in cross if m in timed}
                t0 = time.perf_counter()
                ms = e.time(k)
                wall = time.perf_counter() - t0
                for m, c0 in before.items():
                    c1 = timed[m].remote.cpu_s()
                    if c0 is not None and c1 is not None:
                        cross[m][0] += c1 - c0
                        cross[m][1] += wall
                return ms
            c0, t0 = time.process_time(), time.perf_counter()
            ms = e.time(k)
            cross[n][2] += time.process_time() - c0
            cross[n][3] += time.perf_counter() - t0
            return ms
        except RemoteError as err:
            failed[n] = str(err)
            del timed[n]
            return None

    for n in list(timed):
        if warmup:
            run(n, warmup)
    per_round: dict[str, list[float]] = {n: [] for n in timed}
    for r in range(rounds):
        names = list(timed)
        k = r % max(1, len(names))
        for n in names[k:] + names[:k]:
            ms = run(n, calls)
            if ms is not None:
                per_round[n].append(statistics.median(ms))
    out: dict[str, dict] = {}
    for n in timed:
        ms = per_round[n]
        out[n] = {"median_ms": statistics.median(ms), "rounds_ms": ms,
                  "spread": max(ms) / min(ms)}
        for ref in refs:
            if ref in timed:
                r = [a / b for a, b in zip(per_round[ref], ms, strict=True)]
                out[n][f"x_{ref}"] = {"median": statistics.median(r), "min": min(r),
                                      "max": max(r)}
        if n in cross:
            c = cross[n]
            out[n].update(own_process=True,
                          cpu_while_others=c[0] / c[1] if c[1] else None,
                          our_cpu_while_it=c[2] / c[3] if c[3] else None)
    return out

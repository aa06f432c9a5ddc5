"""A pool of environment worker processes: episodes run in other processes, with per-call timeouts and restarts.

Why processes: ALFWorld/TextWorld keep global state and are not thread-safe, and Python threads would not run
CPU-bound steps in parallel anyway. Each worker process hosts several environment instances keyed by an id; the
parent holds lightweight ``RemoteEnv`` proxies that follow the ``TextEnv`` contract.

Decisions:

* ``ProcessEnvPool.make_env`` (also ``pool()``, so the pool itself is an ``EnvFactory``) assigns the new episode to
  the worker hosting the fewest open environments (ties: the lowest worker index). The instance is built in the
  worker by the factory on its first call, so building counts towards the first call's timeout.
* Calling ``RemoteEnv.step`` blocks for one round trip. To run steps of many episodes concurrently use
  ``step_envs`` / ``reset_envs`` (or the pool's ``step_many`` / ``reset_many``): they send every request first,
  one message per worker, then gather the answers; each item's outcome is its result or the exception it raised.
* A worker that does not answer a call within its timeout (``step_timeout_s``; ``reset_timeout_s`` for resets)
  is killed, and a worker that dies (segfault, ``os._exit``) is noticed through its process sentinel. Either way
  every environment it hosted is lost: pending and later calls on them raise ``EnvCrashed``, and a fresh worker
  takes its slot so the pool keeps working.
* An exception raised by the environment inside a worker reaches the parent as an ``EnvError``: an ``EnvError``
  keeps its class, any other exception becomes ``RemoteEnvError``; the message ends with the worker's traceback.
* Results depend only on what each environment computes from ``(task_id, seed, actions)``, never on the worker
  count or placement, provided environments do not share process-global state (instances in one worker share
  their process). Worker processes inherit the parent's environment variables, ``PYTHONHASHSEED`` included.
* ``num_workers=0`` runs everything in the calling process: ``make_env`` returns the factory's environment.
* A pool is used from one thread. ``close()`` (or leaving the ``with`` block) stops and reaps every worker; a
  pool that is garbage-collected or still open at interpreter exit is shut down the same way.
"""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import time
import traceback
import weakref
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from sdar.errors import ShowTraceback
from sdar.envs.base import EnvCrashed, EnvError, EnvFactory, TextEnv
from sdar.records import EnvInfo, StepResult

__all__ = [
    "ProcessEnvPool",
    "RemoteEnv",
    "RemoteEnvError",
    "ResetOutcome",
    "StepOutcome",
    "registry_factory",
    "reset_envs",
    "step_envs",
]

logger = logging.getLogger(__name__)

StepOutcome = StepResult | Exception
"""What one item of a batched step gives: its ``StepResult`` or the exception the step raised."""
ResetOutcome = tuple[str, EnvInfo] | Exception
"""What one item of a batched reset gives: ``(observation, info)`` or the exception the reset raised."""

_SHUTDOWN_GRACE_S = 5.0
"""How long ``close`` waits for workers to exit on their own before killing them."""


class RemoteEnvError(ShowTraceback, EnvError):
    """An exception other than ``EnvError`` raised by an environment inside a worker process.

    Attributes:
        remote_type: class name of the original exception, with its module unless built in (``"KeyError"``,
            ``"textworld.core.GameNotRunningError"``).
    """

    def __init__(self, message: str, remote_type: str = "") -> None:
        super().__init__(message)
        self.remote_type = remote_type


def _build_from_registry(name: str, kwargs: dict[str, Any]) -> TextEnv:
    from sdar.envs.registry import make_env_factory

    return make_env_factory(name, **kwargs)()


def registry_factory(name: str, **kwargs: Any) -> EnvFactory:
    """A picklable factory for the registered environment ``name`` (the registry's own factories may be lambdas).

    Args:
        name: environment name known to ``sdar.envs.registry.make_env_factory``.
        **kwargs: forwarded to ``make_env_factory`` in the worker (must be picklable).
    """
    return functools.partial(_build_from_registry, name, dict(kwargs))


# ----- worker side ---------------------------------------------------------------------------------------------


def _pack_error(exc: BaseException) -> tuple[str, str, str, str, bytes | None]:
    """(type's module, type's qualified name, message, traceback text, pickled exception or None) for the parent."""
    try:
        blob: bytes | None = pickle.dumps(exc)
    except Exception:  # noqa: BLE001 - an unpicklable exception still travels as text
        blob = None
    return type(exc).__module__, type(exc).__qualname__, str(exc), traceback.format_exc(), blob


def _run_op(envs: dict[int, TextEnv], factory: EnvFactory, env_id: int, op: str, arg: Any) -> Any:
    if op == "close":
        env = envs.pop(env_id, None)
        if env is not None:
            env.close()
        return None
    env = envs.get(env_id)
    if env is None:
        env = envs[env_id] = factory()
    if op == "step":
        return env.step(arg)
    if op == "reset":
        task_id, seed = arg
        observation, info = env.reset(task_id=task_id, seed=seed)
        return observation, info, env.name
    if op == "name":
        return env.name
    raise ValueError(f"unknown environment operation {op!r}")


def _worker_main(conn: Connection, factory: EnvFactory) -> None:
    """Serve batches of ``(request_id, env_id, op, arg)`` until told to stop or the parent goes away.

    Every request with an id gets one reply ``(request_id, ok, value_or_packed_error)``, in order. ``close``
    requests carry no id and get no reply; a failing close is logged here.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is handled by the parent, which then closes the pool
    envs: dict[int, TextEnv] = {}
    conn.send(("ready", os.getpid()))
    try:
        while True:
            try:
                batch = conn.recv()
            except EOFError:
                break
            if batch is None:
                break
            for request_id, env_id, op, arg in batch:
                try:
                    reply = (request_id, True, _run_op(envs, factory, env_id, op, arg))
                except Exception as exc:  # noqa: BLE001 - every env failure is reported to the parent
                    if request_id is None:
                        logger.warning("closing environment %d in worker %d failed", env_id, os.getpid(),
                                       exc_info=True)
                        continue
                    reply = (request_id, False, _pack_error(exc))
                if request_id is None:
                    continue
                try:
                    conn.send(reply)  # pickles fully before writing, so a failure leaves the pipe clean
                except (pickle.PicklingError, TypeError, AttributeError) as exc:
                    text = f"the result of {op!r} cannot be pickled to the parent process: {exc}"
                    conn.send((request_id, False, ("builtins", "TypeError", text, traceback.format_exc(), None)))
    finally:
        for env in envs.values():
            try:
                env.close()
            except Exception:  # noqa: BLE001 - shutting down anyway
                logger.warning("closing an environment at worker shutdown failed", exc_info=True)


# ----- parent side ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Pending:
    request_id: int
    timeout_s: float


@dataclass
class _Worker:
    """Parent-side handle of one worker process."""

    index: int
    process: Any  # multiprocessing.process.BaseProcess
    conn: Connection
    started_at: float
    pid: int | None = None
    ready: bool = False
    last_progress: float = 0.0
    """When the request at the head of ``pending`` started running (or the previous answer arrived)."""
    pending: deque[_Pending] = field(default_factory=deque)
    env_ids: set[int] = field(default_factory=set)
    """Open environments hosted here."""


def _reap(process: Any, grace_s: float) -> None:
    """Wait up to ``grace_s`` for ``process`` to exit, then terminate it, then kill it; always joins it."""
    process.join(grace_s)
    if process.is_alive():
        process.terminate()
        process.join(1.0)
    if process.is_alive():
        process.kill()
        process.join()


def _shutdown_workers(workers: list[_Worker | None]) -> None:
    """Ask every worker to stop, then reap them all (used by ``close`` and by the garbage-collection finalizer)."""
    for w in workers:
        if w is None:
            continue
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + _SHUTDOWN_GRACE_S
    for w in workers:
        if w is None:
            continue
        _reap(w.process, max(0.0, deadline - time.monotonic()))
        w.conn.close()
    workers[:] = [None] * len(workers)


def _describe_exit(process: Any) -> str:
    code = process.exitcode
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


class RemoteEnv:
    """A ``TextEnv`` proxy whose instance lives in a worker process of a ``ProcessEnvPool``.

    Each call is one blocking round trip; use ``step_envs`` / ``reset_envs`` to run many proxies concurrently.
    """

    def __init__(self, pool: ProcessEnvPool, env_id: int, worker: int) -> None:
        self._pool = pool
        self.env_id = env_id
        """Id of the instance inside its worker (unique within the pool)."""
        self.worker = worker
        """Index of the hosting worker slot."""
        self._name: str | None = None
        self.closed = False

    @property
    def name(self) -> str:
        """The environment family name, as the instance in the worker reports it."""
        if self._name is None:
            self._name = self._pool._env_name
        if self._name is None:
            self._name = _unwrap(self._pool._gather(self._pool._submit([(self, "name", None)]))[0])
            self._pool._env_name = self._name
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    def reset(self, *, task_id: str, seed: int) -> tuple[str, EnvInfo]:
        """Start an episode in the worker (see ``TextEnv.reset``).

        Raises:
            EnvCrashed: when the worker died or timed out (now or earlier).
            EnvError: when the environment raised, or after ``close``.
        """
        return _unwrap(self._pool._gather(self._pool._submit([(self, "reset", (task_id, seed))]))[0])

    def step(self, action: str) -> StepResult:
        """Apply one action in the worker (see ``TextEnv.step``).

        Raises:
            EnvCrashed: when the worker died or timed out (now or earlier).
            EnvError: when the environment raised, or after ``close``.
        """
        return _unwrap(self._pool._gather(self._pool._submit([(self, "step", action)]))[0])

    def close(self) -> None:
        """Release the instance in the worker without waiting for it; idempotent, never raises."""
        if not self.closed:
            self.closed = True
            self._pool._release(self)

    def __repr__(self) -> str:
        return f"RemoteEnv(env_id={self.env_id}, worker={self.worker}, closed={self.closed})"


def _unwrap(outcome: Any) -> Any:
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


class ProcessEnvPool:
    """Runs environments of one factory in ``num_workers`` worker processes.

    Args:
        factory: builds one environment; it is pickled into every worker, so it must be a module-level callable
            or a ``functools.partial`` of one (see ``registry_factory``).
        num_workers: worker processes; 0 runs environments in the calling process.
        step_timeout_s: a worker that takes longer than this to answer a step is killed and restarted.
        reset_timeout_s: the same for ``reset`` (which also builds the instance); defaults to ``step_timeout_s``.
        start_timeout_s: how long a new worker may take to start (interpreter start, imports, unpickling the
            factory) before it is treated as dead.
        start_method: ``"spawn"`` or ``"forkserver"`` (``"fork"`` is refused: it copies the parent's threads and
            locks, e.g. torch's, into the worker).

    Raises:
        ValueError: for a negative worker count, a non-positive timeout or an unsupported start method.
        TypeError: when ``num_workers > 0`` and the factory cannot be pickled.
    """

    def __init__(
        self,
        factory: EnvFactory,
        *,
        num_workers: int,
        step_timeout_s: float = 60.0,
        reset_timeout_s: float | None = None,
        start_timeout_s: float = 120.0,
        start_method: str = "spawn",
    ) -> None:
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 runs environments in this process), got {num_workers}")
        reset_timeout_s = step_timeout_s if reset_timeout_s is None else reset_timeout_s
        for label, value in (("step_timeout_s", step_timeout_s), ("reset_timeout_s", reset_timeout_s),
                             ("start_timeout_s", start_timeout_s)):
            if not value > 0:
                raise ValueError(f"{label} must be > 0 seconds, got {value}")
        if start_method not in ("spawn", "forkserver"):
            raise ValueError(f"start_method must be 'spawn' or 'forkserver', got {start_method!r}")
        if num_workers > 0:
            try:
                pickle.dumps(factory)
            except Exception as exc:
                raise TypeError(
                    f"the environment factory {factory!r} cannot be pickled into worker processes ({exc}); pass a "
                    "module-level function or class, or a functools.partial of one (registry_factory(name) "
                    "wraps a registered environment)"
                ) from exc
        self.factory = factory
        self.num_workers = num_workers
        self.step_timeout_s = float(step_timeout_s)
        self.reset_timeout_s = float(reset_timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.restarts = 0
        """Workers replaced after a crash or a timeout, over the pool's life."""
        self._ctx: Any = multiprocessing.get_context(start_method)
        self._env_name: str | None = None
        self._ids = itertools.count()
        self._results: dict[int, Any] = {}
        """Request id -> outcome, until ``_gather`` picks it up."""
        self._resetting: dict[int, RemoteEnv] = {}
        """Request id of a reset in flight -> its proxy (which learns the env name from the answer)."""
        self._dead: dict[int, str] = {}
        """Env id -> why its worker was lost (until the proxy is closed)."""
        self._closed = False
        self._workers: list[_Worker | None] = [None] * num_workers
        self._finalizer = weakref.finalize(self, _shutdown_workers, self._workers)
        for i in range(num_workers):
            self._workers[i] = self._start_worker(i)

    # ----- public API ------------------------------------------------------------------------------------------

    def make_env(self) -> TextEnv:
        """A new environment: a ``RemoteEnv`` on the least-loaded worker, or the factory's own with 0 workers.

        Raises:
            EnvError: after ``close``.
        """
        if self._closed:
            raise EnvError("this ProcessEnvPool is closed; create a new pool to build environments")
        if self.num_workers == 0:
            return self.factory()
        worker = min(self._live_workers(), key=lambda w: (len(w.env_ids), w.index))
        env = RemoteEnv(self, next(self._ids), worker.index)
        worker.env_ids.add(env.env_id)
        return env

    __call__ = make_env

    def step_many(self, pairs: Sequence[tuple[TextEnv, str]]) -> list[StepOutcome]:
        """Step several environments concurrently; same as ``step_envs``."""
        return step_envs(pairs)

    def reset_many(self, items: Sequence[tuple[TextEnv, str, int]]) -> list[ResetOutcome]:
        """Reset several environments concurrently; same as ``reset_envs``."""
        return reset_envs(items)

    def worker_pids(self) -> list[int]:
        """Process ids of the current workers (empty with 0 workers or after ``close``)."""
        return [w.process.pid for w in self._workers if w is not None]

    def close(self) -> None:
        """Stop and reap every worker; later calls on its environments raise ``EnvError``. Idempotent."""
        self._closed = True
        self._finalizer()

    def __enter__(self) -> ProcessEnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- requests --------------------------------------------------------------------------------------------

    def _submit(self, ops: Sequence[tuple[RemoteEnv, str, Any]]) -> list[int | Exception]:
        """Send ``(env, op, arg)`` requests, one message per worker; a request id per op, or its error now."""
        tokens: list[int | Exception] = []
        batches: dict[int, list[tuple[int, int, str, Any]]] = {}
        for env, op, arg in ops:
            error = self._unusable(env)
            if error is not None:
                tokens.append(error)
                continue
            request_id = next(self._ids)
            timeout = self.reset_timeout_s if op == "reset" else self.step_timeout_s
            worker = self._workers[env.worker]
            assert worker is not None
            if not worker.pending:
                worker.last_progress = time.monotonic()
            worker.pending.append(_Pending(request_id, timeout))
            if op == "reset":
                self._resetting[request_id] = env
            batches.setdefault(env.worker, []).append((request_id, env.env_id, op, arg))
            tokens.append(request_id)
        for index, batch in batches.items():
            worker = self._workers[index]
            assert worker is not None
            try:
                worker.conn.send(batch)
            except (OSError, ValueError):
                worker.process.join(1.0)
                self._lose_worker(worker, _describe_exit(worker.process))
        return tokens

    def _gather(self, tokens: Sequence[int | Exception]) -> list[Any]:
        """Wait for the answers of ``tokens`` (request ids from ``_submit``); exceptions pass through."""
        wanted = {t for t in tokens if isinstance(t, int)}
        while not wanted.issubset(self._results):
            self._poll()
        out = []
        for token in tokens:
            if isinstance(token, int):
                out.append(self._results.pop(token))
            else:
                out.append(token)
        return out

    def _poll(self) -> None:
        """Wait for activity on busy workers (answers, deaths or timeouts) and handle it."""
        busy = [w for w in self._live_workers() if w.pending]
        if not busy:
            raise RuntimeError("ProcessEnvPool: waiting for answers with no request in flight")
        now = time.monotonic()
        deadline = min(self._deadline(w) for w in busy)
        objects: list[Any] = [w.conn for w in busy] + [w.process.sentinel for w in busy]
        ready = set(wait(objects, timeout=max(0.0, deadline - now)))
        for w in busy:
            if w.conn in ready:
                self._drain(w)
        for w in busy:
            if self._workers[w.index] is not w:
                continue  # already replaced while draining
            if w.process.sentinel in ready:
                self._drain(w)
                if self._workers[w.index] is w:
                    w.process.join(1.0)
                    self._lose_worker(w, _describe_exit(w.process))
            elif w.pending and time.monotonic() >= self._deadline(w):
                head = w.pending[0]
                self._lose_worker(w, f"did not answer within {head.timeout_s:g} s and was killed")

    def _deadline(self, w: _Worker) -> float:
        if not w.ready:
            return w.started_at + self.start_timeout_s
        return w.last_progress + w.pending[0].timeout_s

    def _drain(self, w: _Worker) -> None:
        """Read every message ``w`` has written so far."""
        try:
            while self._workers[w.index] is w and w.conn.poll():
                message = w.conn.recv()
                now = time.monotonic()
                if message[0] == "ready":
                    w.ready, w.pid, w.last_progress = True, message[1], now
                    continue
                request_id, ok, payload = message
                head = w.pending.popleft()
                assert head.request_id == request_id, "worker answers arrived out of order"
                w.last_progress = now
                self._results[request_id] = self._outcome(w, self._resetting.pop(request_id, None), ok, payload)
        except (EOFError, OSError):
            w.process.join(1.0)
            self._lose_worker(w, _describe_exit(w.process))

    def _outcome(self, w: _Worker, resetting: RemoteEnv | None, ok: bool, payload: Any) -> Any:
        if not ok:
            return self._remote_error(w, payload)
        if resetting is not None:
            observation, info, name = payload
            resetting._name = name
            if self._env_name is None:
                self._env_name = name
            return observation, info
        return payload

    @staticmethod
    def _remote_error(w: _Worker, payload: tuple[str, str, str, str, bytes | None]) -> EnvError:
        module, qualname, text, remote_tb, blob = payload
        original: Any = None
        if blob is not None and module in sys.modules:  # never import a backend here just to rebuild its error
            try:
                original = pickle.loads(blob)
            except Exception:  # noqa: BLE001 - fall back to the text form
                original = None
        where = f"env worker {w.index} (pid {w.pid})"
        detail = f"{text}\n--- traceback in {where} ---\n{remote_tb.rstrip()}"
        if isinstance(original, EnvError):
            original.args = (detail,)
            return original
        remote_type = qualname if module == "builtins" else f"{module}.{qualname}"
        error = RemoteEnvError(f"{remote_type}: {detail}", remote_type=remote_type)
        if isinstance(original, BaseException):
            error.__cause__ = original
        return error

    # ----- environments and workers ----------------------------------------------------------------------------

    def _unusable(self, env: RemoteEnv) -> EnvError | None:
        if env._pool is not self:
            return EnvError("this RemoteEnv belongs to another ProcessEnvPool")
        if self._closed:
            return EnvError("the ProcessEnvPool of this environment is closed; create a new pool")
        if env.closed:
            return EnvError("this environment is closed; build a new one with the pool's make_env()")
        if env.env_id in self._dead:
            return EnvCrashed(self._dead[env.env_id])
        return None

    def _release(self, env: RemoteEnv) -> None:
        """Forget a closed proxy and drop its instance in the worker (no answer is awaited)."""
        if self._dead.pop(env.env_id, None) is not None or self._closed:
            return
        worker = self._workers[env.worker]
        if worker is None or env.env_id not in worker.env_ids:
            return
        worker.env_ids.discard(env.env_id)
        try:
            worker.conn.send([(None, env.env_id, "close", None)])
        except (OSError, ValueError):
            worker.process.join(1.0)
            self._lose_worker(worker, _describe_exit(worker.process))

    def _live_workers(self) -> list[_Worker]:
        return [w for w in self._workers if w is not None]

    def _start_worker(self, index: int) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, self.factory), name=f"sdar-env-worker-{index}", daemon=True
        )
        process.start()
        child_conn.close()
        return _Worker(index, process, parent_conn, started_at=time.monotonic())

    def _lose_worker(self, w: _Worker, reason: str) -> None:
        """Kill and reap ``w``, fail its pending requests and hosted environments, and start a replacement."""
        if self._workers[w.index] is not w:
            return
        _reap(w.process, 0.0)
        w.conn.close()
        message = (
            f"the environment worker process {w.index} (pid {w.process.pid}) {reason}; the episodes it hosted "
            "are lost; build a new environment with the pool's make_env()"
        )
        logger.warning("%s (%d pending requests, %d environments)", message, len(w.pending), len(w.env_ids))
        for item in w.pending:
            self._results[item.request_id] = EnvCrashed(message)
            self._resetting.pop(item.request_id, None)
        for env_id in w.env_ids:
            self._dead[env_id] = message
        self._workers[w.index] = None
        if not self._closed:
            self._workers[w.index] = self._start_worker(w.index)
            self.restarts += 1


def _run_batch(ops: Sequence[tuple[TextEnv, str, Any]]) -> list[Any]:
    """Run ``(env, op, arg)`` items: remote ones concurrently per pool, local ones here meanwhile, in order."""
    outcomes: list[Any] = [None] * len(ops)
    pools: dict[int, tuple[ProcessEnvPool, list[int]]] = {}
    for i, (env, _, _) in enumerate(ops):
        if isinstance(env, RemoteEnv):
            pools.setdefault(id(env._pool), (env._pool, []))[1].append(i)
    sent = []
    for pool, idx in pools.values():
        remote = [(env, op, arg) for env, op, arg in (ops[i] for i in idx) if isinstance(env, RemoteEnv)]
        sent.append((pool, idx, pool._submit(remote)))
    for i, (env, op, arg) in enumerate(ops):
        if isinstance(env, RemoteEnv):
            continue
        try:
            if op == "step":
                outcomes[i] = env.step(arg)
            else:
                task_id, seed = arg
                outcomes[i] = env.reset(task_id=task_id, seed=seed)
        except Exception as exc:  # noqa: BLE001 - returned as this item's outcome
            outcomes[i] = exc
    for pool, idx, tokens in sent:
        for i, outcome in zip(idx, pool._gather(tokens)):
            outcomes[i] = outcome
    return outcomes


def step_envs(pairs: Sequence[tuple[TextEnv, str]]) -> list[StepOutcome]:
    """Step several environments at once: pool environments concurrently, in-process ones one after another.

    Args:
        pairs: ``(env, action)`` items; an environment may appear more than once (its steps run in order).

    Returns:
        One outcome per item, in order: the ``StepResult``, or the exception its step raised (``EnvCrashed``
        when its worker died or timed out). Nothing is raised for a failing item.
    """
    return _run_batch([(env, "step", action) for env, action in pairs])


def reset_envs(items: Sequence[tuple[TextEnv, str, int]]) -> list[ResetOutcome]:
    """Reset several environments at once, like ``step_envs``.

    Args:
        items: ``(env, task_id, seed)`` triples.

    Returns:
        One outcome per item, in order: ``(observation, info)`` or the exception its reset raised.
    """
    return _run_batch([(env, "reset", (task_id, seed)) for env, task_id, seed in items])



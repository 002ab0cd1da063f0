"""Worker processes for batch jobs that survive a worker's death, and a bounded producer thread.

``run_tasks(fn, tasks, workers=N, initializer=..., initargs=..., on_failure=...)`` yields
``fn(task)`` for every task, in task order, computed in ``N`` spawned processes (``N == 1``: in
this process). Each worker runs one task at a time, so when a worker dies (a decoder's SIGSEGV,
the kernel's OOM killer, ``os._exit``) the task it held is known: it becomes
``on_failure(task, "worker process died (signal 11, SIGSEGV)")``, a fresh worker replaces the
dead one and the other tasks go on. ``multiprocessing.Pool`` instead waits forever for the lost
task; ``concurrent.futures`` breaks the whole pool without saying which task killed it.

An exception raised by ``fn`` (it should return its failures, not raise them) becomes
``on_failure(task, "ValueError: ...")`` the same way. A worker that dies before it is ready (its
initializer failed) is a :class:`DataError`: every task would fail the same way.

``prefetch(items, depth=N)`` is the in-process counterpart for a pipeline: a background thread
iterates ``items`` (decoding, resampling, feature extraction: numpy, soxr, libsndfile and torch
release the GIL in their kernels) and stays at most ``N`` items ahead of the consumer (the
encoder), so memory is bounded by ``N`` items whatever the length of the input list. Values and
exceptions arrive in order, exactly as a plain ``for`` loop over ``items`` would give them.
Threads, not processes: the items (feature windows, waveforms) are handed over without copying
or pickling, and torch's thread settings (``torch.set_num_threads``) are per thread, so the
producer's single-threaded feature code does not change the encoder's thread count.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import signal
import threading
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from m3bert.core.errors import DataError

T = TypeVar("T")
_END, _ERROR, _ITEM = 0, 1, 2  # message kinds from the prefetch thread


def describe_exit(exitcode: int | None) -> str:
    """``-11`` -> ``"worker process died (signal 11, SIGSEGV)"``; ``3`` -> ``"... (exit code 3)"``."""
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = "unknown signal"
        return f"worker process died (signal {-exitcode}, {name})"
    return f"worker process died (exit code {exitcode})"


def _serve(conn: Connection, fn: Callable[[Any], Any], initializer: Callable[..., None] | None,
           initargs: tuple) -> None:
    """A worker: initialise, say ready, then answer ``(index, task)`` messages until ``None``."""
    try:
        if initializer is not None:
            initializer(*initargs)
        conn.send(("ready", None, None))
        while True:
            msg = conn.recv()
            if msg is None:
                return
            index, task = msg
            try:
                conn.send(("result", index, fn(task)))
            except Exception as exc:  # fn's bug or an unpicklable result: a failure of this task only
                conn.send(("error", index, f"{type(exc).__name__}: {exc}"))
    except (EOFError, OSError, KeyboardInterrupt):  # the parent went away or was interrupted
        return


class _Worker:
    def __init__(self, ctx: Any, fn: Callable[[Any], Any], initializer: Callable[..., None] | None,
                 initargs: tuple) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, fn, initializer, initargs), daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.index: int | None = None  # task in progress

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():  # pragma: no cover - a stuck worker
            self.proc.terminate()
            self.proc.join(timeout=5)
        self.conn.close()


def run_tasks(fn: Callable[[Any], Any], tasks: Sequence[Any], *, workers: int,
              on_failure: Callable[[Any, str], Any], initializer: Callable[..., None] | None = None,
              initargs: tuple = (), max_ahead: int | None = None) -> Iterator[Any]:
    """``fn(task)`` for each task, in order (see the module docstring).

    ``fn``, ``initializer`` and the tasks must be picklable (module-level functions). At most
    ``max_ahead`` (default ``4 * workers``) results wait for an earlier, slower task.
    """
    tasks = list(tasks)
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for task in tasks:
            try:
                yield fn(task)
            except Exception as exc:
                yield on_failure(task, f"{type(exc).__name__}: {exc}")
        return
    ctx = mp.get_context("spawn")  # torch and forked OpenMP thread pools do not mix
    max_ahead = max_ahead or 4 * workers
    pool = [_Worker(ctx, fn, initializer, initargs) for _ in range(min(workers, len(tasks)))]
    results: dict[int, Any] = {}
    next_task = next_out = 0
    try:
        while next_out < len(tasks):
            busy = sum(w.index is not None for w in pool)
            for w in pool:
                if w.ready and w.index is None and next_task < len(tasks) and len(results) + busy < max_ahead:
                    w.conn.send((next_task, tasks[next_task]))
                    w.index, next_task, busy = next_task, next_task + 1, busy + 1
            if next_out in results:
                yield results.pop(next_out)
                next_out += 1
                continue
            ready = set(wait([w.conn for w in pool] + [w.proc.sentinel for w in pool]))
            for k, w in enumerate(pool):
                message, dead = None, False
                if w.conn in ready or w.proc.sentinel in ready:
                    try:
                        if w.conn.poll():
                            message = w.conn.recv()
                        else:
                            dead = w.proc.sentinel in ready
                    except (EOFError, OSError):  # the pipe closed: the process is gone or going
                        dead = True
                if message is not None:
                    kind, index, payload = message
                    if kind == "ready":
                        w.ready = True
                    else:
                        results[index] = payload if kind == "result" else on_failure(tasks[index], payload)
                        w.index = None
                elif dead:
                    w.proc.join()
                    why = describe_exit(w.proc.exitcode)
                    if not w.ready:
                        raise DataError(f"a worker process could not start ({why}); rerun with --workers 1 "
                                        f"to see the error")
                    if w.index is not None:
                        results[w.index] = on_failure(tasks[w.index], why)
                    w.conn.close()
                    pool[k] = _Worker(ctx, fn, initializer, initargs)
    finally:
        for w in pool:
            w.stop()


def prefetch(items: Iterable[T], *, depth: int) -> Iterator[T]:
    """The values of ``items``, computed by a background thread at most ``depth`` items ahead.

    ``depth <= 0`` iterates ``items`` in the calling thread (the sequential path, for tests and
    for callers that must not start a thread). An exception raised while producing an item is
    raised by the consumer at that item's position, after the items before it. Closing the
    returned generator early (``break``, an exception in the consumer, garbage collection) stops
    the producer after the item it is working on; ``items`` is then closed in its own thread.
    """
    if depth <= 0:
        yield from items
        return
    q: "queue.Queue[tuple[int, Any]]" = queue.Queue(maxsize=int(depth))
    stop = threading.Event()

    def put(msg: tuple[int, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(msg, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        it = iter(items)
        try:
            for value in it:
                if not put((_ITEM, value)):
                    return
            put((_END, None))
        except BaseException as exc:  # anything (also KeyboardInterrupt): re-raised by the consumer, in order
            put((_ERROR, exc))
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="m3bert-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                kind, value = q.get(timeout=1.0)
            except queue.Empty:
                if thread.is_alive() or not q.empty():
                    continue
                raise DataError("the prefetch thread ended without a result (internal error)") from None
            if kind == _ITEM:
                yield value
            elif kind == _ERROR:
                raise value
            else:
                return
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()

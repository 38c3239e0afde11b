"""The Dask cluster: a client for ``--scheduler`` (an address, ``local[:N]`` or a client), and
tasks run on it in order with a bounded number ahead."""

from __future__ import annotations

import os
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ftml.errors import ConfigError
from ftml.pipeline import progress

# Tasks submitted ahead of the one the driver waits for, per worker thread: enough to keep the
# workers busy, few enough that finished results do not pile up.
AHEAD_PER_THREAD = 3


CONNECT_TIMEOUT = 10.0


@contextmanager
def connect(scheduler: Any, timeout: float = CONNECT_TIMEOUT) -> Iterator[Any]:
    """A Dask client for ``scheduler``: ``tcp://HOST:PORT`` (a running cluster), ``local`` or
    ``local:N`` (a LocalCluster of N single-threaded worker processes, default one per core),
    or a ``distributed.Client`` to use as it is."""
    try:
        import dask
        from distributed import Client, LocalCluster
    except ImportError:
        raise ConfigError("--scheduler needs Dask, which is not installed",
                          hint="pip install 'ftml[dask]'") from None
    if isinstance(scheduler, Client):
        yield scheduler
        return
    text = str(scheduler).strip()
    if text == "local" or text.startswith("local:"):
        n = text.partition(":")[2]
        if n and not (n.isdigit() and int(n) > 0):
            raise ConfigError(f"bad worker count in --scheduler {text!r}",
                              hint="write local or local:N, e.g. local:2")
        workers = int(n) if n else (os.cpu_count() or 1)
        # No dashboard here, so no use for the workers' sampling profiler (about 10 % CPU).
        with dask.config.set({"distributed.worker.profile.enabled": False}), \
                LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, Client(cluster) as client:
            yield client
        return
    if "://" not in text and text.count(":") != 1:
        raise ConfigError(f"not a scheduler address: {text!r}",
                          hint="give tcp://HOST:PORT, or 'local' for a LocalCluster")
    try:
        client = Client(text, timeout=timeout)
    except (OSError, TimeoutError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler ({type(exc).__name__})", source=text,
                          hint="start one with 'dask scheduler' and 'dask worker ADDRESS', "
                               "or use --scheduler local") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (OSError, TimeoutError):
            raise ConfigError("the Dask scheduler has no workers", source=text,
                              hint="start some with 'dask worker ADDRESS'") from None
        yield client


def _threads(client) -> int:
    return max(1, sum(client.nthreads().values()))


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(f"ftml: {text}", file=sys.stderr, flush=True)


def _run_in_order(client, fn: Callable, tasks: Sequence, args: tuple, ahead: int,
                  desc: str, quiet: bool, extra: Iterable[tuple] | None = None
                  ) -> Iterator[tuple[Any, Any]]:
    """``fn(*args, task, *own)`` for each task on the cluster, ``own`` the task's item of
    ``extra`` (arguments of its own, e.g. futures of its log cells: taken one by one as tasks
    are submitted, so that an iterator that lets go of them lets Dask free what they hold
    once the tasks that need it have run); yields ``(task, result)`` in task order with at
    most ``ahead`` tasks submitted beyond the one awaited. A task whose worker died is re-run
    by Dask; an exception in a task is raised here."""
    run = uuid.uuid4().hex[:8]
    pending: deque = deque()
    todo = iter(enumerate(tasks))
    owns = iter(extra) if extra is not None else None

    def submit() -> None:
        item = next(todo, None)
        if item is not None:
            i, task = item
            own = next(owns) if owns is not None else ()
            # Earlier tasks first: the driver consumes them in order.
            pending.append((task, client.submit(fn, *args, task, *own,
                                                key=f"ftml-{desc}-{run}-{i}",
                                                priority=-i, pure=False)))

    for _ in range(max(1, ahead)):
        submit()
    bar = progress(len(tasks), desc, quiet)
    bar.unit = "task"
    try:
        with bar:
            while pending:
                task, future = pending.popleft()
                result = future.result()
                future.release()
                submit()
                bar.update(1)
                yield task, result
    finally:
        if pending:
            client.cancel([f for _, f in pending])

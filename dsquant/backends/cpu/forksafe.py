"""Fork safety of the OpenMP kernels.

libgomp keeps a pool of worker threads per *master* thread (each thread that opened a parallel
region). ``fork()`` copies only the thread that called it, so in the child that thread's pool
describes workers that no longer exist, and its next parallel region of two or more threads waits
for them forever. The pool may come from dsquant or from anything else sharing the runtime (torch's
wheels load their own libgomp.so.1, and dsquant's extension then binds to that one).

Every other thread of the child is a fresh master (a new pool on first use). So in a child, calls
made from the thread that forked run their kernel on a helper thread started in the child, with
the usual thread count; calls from any other thread run directly, as in the parent.
"""
from __future__ import annotations

import functools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

from ...core import threads

_helper = None              # (pid, the helper of that process), started on first need
_helper_lock = threading.Lock()


def _helper_thread() -> ThreadPoolExecutor:
    global _helper
    with _helper_lock:
        if _helper is None or _helper[0] != os.getpid():     # a parent's helper does not exist here
            _helper = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsquant-openmp"))
        return _helper[1]


def guard(fn):
    """`fn` run where OpenMP can start threads (on the helper thread when called from the thread
    that forked this child)."""
    @functools.wraps(fn)
    def run(*args):
        forked = threads.forked_thread()
        if forked is None or forked != threading.get_ident():
            return fn(*args)
        return _helper_thread().submit(fn, *args).result()
    return run

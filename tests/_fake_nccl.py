"""A stand-in for the part of ``cupy.cuda.nccl`` that dsquant.distributed.NCCLEngine uses, for
ranks running as threads of one process over tests/_fake_cupy.py (host memory): grouped
point-to-point sends and receives of bytes, matched per (sender, receiver) pair in order, as NCCL
matches them. It checks the engine's bookkeeping (peers, offsets, byte counts, grouping), not NCCL."""
from __future__ import annotations

import ctypes
import itertools
import threading
from collections import defaultdict, deque

NCCL_INT8 = 0
_ids = itertools.count()
_worlds: dict[int, _World] = {}
_group = threading.local()


class _World:
    def __init__(self, size):
        self.size = size
        self.mail = defaultdict(deque)          # (sender, receiver) -> byte strings, in send order
        self.cond = threading.Condition()


def get_unique_id():
    return ("fake-nccl", next(_ids))


class NcclCommunicator:
    def __init__(self, ndev, comm_id, rank):
        self.world = _worlds.setdefault(comm_id, _World(ndev))
        assert self.world.size == ndev and 0 <= rank < ndev
        self.rank = rank

    def send(self, ptr, count, datatype, peer, stream):
        assert datatype == NCCL_INT8 and 0 <= peer < self.world.size
        _group.ops.append((self, "send", ptr, count, peer))   # outside a group: AttributeError

    def recv(self, ptr, count, datatype, peer, stream):
        assert datatype == NCCL_INT8 and 0 <= peer < self.world.size
        _group.ops.append((self, "recv", ptr, count, peer))


def groupStart():  # noqa: N802 - NCCL's name
    _group.ops = []


def groupEnd():  # noqa: N802 - NCCL's name
    ops = _group.__dict__.pop("ops")
    for comm, kind, ptr, count, peer in ops:   # post every send of the group first: no deadlock
        if kind == "send":
            with comm.world.cond:
                comm.world.mail[comm.rank, peer].append(ctypes.string_at(ptr, count))
                comm.world.cond.notify_all()
    for comm, kind, ptr, count, peer in ops:
        if kind == "recv":
            box = comm.world.mail[peer, comm.rank]
            with comm.world.cond:
                got = comm.world.cond.wait_for(lambda box=box: box, timeout=60)
                assert got, f"rank {comm.rank}: nothing from {peer}"
                data = box.popleft()
            assert len(data) == count, f"rank {comm.rank} expected {count} bytes from {peer}, got {len(data)}"
            ctypes.memmove(ptr, data, count)

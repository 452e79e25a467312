"""Data-parallel training: ranks from MPI, gradients averaged by NCCL (cuda) or MPI (cpu).

    mpiexec -n 4 python examples/train_shakespeare.py --device cuda

Every rank holds the whole model and trains on its own share of each step's
micro-batches; after backward the gradients are averaged over the ranks, so
every rank takes the same optimizer step and the weights stay identical
without ever being sent. That average is the only communication in a step.

MPI launches the ranks and does the host-side coordination (rank numbers,
agreeing to stop, summing evaluation losses, aborting the job). On cuda the
gradients travel through NCCL, which moves GPU memory directly over NVLink or
the network; its communicator is set up from a unique id that rank 0 makes
and MPI broadcasts. On cpu MPI itself sums the gradients.

A process started without mpiexec never imports mpi4py: init() returns a
one-rank World and training is exactly the single-process loop.
"""
import os
import sys
import time
import traceback

import numpy as np

from .errors import DistributedError

# Variables that MPI launchers set in every rank they start (Open MPI, MPICH/Hydra
# and Intel MPI, PMIx-based launchers such as srun --mpi=pmix). One of them present
# means: we were started by mpiexec, so MPI must be initialized.
LAUNCHER_VARIABLES = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")
# TENSORGRAD_MPI=1 asks for MPI under a launcher we do not recognize; 0 never uses it.
FORCE_VARIABLE = "TENSORGRAD_MPI"


def launched_by_mpi(environ=None):
    environ = os.environ if environ is None else environ
    forced = environ.get(FORCE_VARIABLE)
    if forced in ("0", "1"):
        return forced == "1"
    return any(name in environ for name in LAUNCHER_VARIABLES)


class World:
    """Who this process is among the ranks, and the collectives a training step needs.

    rank: 0..size-1 over all hosts; local_rank: the rank among those on this host
    (it picks the GPU). Without comm (no mpiexec) every collective is the identity
    and nothing is imported; with comm and size 1 (mpiexec -n 1) the gradient
    all-reduce still runs, a sum over one rank."""

    def __init__(self, rank=0, size=1, local_rank=0, local_size=1, comm=None, device="cpu"):
        self.rank, self.size, self.local_rank, self.local_size = rank, size, local_rank, local_size
        self.comm, self.device = comm, device
        self.nccl = None            # the NCCL communicator, made on the first GPU all-reduce

    @property
    def distributed(self):
        """More than one rank: the host-side collectives below do something."""
        return self.size > 1

    @property
    def communicating(self):
        """Started by MPI, even alone (mpiexec -n 1): gradients go through the all-reduce,
        which is how one GPU can test the NCCL path."""
        return self.comm is not None

    @property
    def is_main(self):
        """Rank 0 alone writes files and prints."""
        return self.rank == 0

    # ------------------------------------------------------------ host-side collectives
    def barrier(self):
        if self.distributed:
            self.comm.Barrier()

    def sum(self, value):
        """The sum of a Python number over ranks, the same bits on every rank: the values are
        gathered and added in rank order (an MPI reduction may add in another order on each rank)."""
        if not self.distributed:
            return value
        return sum(self.comm.allgather(value))

    def any(self, flag):
        """True on every rank when it is true on one (ranks agree to stop together)."""
        if not self.distributed:
            return bool(flag)
        return any(self.comm.allgather(bool(flag)))

    def in_turn(self, fn):
        """Run fn() on rank 0 first, then on the first rank of each host, then on the rest:
        work that writes shared files (downloading, tokenizing) is done once, and the others
        find it done, whether or not the hosts share a file system."""
        if not self.distributed:
            return fn()
        result = None
        for turn in (self.rank == 0, self.rank != 0 and self.local_rank == 0, self.local_rank != 0):
            if turn:
                result = fn()
            self.barrier()
        return result

    def abort(self, status=1):
        """Stop every rank now (MPI kills the others); never returns."""
        sys.stdout.flush()
        sys.stderr.flush()
        if self.distributed:
            # the launcher forwards our output through pipes; an abort right away can kill
            # them before the line saying why has been passed on
            time.sleep(1)
            self.comm.Abort(status)
        os._exit(status)

    # ------------------------------------------------------------ gradient all-reduce
    def all_reduce_sum_(self, flat):
        """Sum the contiguous array `flat` over ranks, in place. On cuda: one NCCL call on
        the current stream (nothing waits on the host, so a CUDA graph can capture it);
        on cpu: MPI, as a reduce to rank 0 then a broadcast, so every rank gets the same bits."""
        if not self.communicating:
            return flat
        if self.device == "cuda":
            nccl, comm = _nccl(), self._nccl_comm()
            comm.allReduce(flat.data.ptr, flat.data.ptr, flat.size, _nccl_type(nccl, flat.dtype), nccl.NCCL_SUM,
                           _stream_handle())
            return flat
        from mpi4py import MPI
        if flat.dtype not in (np.float32, np.float64):
            raise TypeError(f"MPI all-reduce of {flat.dtype} gradients is not supported; train in float32")
        if self.rank == 0:
            self.comm.Reduce(MPI.IN_PLACE, flat, op=MPI.SUM, root=0)
        else:
            self.comm.Reduce(flat, None, op=MPI.SUM, root=0)
        self.comm.Bcast(flat, root=0)
        return flat

    def _nccl_comm(self):
        """NCCL's communicator over all ranks: rank 0 makes a unique id, MPI carries it to
        the others, and each rank joins with it (a collective call: all ranks must reach it)."""
        if self.nccl is None:
            nccl = _nccl()
            uid = self.comm.bcast(nccl.get_unique_id() if self.rank == 0 else None, root=0)
            self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        return self.nccl


def _nccl():
    """CuPy's NCCL bindings, or a clear error when the NCCL library is missing."""
    from tensorgrad import backend
    backend.cupy()
    from cupy.cuda import nccl
    if not nccl.available:
        raise DistributedError("distributed cuda training needs NCCL: pip install nvidia-nccl-cu13 "
                               "(or pip install -e '.[distributed-cuda]')")
    return nccl


def _stream_handle():
    """The current CUDA stream's handle: NCCL work is ordered with (and captured with) the rest."""
    from tensorgrad import backend
    return backend.cupy().cuda.get_current_stream().ptr


def _nccl_type(nccl, dtype):
    names = {"float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "float16": "NCCL_FLOAT16",
             "bfloat16": "NCCL_BFLOAT16"}
    if str(dtype) not in names:
        raise TypeError(f"NCCL all-reduce of {dtype} gradients is not supported")
    return getattr(nccl, names[str(dtype)])


class GradientAverager:
    """Average the parameters' gradients over ranks through one flat buffer per dtype.

    One big collective instead of one per parameter: each call has a fixed cost
    (a launch, a network round trip), and a GPT has dozens of parameter arrays. The
    gradients are copied into the buffer, summed over ranks in place, scaled by
    1/size, and each p.grad becomes a view of its slice (no copy back). The
    buffer is made once, so its address is fixed: a CUDA graph that captured the
    copies and the NCCL call replays them on the same memory.
    """

    def __init__(self, world, params):
        self.world, self.buckets = world, None
        self.params = list({id(p): p for p in params}.values())   # a tied weight once

    def _make_buckets(self, xp):
        buckets = {}
        for p in self.params:
            buckets.setdefault(np.dtype(p.dtype), []).append(p)
        self.buckets = []
        for dtype, params in buckets.items():
            flat = xp.empty(sum(p.data.size for p in params), dtype=dtype)
            slices, offset = [], 0
            for p in params:
                slices.append((p, offset, p.data.size))
                offset += p.data.size
            self.buckets.append((flat, slices))

    def __call__(self, graph_break=None):
        """graph_break(fn): when the step is being captured with the all-reduce left out of
        the graph, ends the captured part here and runs fn between two graphs at replay."""
        from tensorgrad import backend
        if self.buckets is None:
            self._make_buckets(backend.get_array_module(self.params[0].data))
        for flat, slices in self.buckets:
            for p, offset, n in slices:
                if p.grad is None:       # unused this step: a zero gradient, the same on every rank
                    flat[offset:offset + n] = 0
                else:
                    flat[offset:offset + n] = p.grad.reshape(-1)
        for flat, _ in self.buckets:
            if graph_break is None:
                self.world.all_reduce_sum_(flat)
            else:
                graph_break(lambda flat=flat: self.world.all_reduce_sum_(flat))
        for flat, slices in self.buckets:
            if self.world.size > 1:
                flat *= flat.dtype.type(1 / self.world.size)   # exact for a power-of-two number of ranks
            for p, offset, n in slices:
                p.grad = flat[offset:offset + n].reshape(p.data.shape)


# ----------------------------------------------------------------------------- set-up
_world = None


def micro_batches(data, tc, block_size, rng, world):
    """This rank's micro-batches of one step, stacked: x, y (accumulation, B, T).

    Every rank draws the positions of all accumulation x size micro-batches from the
    same RNG, in the same order, and keeps its own consecutive share: N ranks see
    exactly the batches one process with N times the accumulation sees."""
    xs, ys = [], []
    for k in range(tc.gradient_accumulation_steps * world.size):
        if k // tc.gradient_accumulation_steps == world.rank:
            x, y = data.get_batch_arrays("train", tc.batch_size, block_size, rng)
            xs.append(x)
            ys.append(y)
        else:
            data.batch_positions("train", tc.batch_size, block_size, rng)
    return np.stack(xs), np.stack(ys)


def world():
    """The World set up by init(), or a one-rank World when init() was not called."""
    return _world if _world is not None else World()


def init(device="cpu"):
    """Set up this process's World once: from MPI under mpiexec (and then, on cuda, pick the
    GPU local_rank before anything touches a GPU), else a one-rank World without MPI."""
    global _world
    if _world is not None:
        return _world
    if not launched_by_mpi():
        _world = World(device=device)
        return _world
    try:
        from mpi4py import MPI
    except ImportError:
        raise DistributedError("started by mpiexec, but mpi4py is not installed: pip install -e '.[distributed]' "
                               "(or set TENSORGRAD_MPI=0 to run each process alone)") from None
    comm = MPI.COMM_WORLD
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)          # the ranks on this host
    w = World(comm.Get_rank(), comm.Get_size(), node.Get_rank(), node.Get_size(), comm, device)
    node.Free()
    _world = w
    _abort_on_uncaught_exceptions(w)
    if device == "cuda":
        _use_local_gpu(w)
    return w


def _use_local_gpu(w):
    from tensorgrad import backend
    if not backend.cuda_available():
        return                   # the script's device check says why, with the install hint
    cp = backend.cupy()
    count = cp.cuda.runtime.getDeviceCount()
    if w.local_size > count:
        raise DistributedError(f"{w.local_size} ranks on this host but only {count} GPU{'s' * (count != 1)}: "
                               f"start at most {count} ranks per host (mpiexec -n {count})")
    cp.cuda.Device(w.local_rank).use()


def _abort_on_uncaught_exceptions(w):
    """A rank that dies of an exception must take the others down: they would wait for it
    in the next collective forever. Print the traceback, then MPI Abort (the launcher
    kills every rank)."""
    def hook(kind, value, tb):
        traceback.print_exception(kind, value, tb)
        print(f"error: rank {w.rank} of {w.size} failed ({kind.__name__}: {value}); stopping all ranks",
              file=sys.stderr)
        w.abort(1)
    sys.excepthook = hook

"""How the row kernels (softmax, layernorm, cross-entropy) are launched.

Each of those ops works on the rows of a contiguous matrix, one row per group
of threads: a warp for rows up to `warp_rows_max` long (no shared memory, no
barriers; `rows_per_block` warps a block), a whole block for longer ones. The
.cu files hold both forms of each kernel (<op>_warp, <op>_block, one template
in common.cuh's group_sum); this module picks one.
"""
import contextlib

from . import launch


class Settings:
    warp_rows_max = 1024   # rows up to this long get one warp each, longer ones a block
    rows_per_block = 8     # warps (rows) per block in warp mode: 256 threads
    ln_tile = 16           # rows per layernorm_backward tile, 1..32 (MAX_ROWS in layernorm.cu)
    ln_registers = True    # rows of whole vectors up to 1024 long: the layernorm kernels holding a row in registers
    ln_rows_per_warp = 4   # rows each warp of layernorm_backward_regs_* takes (8 warps a block, a partial per block)
    ce_smem = True         # block-sized rows of up to 112 KiB: cross_entropy_fused holding the row in shared memory
    block_threads = None   # bench/kernels.py may fix the threads of one-block-a-row launches


settings = Settings()


@contextlib.contextmanager
def launch_settings(block_threads=None, warp_rows_max=None, ln_tile=None, ln_registers=None, ln_rows_per_warp=None,
                    ce_smem=None):
    """Launch with other settings inside the block (bench/kernels.py --tune, tests); None keeps one.
    block_threads: threads of a one-block-a-row launch; warp_rows_max: the longest row given a
    warp (0: every row gets a block); ln_tile: rows per layernorm_backward tile (1..32);
    ln_registers: False runs the layernorm kernels that re-read rows instead of holding them;
    ln_rows_per_warp: rows per warp of the register backward; ce_smem: False runs the fused
    cross-entropy kernel that reads each row from global memory twice."""
    saved = dict(vars(settings))
    for name, value in (("block_threads", block_threads), ("warp_rows_max", warp_rows_max), ("ln_tile", ln_tile),
                        ("ln_registers", ln_registers), ("ln_rows_per_warp", ln_rows_per_warp),
                        ("ce_smem", ce_smem)):
        if value is not None:
            setattr(settings, name, value)
    try:
        yield
    finally:
        vars(settings).clear()
        vars(settings).update(saved)


def launch_rows(stem, op, N, L, args, dtype):
    """Run <op>_warp (one warp a row) or <op>_block (one block a row) over N rows of length L."""
    if N == 0 or L == 0:
        return
    if L <= settings.warp_rows_max:
        rows = settings.rows_per_block
        launch(stem, op + "_warp", ((N + rows - 1) // rows,), (32 * rows,), args, dtype=dtype)
    else:
        # ~8+ elements a thread, 128..512 threads (the kernels' __launch_bounds__ is 512)
        threads = settings.block_threads or min(512, max(128, 1 << (max(L // 8, 1) - 1).bit_length()))
        launch(stem, op + "_block", (N,), (threads,), args, dtype=dtype)

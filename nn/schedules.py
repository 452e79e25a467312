"""Learning-rate schedules: functions of the iteration number (set group['lr'] with them)."""
import math


def cosine_with_warmup(it, max_lr, min_lr, warmup_iters, cosine_cycle_iters):
    """Linear warmup from 0 (it=0) to max_lr (it=warmup_iters), then cosine decay to
    min_lr at it=cosine_cycle_iters, then min_lr."""
    if it < warmup_iters:
        return max_lr * it / warmup_iters
    if it >= cosine_cycle_iters:
        return min_lr
    ratio = (it - warmup_iters) / (cosine_cycle_iters - warmup_iters)    # 0 -> 1
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (max_lr - min_lr)


def set_lr(optimizer, lr):
    """Set the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr

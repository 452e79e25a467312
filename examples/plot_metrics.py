"""Draw a run's training curves: train and validation loss, and the learning rate.

    python examples/plot_metrics.py out-shakespeare-char-cpu            # -> out-shakespeare-char-cpu/metrics.png
    python examples/plot_metrics.py out-shakespeare-char-cpu --out curves.png

Reads metrics.jsonl (one row per evaluation, written by train_shakespeare.py).
Needs matplotlib: pip install -e ".[plot]".
"""
import json
import sys
from pathlib import Path

from _cli import Parser, ScriptError, run

from gpt.errors import ConfigError, DataError  # after _cli, which puts the checkout on sys.path


def read_metrics(run_dir):
    """The rows of run_dir/metrics.jsonl (run_dir may also be the file itself)."""
    path = Path(run_dir)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"no metrics at {path}: give a run's out dir (written by train_shakespeare.py)")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path} is not a metrics file (JSON lines): {e}") from None
    if not rows:
        raise DataError(f"{path} has no evaluations yet")
    return rows


def plot(rows, png):
    try:
        import matplotlib
    except ImportError:
        raise ScriptError('plotting needs matplotlib: pip install -e ".[plot]" (or pip install matplotlib)') from None
    matplotlib.use("Agg")                 # files only: no display needed
    import matplotlib.pyplot as plt
    it = [r["iter"] for r in rows]
    fig, (loss_ax, lr_ax) = plt.subplots(2, 1, figsize=(7, 6), sharex=True, height_ratios=(3, 1))
    loss_ax.plot(it, [r["train_loss"] for r in rows], label="train", marker=".")
    loss_ax.plot(it, [r["val_loss"] for r in rows], label="val", marker=".")
    loss_ax.set_ylabel("loss (nats per token)")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    lr_ax.plot(it, [r["lr"] for r in rows], color="gray", marker=".")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("iteration")
    lr_ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def build_parser():
    p = Parser(prog=Path(__file__).name, description=__doc__)
    p.add_argument("run_dir", help="a run's out dir (or its metrics.jsonl)")
    p.add_argument("--out", default=None, help="PNG file to write (default: <run_dir>/metrics.png)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    run_dir = Path(args.run_dir)
    png = Path(args.out) if args.out else (run_dir if run_dir.is_dir() else run_dir.parent) / "metrics.png"
    if png.is_dir():
        raise ConfigError(f"--out {png} is a folder: give a file name such as {png / 'metrics.png'}")
    if not png.parent.is_dir():
        raise ConfigError(f"--out {png}: the folder {png.parent} does not exist")
    rows = read_metrics(args.run_dir)
    plot(rows, png)
    print(f"{len(rows)} evaluations -> {png}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))

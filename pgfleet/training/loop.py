"""What every training loop shares: one optimizer step, and the loss curve it leaves."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pgfleet.errors import PgfleetError

if TYPE_CHECKING:
    import torch
    from torch.optim.lr_scheduler import LRScheduler


def save_loss_curve(losses: list[float], path: Path, title: str) -> str | None:
    """A PNG of the loss per step (with a moving average), or None with nothing to plot."""
    if not losses:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(range(1, len(losses) + 1), losses, linewidth=0.8, alpha=0.5, label="loss")
    window = max(1, len(losses) // 20)
    if window > 1:
        smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
                  for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, linewidth=1.5, label=f"mean of {window}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def optimizer_step(loss: torch.Tensor, params: list[torch.nn.Parameter],
                   optimizer: torch.optim.Optimizer, scheduler: LRScheduler, step: int) -> float:
    """One step of a training loop: a clear error when the loss is no longer finite, else
    backward, gradients clipped at 1.0, the optimizer's and the schedule's step; the loss."""
    import torch

    if not torch.isfinite(loss):
        raise PgfleetError(f"the loss became {loss.item()} at step {step}; lower the "
                           "learning rate")
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    return float(loss.item())

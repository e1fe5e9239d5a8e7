"""What a training run reports besides its checkpoints: ``curves.png`` (loss and the task's metrics per epoch) and,
with ``--wandb``, a Weights & Biases run (config, per-epoch metrics, the summary)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .checkpoint import atomic_write


def curves_figure(history: Sequence[Dict[str, Any]], metrics: Sequence[str] = ("top1", "top5"),
                  metric_label: str = "accuracy (%)"):
    """A matplotlib ``Figure`` with two panels: train loss (and val loss where the task has one), and the task's
    ``metrics`` that the history has (classification: val top-1 / top-5), against the epoch. Built on the Agg canvas
    directly (no pyplot): no display is needed and no global figure state is touched."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    loss_axes, metric_axes = figure.subplots(1, 2)
    loss_axes.plot(epochs, [row["train_loss"] for row in history], marker="o", label="train loss")
    if all("val_loss" in row for row in history):
        loss_axes.plot(epochs, [row["val_loss"] for row in history], marker="o", label="val loss")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    for name in (name for name in metrics if all(name in row for row in history)):
        metric_axes.plot(epochs, [row[name] for row in history], marker="o", label=f"val {name}")
    metric_axes.set(xlabel="epoch", ylabel=metric_label, title="validation")
    for axes in (loss_axes, metric_axes):
        axes.grid(alpha=0.3)
        axes.legend()
        axes.xaxis.get_major_locator().set_params(integer=True)
    return figure


def write_curves(path: Path, history: Sequence[Dict[str, Any]], metrics: Sequence[str] = ("top1", "top5"),
                 metric_label: str = "accuracy (%)") -> None:
    """Write :func:`curves_figure` of ``history`` as a PNG, atomically (a kill leaves the previous plot)."""
    if not history:
        return
    buffer = io.BytesIO()
    curves_figure(history, metrics, metric_label).savefig(buffer, format="png")
    data = buffer.getvalue()
    atomic_write(Path(path), lambda tmp: Path(tmp).write_bytes(data))


class WandbUnavailableError(ImportError):
    """``--wandb`` was asked for but the ``wandb`` package is not installed."""


class WandbStartError(RuntimeError):
    """``wandb.init`` failed (no login, no network); the message says how to log in or go offline."""


def require_wandb() -> Any:
    """The ``wandb`` module, or :class:`WandbUnavailableError` saying how to install it."""
    try:
        import wandb
    except ImportError as error:
        raise WandbUnavailableError("--wandb needs the wandb package: pip install 'vithub[wandb]' (or pip install "
                                    "wandb)") from error
    return wandb


class WandbRun:
    """One Weights & Biases run of a training run. The run id is kept in the training state, so a resumed training
    run continues the same W&B run. ``WANDB_MODE=offline`` writes it under ``<output>/wandb`` for a later
    ``wandb sync``."""

    def __init__(self, output: Path, project: str, name: Optional[str], tags: Optional[List[str]],
                 config: Dict[str, Any], run_id: Optional[str] = None) -> None:
        wandb = require_wandb()
        try:
            self.run = wandb.init(project=project, name=name or Path(output).resolve().name, tags=list(tags or []),
                                  config=config, dir=str(output), id=run_id, resume="allow" if run_id else None)
        except wandb.Error as error:  # no login, no network: say how to go on
            raise WandbStartError(f"--wandb: W&B could not start a run ({error}). Run `wandb login` (or set "
                                  "WANDB_API_KEY), or log offline with WANDB_MODE=offline") from error
        self.run.define_metric("epoch")
        self.run.define_metric("*", step_metric="epoch")

    @property
    def id(self) -> str:
        return self.run.id

    def log_epoch(self, row: Dict[str, Any]) -> None:
        self.run.log(dict(row))

    def finish(self, summary: Optional[Dict[str, Any]] = None, exit_code: int = 0) -> None:
        """End the run; ``summary``'s scalar entries go to the run's summary; a non-zero ``exit_code`` marks it
        failed."""
        if summary:
            self.run.summary.update({key: value for key, value in summary.items()
                                     if isinstance(value, (int, float, str, bool))})
        self.run.finish(exit_code=exit_code)

"""One progress bar for a whole search (``tqdm.auto``: a widget in a notebook, a line in a terminal).

auto trains many candidates, each a Lightning run; their own bars would stack one set per
candidate. :class:`SearchBar` is a Lightning callback given to every candidate's trainer (whose
own bar is then off): it counts the epochs the whole search trains, names the candidate and the
rung being trained, and shows the best validation R@1 so far. Its total is what the search
still plans, set again at each rung as survivors are known (a guard's observed-only run, where
a gate opened, adds its epochs when it runs). Shown on rank 0 only; nothing when
``train.progress`` is false.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

__all__ = ["SearchBar"]


def _rank() -> int:
    """This process's rank: the process group's once it exists, before that the launcher's
    environment (torchrun: RANK; Lightning's own launcher: LOCAL_RANK)."""
    import os

    from ..core.distributed import is_distributed, rank

    return rank() if is_distributed() else int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


class SearchBar(Callback):
    def __init__(self, enabled: bool = True, desc: str = "auto"):
        self.enabled, self.desc = enabled, desc
        self.bar = None
        self.total = 0
        self.where = ""
        self.best: float | None = None

    def _open(self):
        if self.bar is None and self.enabled and _rank() == 0:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.desc, unit="epoch", dynamic_ncols=True, leave=True)
        return self.bar

    def plan(self, remaining: int, where: str = "") -> None:
        """The search still plans ``remaining`` candidate-epochs from here; ``where``: e.g. the rung."""
        done = self.bar.n if self.bar is not None else 0
        self.total, self.where = done + max(0, int(remaining)), where
        if self._open() is not None:
            self.bar.total = self.total
            self.bar.refresh()

    def candidate(self, label: str) -> None:
        if self.bar is not None:
            self.bar.set_description(f"{self.desc} {self.where}: {label}".replace("  ", " "))

    def scored(self, val_r1: float) -> None:
        """A candidate finished a rung with this validation R@1."""
        self.best = val_r1 if self.best is None else max(self.best, val_r1)
        if self.bar is not None:
            self.bar.set_postfix_str(f"best val R@1 {self.best:.2f}")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self.enabled:
            return
        bar = self._open()
        if bar is None:
            return
        if bar.n + 1 > (bar.total or 0):
            bar.total = bar.n + 1
        bar.update(1)

    def write(self, line: str) -> bool:
        """Print ``line`` above the bar (``False``: no bar open, the caller logs it as usual)."""
        if self.bar is None:
            return False
        import sys

        self.bar.write(line, file=sys.stderr)       # where the bar and the log lines are
        return True

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

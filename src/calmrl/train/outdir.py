"""The output directory of a run: one writer at a time (a lock), writable before training
starts, and an earlier run moved aside rather than mixed with a new one."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on POSIX: no lock
    fcntl = None

from ..core.distributed import rank as process_rank

__all__ = ["copy_kept", "replacing", 'RunLockedError', 'output_lock', 'check_writable', 'earlier_run', 'move_aside']

log = logging.getLogger("calmrl")


class RunLockedError(RuntimeError):
    """Another process is writing into the same output directory."""


_HELD_LOCKS: dict[str, int] = {}   # lock path -> fd, for the locks this process holds (re-entrant)


@contextlib.contextmanager
def output_lock(output_dir: str | os.PathLike):
    """Hold an exclusive lock on ``output_dir`` (``.calmrl.lock``, ``flock``) for a run: a
    second run into the same directory fails at once with :class:`RunLockedError` instead of
    interleaving files. The lock dies with its process (a killed run leaves no stale lock).
    Only rank 0 locks; re-entrant within one process."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    path = str(Path(output_dir).resolve() / ".calmrl.lock")
    if rank != 0 or fcntl is None:
        yield
        return
    if path in _HELD_LOCKS:     # nested: the outermost holder releases it
        yield
        return
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise RunLockedError(f"output directory {output_dir} is in use by another calmrl run (pid {holder}); "
                                 "wait for it or choose another --output-dir") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)        # the holder removed the file as we opened it: lock the new one
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    _HELD_LOCKS[path] = fd
    try:
        yield
    finally:
        del _HELD_LOCKS[path]
        try:
            os.unlink(path)     # removed while still held, so no one can take a lock on a stale file
        except FileNotFoundError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def check_writable(directory: Path):
    """Fail before training if checkpoints cannot be written (full disk, permissions, a file in
    the way), instead of after the last epoch."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{os.getpid()}"
        with open(probe, "wb") as f:
            f.write(b"\0" * 4096)
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as e:
        raise OSError(f"cannot write checkpoints to {directory}: {e.strerror or e}") from None


def earlier_run(run_dir: Path) -> str | None:
    """What an earlier run left in ``run_dir``: 'finished', 'unfinished', or None (nothing)."""
    if (run_dir / "results.json").exists():
        return "finished"
    ck = run_dir / "checkpoints"
    if ck.is_dir() and any(ck.glob("*.ckpt")):
        return "unfinished"
    return None


def move_aside(run_dir: Path) -> Path | None:
    """A new (not resumed) run never mixes with an earlier one in the same directory: whatever
    is there (checkpoints, results, logs) is moved to ``<run_dir>.prev-<time>`` first, said in a
    note. Lightning would otherwise write ``last-v1.ckpt`` beside the old ``last.ckpt`` and
    eval, export and --resume would serve the old model."""
    state = earlier_run(run_dir)
    if state is None or process_rank() != 0:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir.with_name(f"{run_dir.name}.prev-{stamp}")
    k = 1
    while dest.exists():
        dest, k = run_dir.with_name(f"{run_dir.name}.prev-{stamp}-{k}"), k + 1
    os.replace(run_dir, dest)
    log.warning("note: %s held an earlier %s run; moved it to %s so that the new run does not mix with it "
                "(use --resume to continue a run instead)", run_dir, state, dest)
    return dest


@contextlib.contextmanager
def replacing(run_dir: Path, keep: bool = False):
    """A new run in ``run_dir``: an earlier run there is moved aside (:func:`move_aside`) as the
    new one starts, and moved back if the new one fails (an error, not an interruption: an
    interrupted run is resumable and stays), the failed run's files kept beside it as
    ``<run_dir>.failed-<time>``. ``keep``: a resumed run, nothing is moved."""
    moved = None if keep else move_aside(run_dir)
    try:
        yield moved
    except BaseException as e:
        # an interruption, or a stop that says it is resumable (auto's SearchStopped), leaves the new run in place
        interrupted = hasattr(e, "signum") or isinstance(e, KeyboardInterrupt) or getattr(e, "resumable", False)
        if moved is not None and not interrupted and process_rank() == 0:
            failed = None
            if run_dir.exists():
                failed = run_dir.with_name(f"{run_dir.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}")
                os.replace(run_dir, failed)
            os.replace(moved, run_dir)
            log.warning("note: the new run failed; the earlier run is back in %s%s", run_dir,
                        f" (the failed run's files: {failed})" if failed else "")
        raise


def copy_kept(src: Path, run_dir: Path) -> Path:
    """Copy the checkpoint of the model a run keeps to ``run_dir/checkpoints/kept.ckpt``
    atomically (a temporary file, then a rename); only rank 0 writes. Returns the target."""
    dst = Path(run_dir) / "checkpoints" / "kept.ckpt"
    if process_rank() == 0:
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    return dst

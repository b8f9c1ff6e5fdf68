"""``calmrl train`` at 10^4 .. 10^6 instances against a bare PyTorch loop, on memory-mapped stores.

The store: 4 views of widths 256, 384, 512 and 768 (float32, ``.npy`` memory-mapped), drawn from
a shared 16-dimensional latent plus noise; each cell missing with probability 0.5 (MCAR, at
least one view kept), as the data's own gaps. Written once under ``--store-dir`` (10^6: 7.7 GB).

Two ways over the same training split, one epoch, pairwise-infonce, d = 64 and 256:

- **calmrl**: ``prepare_data`` (checksums, fingerprint, split, standardisation statistics, checks)
  then ``runner.run`` (Lightning, checkpoints, test evaluation on galleries of 1000, five
  drawn). Timed parts: start-up (interpreter and imports), data preparation, the training epoch
  (a callback: the first batch's start to the epoch's end), evaluation, and the rest.
- **bare**: the same encoder heads and loss (``CalMRLModule``'s ``encoder`` and
  ``alignment_loss``), the same batches (the run's sampler and dataset over the same training
  split), AdamW, in a plain ``for`` loop: what a researcher writes by hand.

Each way runs in its own process, so that memory is its own: the parent samples the child's
``/proc/<pid>/status`` every 50 ms for anonymous resident memory (``RssAnon``: what the process
allocated) apart from file pages (``RssFile``: the store's pages, which the kernel may drop).

With ``--repeat R`` each way runs R times in alternating order (A B B A ...) and the run with
the fastest epoch of each way is kept (the machine is shared: best-of-R inside one run).
Prints, per size: epoch seconds of both ways and their ratio, everything outside training as a
share of one calmrl epoch, and peak anonymous memory.

    python benchmarks/bench_scale.py --sizes 10000,100000,1000000 --dims 64,256
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WIDTHS = (256, 384, 512, 768)
NAMES = ("v0", "v1", "v2", "v3")


def build_store(path: Path, n: int, seed: int = 0, chunk: int = 50_000) -> Path:
    """Write the store in chunks (never all of it in memory), checksummed as calmrl writes one."""
    import numpy as np
    from numpy.lib.format import open_memmap

    from calmrl.integrity import digest, store_checksums

    if (path / "meta.json").exists() and json.loads((path / "meta.json").read_text()).get("n") == n:
        return path
    tmp = path.with_name(path.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    k = 16
    W = [rng.normal(size=(k, w)).astype(np.float32) / np.sqrt(k) for w in WIDTHS]
    outs = [open_memmap(tmp / f"{nm}.npy", mode="w+", dtype=np.float32, shape=(n, w)) for nm, w in zip(NAMES, WIDTHS)]
    mask = np.lib.format.open_memmap(tmp / "mask.npy", mode="w+", dtype=bool, shape=(n, len(WIDTHS)))
    for s in range(0, n, chunk):
        b = min(chunk, n - s)
        z = rng.normal(size=(b, k)).astype(np.float32)
        m = rng.random((b, len(WIDTHS))) >= 0.5
        m[~m.any(1), rng.integers(0, len(WIDTHS))] = True
        mask[s: s + b] = m
        for out, w in zip(outs, W):
            out[s: s + b] = z @ w + 2.0 * rng.normal(size=(b, w.shape[1])).astype(np.float32)
    for out in outs + [mask]:
        out.flush()
    del outs, mask
    np.save(tmp / "ids.npy", np.arange(n))
    meta = {"format_version": 1, "names": list(NAMES), "dims": list(WIDTHS), "n": n}
    meta["sha256"] = store_checksums(tmp, sorted(f.name for f in tmp.glob("*.npy")))
    meta["meta_sha256"] = digest(meta)          # names, dims and order checksummed, as FeatureStore.write does
    (tmp / "meta.json").write_text(json.dumps(meta))
    os.replace(tmp, path)
    return path


def _config(store: Path, d: int, out: Path):
    from calmrl.config import Config

    cfg = Config()
    cfg.data.dataset, cfg.data.path = "store", str(store)
    cfg.data.missing.kind = "none"              # the store's own gaps (MCAR 0.5)
    cfg.data.stratify = False
    cfg.method.name = "pairwise-infonce"
    cfg.model.embed_dim = d
    cfg.train.epochs, cfg.train.threads, cfg.train.progress = 1, 2, False
    cfg.eval.gallery_size, cfg.eval.galleries = 1000, 5
    cfg.output_dir = str(out)
    return cfg


def child_calmrl(store: Path, d: int, out: Path, t_spawn: float) -> dict:
    t_start = time.time()
    import lightning as L
    import torch

    from calmrl.train.runner import run
    from calmrl.train.splits import prepare_data

    t_imported = time.time()
    cfg = _config(store, d, out)
    splits = prepare_data(cfg)
    t_prepared = time.time()
    epoch = {}

    class EpochTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                epoch["start"] = time.time()

        def on_train_epoch_end(self, trainer, pl_module):
            epoch["end"] = time.time()

    res = run(cfg, splits=splits, extra_callbacks=[EpochTimer()])
    t_end = time.time()
    wall = t_end - t_spawn
    train = epoch["end"] - epoch["start"]
    return {"way": "calmrl", "wall": wall, "startup": t_imported - t_spawn, "prepare": t_prepared - t_imported,
            "epoch": train, "eval": res["eval_seconds"], "other_run": (t_end - t_prepared) - train - res["eval_seconds"],
            "n_train": splits.train.n, "threads": torch.get_num_threads(), "R@1": res["pairs"]["average"]["R@1"]}


def child_bare(store: Path, d: int, out: Path, t_spawn: float) -> dict:
    import torch

    from calmrl.train.loaders import make_loader
    from calmrl.train.methods import alignment_loss
    from calmrl.train.module import CalMRLModule
    from calmrl.train.splits import prepare_data

    cfg = _config(store, d, out)
    splits = prepare_data(cfg)            # the same training split and standardisation (not timed)
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = CalMRLModule(cfg, splits.dims, splits.names)
    enc, params = model.encoder, model.temperature
    groups = [{"params": list(enc.parameters())}]
    if params is not None:
        groups.append({"params": [p for p in params.parameters() if p.requires_grad], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    loader = make_loader(splits.train, cfg, True)
    t = time.time()
    for batch in loader:
        A = enc(batch["views"], batch["mask"])
        loss, _ = alignment_loss(A, batch["mask"], cfg.method, params=params)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return {"way": "bare", "epoch": time.time() - t, "n_train": splits.train.n, "loss": float(loss.detach())}


def measure(way: str, store: Path, d: int, out: Path) -> dict:
    """Run one way in a child process, sampling its memory."""
    import shutil
    shutil.rmtree(out, ignore_errors=True)          # a fresh run directory (no earlier run moved aside)
    t_spawn = time.time()
    p = subprocess.Popen([sys.executable, __file__, "--child", way, str(store), str(d), str(out), repr(t_spawn)],
                         stdout=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
    peak = {"RssAnon": 0, "RssFile": 0}
    while p.poll() is None:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                key = line.split(":")[0]
                if key in peak:
                    peak[key] = max(peak[key], int(line.split()[1]) // 1024)
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.05)
    stdout = p.stdout.read()
    if p.returncode:
        raise SystemExit(f"{way} failed (exit {p.returncode}):\n{stdout[-2000:]}")
    r = json.loads(stdout.strip().splitlines()[-1])
    r.update(anon_mb=peak["RssAnon"], file_mb=peak["RssFile"])
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--dims", default="64,256")
    ap.add_argument("--store-dir", default=os.path.expanduser("~/.cache/calmrl/bench-scale"))
    ap.add_argument("--out", default="/tmp/calmrl-bench-scale")
    ap.add_argument("--json", default="")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each way, alternating (A B B A); best epoch kept")
    ap.add_argument("--child", nargs=5, metavar=("WAY", "STORE", "D", "OUT", "T"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        way, store, d, out, t = a.child
        fn = child_calmrl if way == "calmrl" else child_bare
        print(json.dumps(fn(Path(store), int(d), Path(out), float(t))))
        return
    import platform
    rows = []
    print(f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; 1 epoch of pairwise-infonce, "
          "batch 256, 2 threads; 4 views 256-768 wide, MCAR 0.5; test on 5 galleries of 1000")
    for n in (int(float(s)) for s in a.sizes.split(",")):
        t = time.time()
        store = build_store(Path(a.store_dir) / f"n{n}", n)
        print(f"store of {n:,} instances ready ({time.time() - t:.0f} s)", flush=True)
        for d in (int(s) for s in a.dims.split(",")):
            out = Path(a.out) / f"n{n}-d{d}"
            cs, bs = [], []
            for i in range(a.repeat):       # A B B A ...: neither way always runs on a warmer machine
                for way in (("calmrl", "bare") if i % 2 == 0 else ("bare", "calmrl")):
                    (cs if way == "calmrl" else bs).append(
                        measure(way, store, d, out if way == "calmrl" else out.with_name(out.name + "-bare")))
            c, b = min(cs, key=lambda r: r["epoch"]), min(bs, key=lambda r: r["epoch"])   # best of the repeats
            outside = c["wall"] - c["epoch"]
            row = {"n": n, "d": d, "calmrl": c, "bare": b, "epoch_ratio": c["epoch"] / b["epoch"],
                   "outside_share": outside / c["epoch"]}
            rows.append(row)
            print(f"N={n:>9,d} d={d:3d}: epoch calmrl {c['epoch']:7.1f} s, bare {b['epoch']:7.1f} s, ratio "
                  f"{row['epoch_ratio']:.3f}; outside training {outside:5.1f} s = {row['outside_share']:.0%} of an "
                  f"epoch (start-up {c['startup']:.1f}, preparation {c['prepare']:.1f}, evaluation {c['eval']:.1f}, "
                  f"rest {c['other_run']:.1f}); peak anonymous memory calmrl {c['anon_mb']} MB, bare "
                  f"{b['anon_mb']} MB (store pages resident at most {c['file_mb']} MB); test R@1 {c['R@1']:.1f}",
                  flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()

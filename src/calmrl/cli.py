"""Command line: ``calmrl train | eval | impute | export | bench | embed | retrieve``.

``calmrl train --config FILE [--method a,b,...] [--set key=value ...] [--resume]`` trains
each method (same data split, encoders, budget) and prints a summary table.
``calmrl eval --checkpoint CKPT`` re-evaluates a checkpoint on its test split.
``calmrl impute --checkpoint CKPT --store DIR --out DIR`` fills the missing modalities of
a feature store with the calibrator's imputations (in the shared embedding space).
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from pathlib import Path


def _default_config() -> str:
    return str(resources.files("calmrl") / "configs" / "uci_mfeat.yaml")


def _print_tables(results: list[dict]):
    from .train.runner import format_table

    print()
    print("Cross-modal retrieval on the complete test split (average over all ordered view pairs),")
    print("fused queries (all other views -> one view), kNN accuracy of the fused embedding, and the")
    print("anchor shift (degrees) on the training split: observed columns vs observed + imputed.")
    print(format_table(results))


def cmd_train(args) -> int:
    from .train import load_config, run

    cfg = load_config(args.config, args.set + ([f"train.threads={args.threads}"] if args.threads else []))
    methods = args.method.split(",") if args.method else [cfg.method.name]
    from .train.config import METHODS
    bad = [m for m in methods if m not in METHODS]
    if bad:
        print(f"error: unknown method(s) {bad}; valid: {list(METHODS)}", file=sys.stderr)
        return 2
    results = []
    for m in methods:
        print(f"== training {m} on {cfg.data.dataset} ({cfg.data.missing.kind}"
              f"{'' if m == 'oracle' else f', rate {cfg.data.missing.rate}'}) ==", flush=True)
        results.append(run(cfg, method=m, resume=args.resume))
    _print_tables(results)
    out = Path(cfg.output_dir)
    (out / "summary.json").write_text(json.dumps(results, indent=2))
    print(f"\nresults, logs (CSV, TensorBoard) and checkpoints under {out}/<method>/")
    return 0


def _load_run(ckpt_path: str):
    from .train import load_checkpoint
    from .train.config import _build, Config
    from .train.module import CalMRLModule
    from .train.runner import prepare_data

    ckpt = load_checkpoint(ckpt_path)
    if "calmrl_config" not in ckpt:
        raise SystemExit(f"error: {ckpt_path} has no calmrl configuration (not written by calmrl train)")
    cfg = _build(Config, ckpt["calmrl_config"])
    splits = prepare_data(cfg)
    model = CalMRLModule(cfg, splits.dims, splits.names)
    model.load_state_dict(ckpt["state_dict"])
    return cfg, splits, model


def cmd_eval(args) -> int:
    from .train.runner import evaluate_model

    cfg, splits, model = _load_run(args.checkpoint)
    res = evaluate_model(model, splits, cfg)
    res.update({"method": cfg.method.name, "train_seconds": 0.0})
    _print_tables([res])
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


def cmd_impute(args) -> int:
    import numpy as np

    from .data import FeatureStore, MultiViewData
    from .train.evaluate import embed_data

    cfg, splits, model = _load_run(args.checkpoint)
    data = FeatureStore(args.store).read()
    if data.names != splits.names:
        raise SystemExit(f"error: store modalities {data.names} differ from the model's {splits.names}")
    if splits.standardization is not None:
        data, _ = data.standardize(splits.standardization)   # the training split's statistics
    A, mask = embed_data(model.encoder, data)
    cal = model.calibrator
    if not bool(cal.initialized):
        cal.fit(A.to(cal.W.dtype), mask, n_iter=cfg.calibrator.em_iters * 3)
    imp = cal.impute(A.to(cal.W.dtype), mask)
    filled = imp.filled.float().numpy()
    out = MultiViewData([filled[:, m] for m in range(filled.shape[1])], data.names, np.ones_like(data.mask),
                        data.ids, data.labels, {"imputed_from": str(args.store), "space": "embedding"})
    FeatureStore.write(args.out, out)
    np.save(Path(args.out) / "observed_mask.npy", data.mask)
    np.save(Path(args.out) / "confidence.npy", imp.confidence.float().numpy())
    n_missing = int((~mask).sum())
    print(f"imputed {n_missing} missing cells of {data.n} instances into {args.out} "
          f"(mean confidence of imputed cells {float(imp.confidence[~mask].mean()) if n_missing else 1.0:.3f})")
    return 0


def cmd_export(args) -> int:
    from .train import export_model

    cfg, splits, model = _load_run(args.checkpoint)
    out = export_model(model.encoder, model.calibrator, cfg, splits.dims, args.out)
    print(f"exported encoders and calibrator to {out}/model.safetensors (+ config.json)")
    return 0


def cmd_bench(args) -> int:
    from .experiments import bench
    from .train import load_config

    cfg = load_config(args.config, args.set)
    seeds = [int(x) for x in args.seeds.split(",")] if args.seeds else None
    cmd = "calmrl bench" + (" --quick" if args.quick else "") + "".join(f" --set {s}" for s in args.set)
    path = bench(cfg, Path(args.out), quick=args.quick, seeds=seeds, command=cmd)
    print(f"report written to {path}")
    return 0


def cmd_embed(args) -> int:
    from .train.embed import embed_jsonl

    split = lambda s: [x for x in (s or "").split(",") if x]  # noqa: E731
    store = embed_jsonl(args.input, args.out, text_fields=split(args.text_fields),
                        vector_fields=split(args.vector_fields), id_field=args.id_field,
                        label_field=args.label_field, batch_size=args.batch_size, model_path=args.model)
    data = store.read()
    print(f"wrote {data.n} instances, modalities {dict(zip(data.names, data.dims))}, "
          f"observed cells {int(data.mask.sum())}/{data.mask.size} to {args.out}")
    return 0


def cmd_retrieve(args) -> int:
    import numpy as np
    import torch

    from .data import FeatureStore
    from .inference import CalMRLModel

    model = CalMRLModel.load(args.model)
    q, g = FeatureStore(args.query).read(), FeatureStore(args.gallery).read()
    if args.gallery_modality not in g.names:
        raise SystemExit(f"error: gallery store has no modality '{args.gallery_modality}'; it has {g.names}")
    gm = g.index(args.gallery_modality)
    rows = np.nonzero(g.mask[:, gm])[0]
    gal_in = {n: (torch.as_tensor(np.asarray(g.views[m][rows])) if m == gm else None) for m, n in enumerate(g.names)}
    gallery = model.embed(gal_in).embeddings[:, model.names.index(args.gallery_modality)]
    # queries: each instance with whatever modalities it has (missing ones are imputed)
    hits = []
    for pattern in np.unique(q.mask, axis=0):                 # one batch per missing pattern
        idx = np.nonzero((q.mask == pattern).all(1))[0]
        inputs = {n: (torch.as_tensor(np.asarray(q.views[m][idx])) if pattern[m] else None)
                  for m, n in enumerate(q.names)}
        scores, top = model.retrieve(inputs, gallery, k=args.k)
        hits += [(int(i), top[j].tolist(), scores[j].tolist()) for j, i in enumerate(idx)]
    hits.sort()
    with open(args.out, "w") as f:
        for i, top, sc in hits:
            f.write(json.dumps({"query_id": q.ids[i].item() if hasattr(q.ids[i], "item") else q.ids[i],
                                "gallery_ids": [g.ids[rows[t]].item() for t in top],
                                "scores": [round(x, 6) for x in sc]}) + "\n")
    print(f"wrote top-{args.k} {args.gallery_modality} items for {q.n} queries to {args.out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="calmrl", description="Multimodal representation learning with missing "
                                "modalities, calibrated by a shared-latent model (CalMRL).")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one or several methods and print the retrieval table")
    t.add_argument("--config", default=None, help="YAML config (default: the bundled UCI Multiple Features one)")
    t.add_argument("--method", default=None, help="comma-separated methods, e.g. calmrl,pmrl-drop,oracle")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    t.add_argument("--resume", action="store_true", help="continue from <output_dir>/<method>/checkpoints/last.ckpt")
    t.add_argument("--threads", type=int, default=0, help="intra-op CPU threads (train.threads; 0 = auto)")
    t.set_defaults(fn=cmd_train)
    e = sub.add_parser("eval", help="evaluate a checkpoint on its test split")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--out", default=None, help="write the metrics as JSON here")
    e.set_defaults(fn=cmd_eval)
    i = sub.add_parser("impute", help="fill the missing modalities of a feature store (embedding space)")
    i.add_argument("--checkpoint", required=True)
    i.add_argument("--store", required=True, help="input feature-store directory")
    i.add_argument("--out", required=True, help="output feature-store directory")
    i.set_defaults(fn=cmd_impute)
    b = sub.add_parser("bench", help="sweep missing rates x methods x seeds; write report.md and plots")
    b.add_argument("--config", default=None)
    b.add_argument("--quick", action="store_true", help="one setting, three methods, one seed (< 3 min on 2 cores)")
    b.add_argument("--seeds", default=None, help="comma-separated seeds (default 0,1,2; quick: 0)")
    b.add_argument("--out", default="reports/bench")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    b.add_argument("--threads", type=int, default=0, help="intra-op CPU threads (train.threads; 0 = auto)")
    b.set_defaults(fn=cmd_bench)
    em = sub.add_parser("embed", help="raw inputs (JSON lines) -> feature store; resumable")
    em.add_argument("--input", required=True, help="JSON lines, one instance per line")
    em.add_argument("--out", required=True, help="feature-store directory to write")
    em.add_argument("--text-fields", default="", help="comma-separated text fields (embedded by a sentence model)")
    em.add_argument("--vector-fields", default="", help="comma-separated numeric-vector fields (stored as is)")
    em.add_argument("--id-field", default="id")
    em.add_argument("--label-field", default=None)
    em.add_argument("--batch-size", type=int, default=64)
    em.add_argument("--model", default=None, help="sentence-transformers model directory (default: bundled MiniLM)")
    em.set_defaults(fn=cmd_embed)
    r = sub.add_parser("retrieve", help="top-k gallery items for queries with any subset of modalities")
    r.add_argument("--model", required=True, help="directory written by calmrl export")
    r.add_argument("--query", required=True, help="feature store of queries (missing cells allowed)")
    r.add_argument("--gallery", required=True, help="feature store of the gallery")
    r.add_argument("--gallery-modality", required=True)
    r.add_argument("--k", type=int, default=10)
    r.add_argument("--out", required=True, help="JSON lines: query_id, gallery_ids, scores")
    r.set_defaults(fn=cmd_retrieve)
    x = sub.add_parser("export", help="write model.safetensors + config.json for inference")
    x.add_argument("--checkpoint", required=True)
    x.add_argument("--out", required=True)
    x.set_defaults(fn=cmd_export)
    args = p.parse_args(argv)
    if getattr(args, "config", "unset") is None:
        args.config = _default_config()
    from .train.config import ConfigError
    from .train.runner import CheckpointError
    try:
        return args.fn(args)
    except (ConfigError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

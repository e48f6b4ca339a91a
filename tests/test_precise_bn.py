"""Precise BN is exact: closed-form numpy statistics, and the same answer whatever the batch split."""

import numpy as np
import torch

from embedlib.config import ModelConfig
from embedlib.model.network import batch_norms, build_model
from embedlib.train.precise_bn import Moments, precise_statistics


def _model(seed=0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(norm="batch", bn_momentum=0.01, channels=(4, 8, 8, 8), embedding_dim=8), 3)


def _images(n=37, seed=1):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 32, 32), dtype=np.uint8))


def test_moments_match_numpy_for_uneven_chunks():
    rng = np.random.default_rng(0)
    data = rng.normal(3.0, 2.0, size=(50, 3, 4, 4))
    m = Moments(3)
    for lo, hi in [(0, 1), (1, 8), (8, 9), (9, 50)]:
        m.add(torch.from_numpy(data[lo:hi]))
    flat = data.transpose(1, 0, 2, 3).reshape(3, -1)
    assert np.allclose(m.mean.numpy(), flat.mean(axis=1))
    assert np.allclose(m.variance().numpy(), flat.var(axis=1, ddof=1))
    assert np.allclose(m.variance(unbiased=False).numpy(), flat.var(axis=1))


def test_first_layer_matches_closed_form():
    model = _model()
    images = _images()
    precise_statistics(model, lambda: [images[:10], images[10:]])
    conv = model.encoders["image"].features[0]
    with torch.no_grad():
        x = conv(images.float().unsqueeze(1) / 127.5 - 1.0).double().numpy()
    flat = x.transpose(1, 0, 2, 3).reshape(x.shape[1], -1)
    bn = batch_norms(model)[0][1]
    assert np.allclose(bn.running_mean.numpy(), flat.mean(axis=1), rtol=1e-5, atol=1e-6)
    assert np.allclose(bn.running_var.numpy(), flat.var(axis=1, ddof=1), rtol=1e-5, atol=1e-6)


def test_every_layer_independent_of_batch_split():
    images = _images()
    splits = [[images], [images[i : i + 1] for i in range(len(images))], [images[:3], images[3:20], images[20:]]]
    results = []
    for split in splits:
        model = _model()
        precise_statistics(model, lambda split=split: split)
        results.append([(bn.running_mean.clone(), bn.running_var.clone()) for _, bn in batch_norms(model)])
    for other in results[1:]:
        for (m0, v0), (m1, v1) in zip(results[0], other):
            assert torch.allclose(m0, m1, rtol=1e-5, atol=1e-6) and torch.allclose(v0, v1, rtol=1e-5, atol=1e-6)


def test_precise_eval_mode_equals_train_mode_on_the_whole_set():
    """With precise stats, eval mode on the full set equals train mode on one batch of the full set
    (up to the unbiased-variance factor n/(n-1), negligible here)."""
    model = _model()
    images = _images(n=64)
    precise_statistics(model, lambda: [images[:20], images[20:]])
    model.eval()
    with torch.no_grad():
        eval_emb = model.embed(images)
    # train mode on the full set normalises every layer with full-set statistics
    train_model = _model()
    train_model.load_state_dict(model.state_dict())
    train_model.train()
    with torch.no_grad():
        train_emb = train_model.embed(images)
    assert torch.nn.functional.cosine_similarity(eval_emb, train_emb).min() > 0.999


def test_apply_false_reports_without_changing():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = precise_statistics(model, lambda: [_images()], apply=False)
    assert set(report) == {name for name, _ in batch_norms(model)}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert report["encoders.image.features.1"]["abs_log_var_ratio"] > 0  # fresh running stats (var 1) are far from precise


def _multi_view_model(seed=0):
    from embedlib.config import Config, ViewsConfig
    from embedlib.views import view_specs

    cfg = Config(views=ViewsConfig(names=("image", "strings", "idents", "tokens"), buckets=64),
                 model=ModelConfig(norm="batch", bn_momentum=0.01, channels=(4, 8, 8, 8), embedding_dim=24,
                                   skip_dim=8, hidden=16))
    torch.manual_seed(seed)
    return build_model(cfg.model, 3, view_specs(cfg))


def _views(n=29, seed=2):
    rng = np.random.default_rng(seed)
    return {"image": torch.from_numpy(rng.integers(0, 256, (n, 32, 32), dtype=np.uint8)),
            **{k: torch.from_numpy(rng.integers(0, 4, (n, 64), dtype=np.uint8)) for k in ("strings", "idents", "tokens")}}


def test_independent_layers_are_measured_in_one_pass_with_the_same_result(monkeypatch):
    """bn_stages groups the k-th BN of every view's encoder: the three sketch encoders and the image's first conv
    BN are one pass, and the result equals recalibrating one layer at a time."""
    from embedlib.model import network as model_mod

    views = _views()
    batches = [{k: v[:11] for k, v in views.items()}, {k: v[11:] for k, v in views.items()}]
    staged = _multi_view_model()
    assert model_mod.bn_stages(staged)[0] == ["encoders.image.features.1", "encoders.strings.norm",
                                              "encoders.idents.norm", "encoders.tokens.norm"]
    calls = []
    precise_statistics(staged, lambda: calls.append(1) or batches)
    assert len(calls) == len(staged.encoders["image"].features) // 4  # one pass per conv block, sketches included
    one_by_one = _multi_view_model()
    monkeypatch.setattr(model_mod, "bn_stages", lambda m: [[n] for n, _ in batch_norms(m)])
    calls.clear()
    precise_statistics(one_by_one, lambda: calls.append(1) or batches)
    assert len(calls) == len(batch_norms(one_by_one))
    for (name, a), (_, b) in zip(batch_norms(staged), batch_norms(one_by_one)):
        assert torch.allclose(a.running_mean, b.running_mean, rtol=1e-5, atol=1e-6), name
        assert torch.allclose(a.running_var, b.running_var, rtol=1e-5, atol=1e-6), name

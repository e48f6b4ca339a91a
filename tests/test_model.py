import pytest
import torch

from embedlib.config import ModelConfig
from embedlib.model.network import batch_norms, build_model


@pytest.mark.parametrize("norm", ["batch", "batch-cumulative", "group", "none"])
def test_each_norm_builds_and_embeds_unit_vectors(norm):
    torch.manual_seed(0)
    model = build_model(ModelConfig(norm=norm, embedding_dim=24), num_classes=3).eval()
    images = torch.randint(0, 256, (5, 64, 64), dtype=torch.uint8)
    emb, logits = model(images)
    assert emb.shape == (5, 24) and logits.shape == (5, 3)
    assert torch.allclose(emb.norm(dim=1), torch.ones(5), atol=1e-5)
    assert (len(batch_norms(model)) > 0) == norm.startswith("batch")


def test_norm_kinds_configure_batchnorm_momentum():
    plain = batch_norms(build_model(ModelConfig(norm="batch", bn_momentum=0.01), 2))
    cumulative = batch_norms(build_model(ModelConfig(norm="batch-cumulative"), 2))
    assert all(m.momentum == 0.01 for _, m in plain)
    assert all(m.momentum is None for _, m in cumulative)


def test_eval_mode_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = build_model(ModelConfig(), 3)
    model.train()
    model(torch.randint(0, 256, (8, 64, 64), dtype=torch.uint8))  # move running stats off their init
    model.eval()
    images = torch.randint(0, 256, (6, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        a = model.embed(images)
        b = model.embed(images)
        single = torch.cat([model.embed(images[i : i + 1]) for i in range(6)])
    assert torch.equal(a, b)
    assert torch.allclose(a, single, atol=1e-5)  # eval mode: a file's embedding does not depend on its batch


def multi_view(norm="batch", **kw):
    import numpy as np

    from embedlib.config import Config, ViewsConfig
    from embedlib.views import VIEW_NAMES, compute_views, view_specs

    cfg = Config(views=ViewsConfig(names=VIEW_NAMES, buckets=256), model=ModelConfig(norm=norm, hidden=32,
                 embedding_dim=16, channels=(4, 8, 8, 8), **{"skip_dim": 8, **kw}))
    paths = ["/usr/bin/ls", "/usr/bin/cat", "/usr/bin/env", "/usr/bin/id", "/usr/bin/touch", "/usr/bin/sort"]
    views = [compute_views(open(p, "rb").read(), cfg) for p in paths]
    batch = {k: torch.from_numpy(np.stack([v[k] for v in views])) for k in views[0]}
    return build_model(cfg.model, 3, view_specs(cfg)), batch


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_multi_view_model_on_real_views(norm):
    torch.manual_seed(0)
    model, batch = multi_view(norm)
    assert set(model.view_names) == {"image", "strings", "idents", "bytehist"}
    model.train()
    model(batch)
    model.eval()
    with torch.no_grad():
        emb, logits = model(batch)
        single = torch.cat([model.embed({k: v[i : i + 1] for k, v in batch.items()}) for i in range(6)])
    assert emb.shape == (6, 16) and logits.shape == (6, 3)
    assert torch.allclose(emb.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(emb, single, atol=1e-5)
    assert (len(batch_norms(model)) == 7) == (norm == "batch")  # 4 conv blocks + 3 vector encoders


def test_sketch_idf_and_skip_paths():
    import numpy as np

    torch.manual_seed(0)
    model, batch = multi_view(sketch_skip="fixed")
    model.set_document_frequency("strings", np.arange(256), 1000)
    idf = model.encoders["strings"].idf
    assert idf[0] > idf[255] > 0  # rare buckets weigh more
    assert set(model.skips) == {"strings", "idents"}
    assert not model.skips["strings"].weight.requires_grad  # "fixed": a random projection, not trained
    assert "encoders.strings.idf" in model.state_dict()  # saved with the checkpoint


def test_fixed_part_views_idf_power_and_fixed_only_views():
    """model.skip_views picks the sketches of the fixed part, skip_idf_power sharpens its IDF, and a sketch view
    outside model.learned_views feeds only the fixed part (no encoder, but its IDF is set and saved)."""
    import numpy as np

    torch.manual_seed(0)
    kw = dict(sketch_skip="concat", skip_dim=8, skip_weight=0.5)  # embedding 16 = 8 learned + 8 fixed
    model, batch = multi_view(skip_views=("idents",), skip_idf_power=1.0, learned_views=("image", "strings", "bytehist"),
                              **kw)
    assert set(model.encoders) == {"image", "strings", "bytehist"} and set(model.fixed_only) == {"idents"}
    assert set(model.view_names) == {"image", "strings", "idents", "bytehist"}
    assert model.fixed_views == ["idents"] and model.concat_projection.shape == (256, 8)
    # the default skip_views names "tokens", absent here: every sketch view feeds the fixed part
    assert multi_view(**kw)[0].fixed_views == ["strings", "idents"]
    model.set_document_frequency("idents", np.arange(256), 1000)
    assert "fixed_only.idents.idf" in model.state_dict()
    model.eval()
    with torch.no_grad():
        emb = model.embed(batch)
        fixed = torch.nn.functional.normalize(model.fixed_only["idents"].weighted(batch["idents"]) @
                                              model.concat_projection, dim=1)
    assert torch.allclose(emb[:, 8:], 0.5 ** 0.5 * fixed, atol=1e-5)  # skip_weight 0.5
    sharper, _ = multi_view(skip_views=("idents",), skip_idf_power=2.0, **kw)
    sharper.set_document_frequency("idents", np.arange(256), 1000)
    w = sharper.encoders["idents"].weighted(batch["idents"], idf_power=2.0)
    assert torch.allclose(w, torch.nn.functional.normalize(torch.log1p(batch["idents"].float())
                                                           * sharper.encoders["idents"].idf ** 2, dim=1))


def test_fold_codes_in_slices_are_the_whole_arrays_formula():
    """The fold's table is built in cache-sized slices; each slice must give what one pass over the whole array
    gives (several slices, blocks that do not divide a slice's start, 2^20 x 8 as the default)."""
    import numpy as np

    from embedlib.model.network import fold_codes
    from embedlib.views import splitmix64

    for ids, dim, copies in ((1 << 14, 64, 8), (50_000, 96, 3), (7, 16, 2), (1 << 20, 2048, 8)):
        h = splitmix64(np.arange(ids * copies, dtype=np.uint64)).reshape(ids, copies)
        block = dim // copies
        want = ((h % np.uint64(block)).astype(np.int64) + np.arange(copies) * block) * 2 + \
            (h >> np.uint64(63)).astype(np.int64)
        assert np.array_equal(fold_codes(ids, dim, copies), want.astype(np.int32)), (ids, dim, copies)


def test_token_id_fold_is_the_count_sketch_of_the_idf_weighted_unit_vector():
    """The fixed part of an id set equals its closed form: the set's IDF ** power unit vector, each id's weight
    added with its sign to its dimension; padding weighs nothing; inner products of folds are unbiased estimates
    of the exact cosines (checked on average over many random pairs). What the copies buy (fewer large errors
    where a few rare words carry a file's weight) is measured on a corpus: studies/unseen_families/fold.py."""
    import numpy as np

    from embedlib.model.network import TokenIdFold
    from embedlib.views import splitmix64

    bits, dim, copies, pad = 10, 64, 4, 0xFFFFFFFF
    fold = TokenIdFold(bits, dim, copies)
    rng = np.random.default_rng(0)
    fold.idf.copy_(torch.as_tensor(rng.uniform(1, 5, 1 << bits), dtype=torch.float32))
    ids = np.array([[3, 17, 900, pad, pad], [3, 18, 901, 1000, pad]], np.uint32)
    out = fold(torch.from_numpy(ids), idf_power=2.0).numpy()
    idf = fold.idf.numpy().astype(np.float64)
    block = dim // copies
    for row, got in zip(ids, out):
        real = [int(i) for i in row if i != pad]
        w = idf[real] ** 2
        w /= np.linalg.norm(w)
        want = np.zeros(dim)
        for c in range(copies):  # block c holds dimensions [c * 16, (c + 1) * 16)
            for i, wi in zip(real, w):
                h = int(splitmix64(np.array([i * copies + c], np.uint64))[0])
                want[c * block + h % block] += (-1 if h >> 63 else 1) * wi / copies ** 0.5
        assert np.allclose(got, want, atol=1e-6)
    assert set(fold.state_dict()) == {"idf"}  # the fold is a pure function of the id: only the IDF is saved
    # unbiased: over random id sets sharing half their ids, drawn from 2^16 ids so that the pairs of ids that
    # collide differ from one pair of sets to the next (as over random hashes), the mean folded inner product is
    # the exact cosine
    bits = 16
    fold, one = TokenIdFold(bits, dim, copies), TokenIdFold(bits, dim, 1)
    idf = rng.uniform(1, 5, 1 << bits)
    fold.idf.copy_(torch.as_tensor(idf, dtype=torch.float32))
    one.idf.copy_(fold.idf)
    est, est_one, exact = [], [], []
    for _ in range(300):
        shared, only_a, only_b = (rng.choice(1 << bits, 40, replace=False) for _ in range(3))
        a = np.unique(np.concatenate([shared, only_a])).astype(np.uint32)
        b = np.unique(np.concatenate([shared, only_b])).astype(np.uint32)
        n = max(len(a), len(b))
        x = np.full((2, n), pad, np.uint32)
        x[0, : len(a)], x[1, : len(b)] = a, b
        f = fold(torch.from_numpy(x)).numpy().astype(np.float64)
        g = one(torch.from_numpy(x)).numpy().astype(np.float64)
        wa, wb = np.zeros(1 << bits), np.zeros(1 << bits)
        wa[a], wb[b] = idf[a], idf[b]
        exact.append(wa @ wb / np.linalg.norm(wa) / np.linalg.norm(wb))
        est.append(f[0] @ f[1])
        est_one.append(g[0] @ g[1])
    err, err_one = np.array(est) - exact, np.array(est_one) - exact
    for e in (err, err_one):  # unbiased: the mean error is within 3 standard errors of 0
        assert abs(e.mean()) < 3 * e.std() / len(e) ** 0.5


def test_default_model_has_the_token_id_fold_as_its_fixed_part():
    import numpy as np

    from embedlib import views
    from embedlib.config import Config

    cfg = Config()
    model = build_model(cfg.model, 3, views.view_specs(cfg), cfg.views.token_id_bits).eval()
    assert model.fixed_views == ["token_ids"] and set(model.id_sets) == {"token_ids"}
    assert set(model.encoders) == {"strings", "idents", "tokens"} and not hasattr(model, "concat_projection")
    df = np.zeros(1 << cfg.views.token_id_bits, np.int64)
    df[:1000] = 50
    model.set_document_frequency("token_ids", df, 100)
    batch = views.stack([views.compute_views(b"\0libfoo_openWindow\0HTTPServer /usr/share/foo\0", cfg),
                         views.compute_views(b"", cfg)], cfg)
    with torch.no_grad():
        emb = model.embed({k: torch.from_numpy(v) for k, v in batch.items()})
        fixed = model.id_sets["token_ids"](torch.from_numpy(batch["token_ids"]), cfg.model.skip_idf_power)
    d = cfg.model.embedding_dim - cfg.model.skip_dim
    assert emb.shape == (2, cfg.model.embedding_dim)
    assert torch.allclose(emb[0, d:], (1 - cfg.model.skip_weight) ** 0.5 * torch.nn.functional.normalize(fixed, dim=1)[0],
                          atol=1e-5)
    assert torch.count_nonzero(emb[1, d:]) == 0  # an empty file has no words: its fixed part is zero


def test_open_set_gate_sets_each_files_learned_share_by_its_confidence():
    """output() = embed() until calibrated; then the learned part's share is gate_weight x clip((confidence - low) /
    (high - low), 0, 1), each part kept unit: a file the classifier claims weighs its learned part, one it does not
    is its fixed part alone (closed form on a real default model)."""
    import numpy as np

    from embedlib import views
    from embedlib.config import Config

    cfg = Config()
    model = build_model(cfg.model, 3, views.view_specs(cfg), cfg.views.token_id_bits).eval()
    data = [b"\0libfoo_openWindow\0HTTPServer /usr/share/foo\0", b"\0gtk_widget_show\0/etc/passwd\0", b"\0zlib deflate\0"]
    batch = {k: torch.from_numpy(v) for k, v in views.stack([views.compute_views(d, cfg) for d in data], cfg).items()}
    with torch.no_grad():
        emb = model.embed(batch)
        assert torch.equal(model.output(batch), emb) and not model.gated
        conf = model.confidence(emb)
        assert torch.allclose(conf, (emb @ torch.nn.functional.normalize(model.class_directions, dim=1).T).max(1).values)
        order = conf.argsort()
        low, high = float(conf[order[0]]) + 1e-4, float(conf[order[2]]) - 1e-4  # one below, one between, one above
        model.calibrate_gate(high, high - low)
        out = model.output(batch)
    d = cfg.model.embedding_dim - cfg.model.skip_dim
    learned = emb[:, :d] / cfg.model.skip_weight ** 0.5
    fixed = emb[:, d:] / (1 - cfg.model.skip_weight) ** 0.5
    share = np.clip((conf.numpy() - low) / (high - low), 0, 1) * cfg.model.gate_weight
    assert share[order[0]] == 0 and share[order[2]] == cfg.model.gate_weight and 0 < share[order[1]] < share[order[2]]
    for i in range(3):
        expected = torch.cat([float(share[i]) ** 0.5 * learned[i], float(1 - share[i]) ** 0.5 * fixed[i]])
        assert torch.allclose(out[i], expected, atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.count_nonzero(out[order[0], :d]) == 0  # the unclaimed file: its fixed part alone


def test_models_without_classes_or_fixed_part_have_no_gate():
    from embedlib import views
    from embedlib.config import Config

    cfg = Config()
    assert not hasattr(build_model(cfg.model, 1, views.view_specs(cfg), cfg.views.token_id_bits), "gate_range")
    assert not hasattr(build_model(ModelConfig(), 3), "gate_range")  # the byteplot alone: no fixed part
    off = ModelConfig(open_set_gate=False)
    assert not hasattr(build_model(off, 3, views.view_specs(cfg), cfg.views.token_id_bits), "gate_range")

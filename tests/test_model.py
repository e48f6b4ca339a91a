import pytest
import torch

from embedlib.config import ModelConfig
from embedlib.model import batch_norms, build_model


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

"""Fusion models: spatial feature, L2 norm, TF LSTM cell, optimised mLSTM vs naive, skipping, batching."""

import pytest
import torch

from reference_mlstm import naive_baseline_head, naive_mlstm, naive_word_lstm, reference_spatial
from rmi.models.language import WordLSTM
from rmi.models.layers import l2_normalize
from rmi.models.lstm_baseline import LSTMFusion
from rmi.models.rmi import MultimodalLSTM, RMIFusion, squash
from rmi.models.segmenter import build_model
from rmi.models.spatial import spatial_features

DIMS = dict(visual_dim=12, embed_dim=10, lstm_dim=9, mlstm_dim=7, mlp_dim=6)
VOCAB = 25
# three expressions of different lengths (left-padded), the last two on image 1
TOKENS = torch.tensor([[0, 0, 0, 5, 6], [0, 4, 7, 8, 9], [0, 0, 11, 3, 12]])
IMAGE_OF = torch.tensor([0, 1, 1])


def make_fusion(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "lstm":
        return LSTMFusion(VOCAB, DIMS["visual_dim"], DIMS["embed_dim"], DIMS["lstm_dim"], DIMS["mlp_dim"]).double()
    return RMIFusion(VOCAB, DIMS["visual_dim"], DIMS["embed_dim"], DIMS["lstm_dim"], DIMS["mlstm_dim"]).double()


def make_visual(u: int = 2, size: int = 5) -> torch.Tensor:
    torch.manual_seed(1)
    return l2_normalize(torch.randn(u, DIMS["visual_dim"], size, size, dtype=torch.float64), 1)


def tiny_model(fusion: str, frozen: bool = True):
    torch.manual_seed(0)
    return build_model("tiny", fusion, VOCAB, DIMS, {"pretrained": False, "freeze_trunk": frozen, "weights_path": None})


def images(u: int = 2, size: int = 64) -> torch.Tensor:
    return torch.randint(0, 256, (u, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))


def test_spatial_features_2x2_by_hand():
    s = spatial_features(2, 2)
    # cell (h=0, w=1): x in [0, 1], y in [-1, 0]
    assert s[:, 0, 1].tolist() == [0.0, -1.0, 1.0, 0.0, 0.5, -0.5, 0.5, 0.5]
    assert s[:, 1, 0].tolist() == [-1.0, 0.0, 0.0, 1.0, -0.5, 0.5, 0.5, 0.5]
    assert s[:, 0, 0].tolist() == [-1.0, -1.0, 0.0, 0.0, -0.5, -0.5, 0.5, 0.5]


def test_spatial_features_non_square_match_official_loop():
    s = spatial_features(3, 5)
    assert s.shape == (8, 3, 5)
    assert torch.allclose(s, reference_spatial(3, 5), atol=1e-7)
    assert torch.all(s[6] == 1 / 5) and torch.all(s[7] == 1 / 3)


def test_l2_normalize_per_pixel_and_zero_safe():
    x = torch.randn(2, 6, 3, 4)
    x[1, :, 2, 3] = 0
    y = l2_normalize(x, 1)
    norms = y.norm(dim=1)
    assert torch.allclose(norms[0], torch.ones(3, 4), atol=1e-6)
    assert norms[1, 2, 3] == 0 and torch.isfinite(y).all()
    v = torch.tensor([3.0, 4.0])
    assert torch.allclose(l2_normalize(v, 0), torch.tensor([0.6, 0.8]))


def test_initialisation_follows_official_code():
    torch.manual_seed(0)
    fusion = RMIFusion(VOCAB, 12, 10, 9, 7)
    assert fusion.mlstm.weight.shape == (4 * 7, 12 + 10 + 9 + 8 + 7)
    assert fusion.language.weight.shape == (4 * 9, 10 + 9)
    assert fusion.language.embedding.weight.abs().max() <= 0.08
    for bias in (fusion.mlstm.bias, fusion.language.bias, fusion.classifier.bias):
        assert torch.all(bias == 0)
    limit = (6 / (fusion.mlstm.weight.shape[0] + fusion.mlstm.weight.shape[1])) ** 0.5  # Glorot
    assert fusion.mlstm.weight.abs().max() <= limit and fusion.mlstm.weight.abs().max() > 0.8 * limit


def test_word_lstm_matches_tf_basic_lstm_cell():
    torch.manual_seed(0)
    lstm = WordLSTM(VOCAB, 10, 9).double()
    with torch.no_grad():
        lstm.bias.normal_()  # so that a wrong gate order or forget bias would show
    emb, hidden = lstm(TOKENS)
    expected = naive_word_lstm(emb, lstm.weight, lstm.bias, TOKENS != 0)
    assert torch.allclose(hidden, expected, atol=1e-12)
    assert torch.all(hidden[0, :3] == 0)  # zero before the first word
    assert torch.equal(hidden[2, 1], hidden[2, 0])  # padded steps repeat the state


def test_mlstm_optimised_equals_naive_outputs_and_gradients():
    torch.manual_seed(0)
    mlstm = MultimodalLSTM(12, 19, 7).double()
    with torch.no_grad():
        mlstm.bias.normal_()
    visual = make_visual().requires_grad_()
    words = torch.randn(3, TOKENS.shape[1], 19, dtype=torch.float64, requires_grad=True)
    valid = TOKENS != 0

    fast = list(mlstm.steps(visual, IMAGE_OF, words, valid))
    slow = naive_mlstm(mlstm.weight, mlstm.bias, visual[IMAGE_OF], words, valid)
    for a, b in zip(fast, slow, strict=True):
        assert torch.allclose(a, b, atol=1e-12)

    probe = torch.randn_like(fast[-1])
    grads_fast = torch.autograd.grad((fast[-1] * probe).sum(), (mlstm.weight, mlstm.bias, visual, words))
    grads_slow = torch.autograd.grad((slow[-1] * probe).sum(), (mlstm.weight, mlstm.bias, visual, words))
    for a, b in zip(grads_fast, grads_slow, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert grads_fast[0].abs().sum() > 0


def test_rmi_fusion_equals_naive_pipeline():
    fusion = make_fusion("rmi")
    visual = make_visual()
    emb, hidden = fusion.language(TOKENS)
    words = torch.cat([emb, hidden / hidden.norm(dim=-1, keepdim=True).clamp_min(1e-6)], -1)
    h = naive_mlstm(fusion.mlstm.weight, fusion.mlstm.bias, visual[IMAGE_OF], words, TOKENS != 0)[-1]
    expected = fusion.classifier(torch.relu(0.5 * (torch.log(1.001 + h) - torch.log(1.001 - h))))
    assert torch.allclose(fusion(TOKENS, visual, IMAGE_OF), expected, atol=1e-12)


def test_baseline_head_equals_conv_on_concat():
    fusion = make_fusion("lstm")
    visual = make_visual()
    _, hidden = fusion.language(TOKENS)
    expected = naive_baseline_head(fusion.mlp, fusion.classifier, hidden[:, -1], visual[IMAGE_OF])
    assert torch.allclose(fusion(TOKENS, visual, IMAGE_OF), expected, atol=1e-12)


def test_squash_is_atanh_like():
    h = torch.tensor([-0.5, 0.0, 0.9], dtype=torch.float64)
    assert torch.allclose(squash(h), 0.5 * torch.log((1.001 + h) / (1.001 - h)))
    assert torch.isfinite(squash(torch.tensor([1.0, -1.0]))).all()


@pytest.mark.parametrize("kind", ["lstm", "rmi"])
def test_extra_left_padding_changes_nothing(kind):
    fusion = make_fusion(kind)
    visual = make_visual()
    padded = torch.cat([torch.zeros(3, 4, dtype=torch.long), TOKENS], 1)
    assert torch.equal(fusion(TOKENS, visual, IMAGE_OF), fusion(padded, visual, IMAGE_OF))


@pytest.mark.parametrize("kind", ["lstm", "rmi"])
def test_batch_equals_one_by_one(kind):
    model = tiny_model(kind).eval()
    imgs = images()
    with torch.no_grad():
        batch = model(TOKENS, IMAGE_OF, images=imgs)
        for b in range(len(TOKENS)):
            alone = model(TOKENS[b : b + 1], torch.tensor([0]), images=imgs[IMAGE_OF[b] : IMAGE_OF[b] + 1])
            assert torch.allclose(batch[b], alone[0], atol=1e-5), b


@pytest.mark.parametrize("kind", ["lstm", "rmi"])
def test_forward_steps_last_step_is_forward(kind):
    model = tiny_model(kind).eval()
    imgs = images()
    with torch.no_grad():
        steps = model.forward_steps(TOKENS, IMAGE_OF, images=imgs)
        final = model(TOKENS, IMAGE_OF, images=imgs)
    assert steps["logits"].shape == (3, TOKENS.shape[1], 1, 8, 8)
    assert torch.allclose(steps["logits"][:, -1], final, atol=1e-5)
    # padded steps repeat the previous prediction; a real word changes it
    assert torch.equal(steps["logits"][2, 0], steps["logits"][2, 1])
    assert not torch.allclose(steps["logits"][2, 2], steps["logits"][2, 3])
    if kind == "rmi":
        assert steps["response"].shape == (3, TOKENS.shape[1], 8, 8)
        assert torch.all(steps["response"][0, :3] == 0)  # zero state before the first word
    else:
        assert "response" not in steps


def test_trunk_runs_once_per_image():
    model = tiny_model("rmi")
    seen = []
    model.trunk.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[0]))
    model(TOKENS, IMAGE_OF, images=images())
    assert seen == [2]


def test_trunk_features_give_the_same_logits():
    model = tiny_model("lstm").eval()
    imgs = images()
    with torch.no_grad():
        feats = model.trunk(imgs)
        assert torch.allclose(
            model(TOKENS, IMAGE_OF, trunk_features=feats.half()), model(TOKENS, IMAGE_OF, images=imgs), atol=1e-2
        )
        assert torch.equal(model(TOKENS, IMAGE_OF, trunk_features=feats), model(TOKENS, IMAGE_OF, images=imgs))
    with pytest.raises(ValueError):
        model(TOKENS, IMAGE_OF)
    with pytest.raises(TypeError):
        model(TOKENS, IMAGE_OF, images=imgs.float())


def test_all_padding_expression_gives_zero_state_prediction():
    model = tiny_model("rmi").eval()
    tokens = torch.zeros(1, 5, dtype=torch.long)
    with torch.no_grad():
        out = model(tokens, torch.tensor([0]), images=images(1))
    assert torch.allclose(out, model.fusion.classifier.bias.view(1, 1, 1, 1).expand_as(out))


@pytest.mark.parametrize("kind", ["lstm", "rmi"])
def test_runs_under_bf16_autocast(kind):
    model = tiny_model(kind, frozen=False).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(TOKENS, IMAGE_OF, images=images())
        steps = model.forward_steps(TOKENS, IMAGE_OF, images=images())
    logits.float().mean().backward()
    assert torch.isfinite(logits.float()).all() and torch.isfinite(steps["logits"].float()).all()
    assert model.fusion.classifier.weight.grad is not None


def test_state_dict_round_trip_into_a_fresh_model():
    model = tiny_model("rmi").eval()
    torch.manual_seed(5)
    fresh = build_model("tiny", "rmi", VOCAB, DIMS, {"pretrained": False, "freeze_trunk": True}).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(fresh(TOKENS, IMAGE_OF, images=images()), model(TOKENS, IMAGE_OF, images=images()))

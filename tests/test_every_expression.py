"""Every expression of an evaluated split is predicted and scored, even one without any token."""

from __future__ import annotations

import logging

import pytest
import torch

from builders import make_records, train_tiny
from rmi.data.cache import CacheReader, build_cache
from rmi.inference import predict_split
from rmi.metrics import evaluate_split
from rmi.model_file import ModelInfo, save_model
from rmi.models.segmenter import build_model
from rmi.text import Vocab

S = 32
DIMS = {k: 8 for k in ("visual_dim", "embed_dim", "lstm_dim", "mlstm_dim", "mlp_dim")}
BACKBONE = {"pretrained": False, "freeze_trunk": True, "weights_path": None, "widths": [4, 4, 8]}


def tiny_model(fusion: str, vocab: Vocab):
    torch.manual_seed(0)
    return build_model("tiny", fusion, len(vocab), DIMS, BACKBONE).eval()


@pytest.mark.parametrize("fusion", ["lstm", "rmi"])
def test_all_pad_rows_and_batches_predict_from_the_zero_state(fusion):
    model = tiny_model(fusion, Vocab(["<pad>", "<go>", "<eos>", "<unk>", "a", "b"]))
    torch.nn.init.constant_(model.fusion.classifier.bias, 0.25)
    images = torch.randint(0, 256, (2, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    tokens = torch.tensor([[0, 0, 4, 5], [0, 0, 0, 0], [0, 0, 0, 5]])
    image_of = torch.tensor([0, 1, 1])
    with torch.no_grad():
        mixed = model(tokens, image_of, images=images)
        alone = model(tokens[1:2], torch.tensor([0]), images=images[1:2])  # an all-pad batch
        steps = model.forward_steps(tokens[1:2], torch.tensor([0]), images=images[1:2])["logits"]
        other = model(tokens[1:2], torch.tensor([0]), images=images[:1])
    assert torch.isfinite(mixed).all() and torch.allclose(mixed[1], alone[0], atol=1e-6)
    assert torch.allclose(steps[0, 0], alone[0], atol=1e-6)  # the zero state: no step changes it
    if fusion == "rmi":  # a zero mLSTM state leaves the classifier's bias, whatever the image
        assert torch.equal(alone, torch.full_like(alone, 0.25)) and torch.equal(other, alone)
    else:  # the baseline's head still sees the image
        assert not torch.allclose(other, alone)


@pytest.mark.parametrize("fusion", ["lstm", "rmi"])
def test_expression_without_tokens_is_predicted_and_scored(tmp_path, fusion):
    records = make_records(tmp_path / "images", split="val")
    vocab = Vocab.build(r.sentence for r in records)
    records[0].sentence, records[3].sentence = "", " . "
    build_cache(records, vocab, tmp_path / "val.h5", image_size=S, split="val", train=False)
    info = ModelInfo("tiny", fusion, DIMS, BACKBONE, vocab, S, 20, {"train": {"amp": False}}, 0)
    save_model(tmp_path / "model.pt", tiny_model(fusion, vocab), info)
    predict_split(tmp_path / "model.pt", tmp_path / "val.h5", tmp_path / "pred.h5", batch_size=4)
    frame = evaluate_split(tmp_path / "pred.h5", tmp_path / "val.h5")
    assert list(frame["sent_id"]) == [r.sent_id for r in records]
    empty = frame[frame["sent_id"].isin([records[0].sent_id, records[3].sent_id])]
    assert list(empty["n_tokens"]) == [0, 0] and (empty["union"] > 0).all()


def test_training_log_reports_the_skips(tmp_path, caplog):
    records = make_records(tmp_path / "images")
    records[0].sentence = "?!"
    vocab = Vocab.build(r.sentence for r in records)
    caches = {"train": tmp_path / "train.h5", "vocab": tmp_path / "vocab.txt"}
    vocab.save(caches["vocab"])
    build_cache(records, vocab, caches["train"], image_size=64, split="train", train=True)
    assert len(CacheReader(caches["train"])) == len(records) - 1
    with caplog.at_level(logging.INFO, logger="rmi.train"):
        train_tiny(tmp_path, caches, "lstm", steps=1)
    assert "skipped when cached, per reason: {'empty expression': 1}" in caplog.text

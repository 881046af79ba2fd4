import json
import pickle

import h5py
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from builders import make_records
from rmi.data.cache import CacheReader, build_cache, load_image
from rmi.data.dataset import ReferDataset, StepBatchSampler, identity_collate, sequential_batches
from rmi.data.transforms import cell_grid, resize_and_pad_image, resize_and_pad_mask
from rmi.errors import InputError
from rmi.text import Vocab

S = 32


@pytest.fixture
def built(tmp_path):
    records = make_records(tmp_path / "images")
    vocab = Vocab.build(r.sentence for r in records)
    out = tmp_path / "cache" / "train.h5"
    attrs = build_cache(records, vocab, out, image_size=S, max_tokens=6, dataset="toy", split="train", train=True)
    return records, vocab, out, attrs


def test_layout_and_round_trip(built):
    records, vocab, out, attrs = built
    assert attrs["n_expressions"] == len(records) == 10 and attrs["n_skipped"] == 0
    reader = CacheReader(out)
    assert reader.n_images == 5 and len(reader) == 10
    with h5py.File(out) as f:
        assert f["images"].shape == (5, S, S, 3) and f["images"].chunks == (1, S, S, 3)
        assert f["ref_masks"].shape == (5, S, S) and f["tokens"].shape == (10, 6)
        assert f.attrs["vocab_sha1"] == vocab.digest()
    for i, rec in enumerate(records):
        assert reader.sent_id[i] == rec.sent_id and reader.ref_id[reader.sent_ref[i]] == rec.ref_id
        truth = rec.mask.decode()
        assert np.array_equal(reader.original_mask(i), truth)  # RLE round trip, original size
        assert np.array_equal(reader.padded_mask(i), resize_and_pad_mask(truth, S))
        img = load_image(rec.image_path)
        assert reader.original_size(i) == img.shape[:2]
        assert np.array_equal(reader.image(reader.image_index[i]), resize_and_pad_image(img, S))
        assert np.array_equal(reader.tokens[i], vocab.encode(rec.sentence, 6))
        assert reader.sentence(i) == rec.sentence
    # "small dark box at the bottom right corner" has 8 tokens: n_tokens is capped at T
    assert reader.n_tokens.max() == 6 and reader.n_tokens.min() >= 2
    assert not list(out.parent.glob(".*tmp*"))


def test_skips_are_counted_and_errors_name_the_file(tmp_path):
    records = make_records(tmp_path / "images")
    records[0].sentence = "  "
    records[1].sentence = "?!,"
    records[2].sentence = "Ünïcode wörds ok"
    vocab = Vocab.build(r.sentence for r in records)
    attrs = build_cache(records, vocab, tmp_path / "a.h5", image_size=S, train=True)
    assert attrs["n_skipped"] == 2 and json.loads(attrs["skipped"]) == {"empty expression": 2}
    assert len(CacheReader(tmp_path / "a.h5")) == 8

    with pytest.raises(InputError, match="split has no expressions"):
        build_cache([], vocab, tmp_path / "b.h5", image_size=S, dataset="toy", split="val", train=False)

    bad = records[4].image_path
    bad.write_bytes(bad.read_bytes()[:200])  # truncated JPEG
    with pytest.raises(InputError) as err:
        build_cache(records, vocab, tmp_path / "c.h5", image_size=S, train=True)
    assert str(bad) in str(err.value) and "corrupt or truncated" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "c.h5").exists() and not list(tmp_path.glob(".c.h5*"))


def test_eval_split_keeps_every_expression(tmp_path):
    records = make_records(tmp_path / "images", split="val")
    vocab = Vocab.build(r.sentence for r in records[4:])
    records[0].sentence, records[1].sentence, records[2].sentence = "  ", "?!,", "."
    attrs = build_cache(records, vocab, tmp_path / "val.h5", image_size=S, split="val", train=False)
    reader = CacheReader(tmp_path / "val.h5")
    assert attrs["role"] == "eval" and attrs["n_skipped"] == 0 and json.loads(attrs["skipped"]) == {}
    assert list(reader.sent_id) == [r.sent_id for r in records]
    # no token at all: all <pad>, n_tokens 0; punctuation is a token, as the official tokenizer keeps it
    assert reader.n_tokens[:3].tolist() == [0, 1, 0]
    assert not reader.tokens[[0, 2]].any() and reader.tokens[1].tolist() == [0] * 19 + [vocab.index["<unk>"]]


def test_dataset_batches_hold_each_image_once(built):
    _, _, out, _ = built
    ds = ReferDataset(out)
    batch = ds.__getitems__([0, 1, 4, 2])
    assert batch["images"].shape == (3, 3, S, S) and batch["images"].dtype == torch.uint8
    assert batch["image_of"].tolist() == [0, 0, 2, 1]
    assert batch["tokens"].shape == (4, 6) and batch["target"].shape == (4, 1, S // 8, S // 8)
    reader = CacheReader(out)
    assert torch.equal(batch["target"][2, 0], torch.from_numpy(cell_grid(reader.padded_mask(4)).astype(np.float32)))
    assert torch.equal(batch["images"][2].permute(1, 2, 0), torch.from_numpy(reader.image(reader.image_index[4])))


def test_dataset_in_worker_processes(built):
    _, _, out, _ = built
    ds = ReferDataset(out)
    assert ds.cache.file  # open a handle in the parent: workers must not reuse it
    batches = sequential_batches(ds.cache.image_index, 3)
    loader = DataLoader(ds, batch_sampler=batches, collate_fn=identity_collate, num_workers=2)
    rows = torch.cat([b["rows"] for b in loader]).tolist()
    assert sorted(rows) == list(range(10))
    pickle.loads(pickle.dumps(ds))  # picklable for spawn start methods too


def test_step_sampler_is_deterministic_resumable_and_grouped():
    image_index = np.repeat(np.arange(7), [3, 1, 2, 4, 2, 3, 1])  # 16 expressions
    full = StepBatchSampler(image_index, 4, seed=5)
    stream = iter(full)
    first = [next(stream) for _ in range(10)]
    assert full.batches_per_epoch == 4
    # every epoch visits each expression exactly once
    for e in range(2):
        assert sorted(sum(first[4 * e : 4 * e + 4], [])) == list(range(16))
    # image groups stay together: consecutive rows of an epoch share images block-wise
    order = full.epoch_order(0)
    runs = np.flatnonzero(np.diff(image_index[order])) + 1
    assert len(runs) == 6  # 7 images -> 6 boundaries
    resumed = StepBatchSampler(image_index, 4, seed=5, start_step=6)
    assert [next(iter(resumed))] == first[6:7]
    it = iter(resumed)
    assert [next(it) for _ in range(4)] == first[6:10]
    other = iter(StepBatchSampler(image_index, 4, seed=6))
    assert [next(other) for _ in range(4)] != first[:4]
    flat = StepBatchSampler(image_index, 4, seed=5, group_by_image=False)
    assert sorted(flat.epoch_order(3).tolist()) == list(range(16))


def test_length_buckets_group_similar_lengths(rng):
    image_index = np.repeat(np.arange(100), 3)  # 300 expressions
    lengths = rng.integers(1, 21, size=300)
    bucketed = StepBatchSampler(image_index, 8, seed=1, group_by_image=False, lengths=lengths)
    uniform = StepBatchSampler(image_index, 8, seed=1, group_by_image=False)
    assert bucketed.batches_per_epoch == 38
    stream = iter(bucketed)
    epoch = [next(stream) for _ in range(38)]
    assert sorted(sum(epoch, [])) == list(range(300))  # each expression once per epoch
    assert len(epoch[-1]) == 300 - 37 * 8  # the short batch stays last

    def steps_run(batches):  # the model runs max(length) steps per batch
        return sum(int(lengths[b].max()) for b in batches)

    plain = iter(uniform)
    assert steps_run(epoch) < 0.7 * steps_run([next(plain) for _ in range(38)])
    resumed = StepBatchSampler(image_index, 8, seed=1, group_by_image=False, start_step=39, lengths=lengths)
    assert next(iter(resumed)) == [next(stream) for _ in range(2)][-1]
    with pytest.raises(ValueError, match="exclude each other"):
        StepBatchSampler(image_index, 8, seed=1, group_by_image=True, lengths=lengths)


def test_image_errors(tmp_path):
    with pytest.raises(InputError, match="image file is missing"):
        load_image(tmp_path / "nope.jpg")
    (tmp_path / "x.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="x.jpg: corrupt or truncated image"):
        load_image(tmp_path / "x.jpg")
    Image.fromarray(np.zeros((4, 5), np.uint8)).save(tmp_path / "g.jpg")
    assert load_image(tmp_path / "g.jpg").shape == (4, 5, 3)

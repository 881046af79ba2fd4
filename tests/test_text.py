import json
from pathlib import Path

import numpy as np
import pytest

from rmi.errors import InputError
from rmi.text import Vocab, has_word, tokenize

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "referit"


@pytest.mark.parametrize(
    "sentence, tokens",
    [
        ("The man, on the LEFT.", ["the", "man", ",", "on", "the", "left"]),
        ("bush/tree on left bottom corner", ["bush", "/", "tree", "on", "left", "bottom", "corner"]),
        ("it's a dog .", ["it", "'", "s", "a", "dog"]),
        ("  guy in  red\tshirt  ", ["guy", "in", "red", "shirt"]),
        ("sky...", ["sky", "..."]),
        ("Café au lait", ["café", "au", "lait"]),
        ("2nd from left", ["2nd", "from", "left"]),
        ("", []),
        (".", []),
        ("!!", ["!!"]),
    ],
)
def test_tokenize_hand_checked(sentence, tokens):
    assert tokenize(sentence) == tokens


def test_has_word():
    assert has_word(["red"]) and not has_word(["!!", ","]) and not has_word([])


def test_vocab_order_encode_and_roundtrip(tmp_path):
    vocab = Vocab.build(["red box", "red circle", "blue box", "box"], min_count=1)
    assert vocab.words[:4] == ["<pad>", "<go>", "<eos>", "<unk>"]
    assert vocab.words[4:] == ["box", "red", "blue", "circle"]  # by count, ties alphabetical
    ids = vocab.encode("Red zebra box")
    assert ids.shape == (20,) and ids.dtype == np.int64
    assert ids[:17].tolist() == [0] * 17 and ids[17:].tolist() == [5, 3, 4]
    long = vocab.encode(" ".join(["box"] * 25))
    assert (long == 4).all()  # cut to the first 20 tokens, no padding
    assert vocab.decode(ids) == ["red", "<unk>", "box"]
    assert vocab.n_unknown(tokenize("red zebra gnu")) == 2
    vocab.save(tmp_path / "vocab.txt")
    again = Vocab.load(tmp_path / "vocab.txt")
    assert again == vocab and again.digest() == vocab.digest()
    assert Vocab.build(["box box red"], min_count=2).words[4:] == ["box"]


def test_vocab_load_errors(tmp_path):
    bad = tmp_path / "vocab.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(InputError, match="vocab.txt: a vocabulary must start with"):
        Vocab.load(bad)
    with pytest.raises(InputError, match="missing.txt: cannot read vocabulary"):
        Vocab.load(tmp_path / "missing.txt")


@pytest.mark.skipif(not SHARED.is_dir(), reason="shared/ (real ReferIt split files) is not beside the checkout")
def test_referit_test_split_length_shares():
    """Paper Fig. 4: over 25% of ReferIt test expressions are one word long."""
    queries = json.loads((SHARED / "referit_query_test.json").read_text())
    lengths = np.array([min(len(tokenize(s)), 20) for sents in queries.values() for s in sents])
    assert len(lengths) == 60105
    shares = [np.mean((lengths >= lo) & (lengths <= hi)) for lo, hi in [(1, 1), (2, 2), (3, 4), (5, 20)]]
    assert 0.25 < shares[0] < 0.27
    assert [round(100 * s, 2) for s in shares] == [25.93, 16.42, 30.85, 26.79]

"""Reading corpora: the hub layout through datasets.load_dataset, plain text, and errors."""

from __future__ import annotations

import json

import pytest

from translate.config import DataConfig
from translate.data import DataError, load_corpus, read_lines
from translate.tokenizer import train_tokenizer

from .conftest import reversal_pairs, reversal_tokenizer, write_text_corpus


def write_hub_layout(folder, splits):
    folder.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        with open(folder / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for en, de in pairs:
                f.write(json.dumps({"en": en, "de": de}) + "\n")


PAIRS = {
    "train": [("a dog", "ein Hund"), ("a cat", "eine Katze")],
    "val": [("a cow", "eine Kuh")],
    "test": [("a bird", "ein Vogel"), ("two", "zwei"), ("ü", "ö")],
}


def test_a_local_folder_in_the_hub_layout_reads_through_load_dataset(tmp_path):
    write_hub_layout(tmp_path / "m30k", PAIRS)
    corpus = load_corpus(DataConfig(path=str(tmp_path / "m30k")))
    assert corpus.train.src == ["a dog", "a cat"] and corpus.train.tgt == ["ein Hund", "eine Katze"]
    assert corpus.valid.src == ["a cow"]  # val.jsonl is the validation split, as on the hub
    assert corpus.test.tgt == ["ein Vogel", "zwei", "ö"]
    reverse = load_corpus(DataConfig(path=str(tmp_path / "m30k"), src_lang="de", tgt_lang="en"))
    assert reverse.train.src == ["ein Hund", "eine Katze"]


def test_plain_text_files_and_a_language_only_there(tmp_path):
    folder = tmp_path / "corpus"
    write_hub_layout(folder, PAIRS)
    write_text_corpus(
        folder, {"train": [("un chien", "ein Hund")], "val": [("x", "y")], "test2016": [("z", "w")]}, src="fr", tgt="de"
    )
    corpus = load_corpus(DataConfig(path=str(folder), src_lang="fr", tgt_lang="de"))
    assert corpus.train.src == ["un chien"] and corpus.test.tgt == ["w"]


def test_files_of_different_lengths_are_named_with_their_counts(tmp_path):
    folder = write_text_corpus(
        tmp_path / "c", {"train": reversal_pairs(5, 0), "val": reversal_pairs(2, 0), "test": reversal_pairs(2, 0)}
    )
    (folder / "train.yy").write_text("only\none\nthree\n", encoding="utf-8")
    cfg = DataConfig(path=str(folder), format="text", src_lang="xx", tgt_lang="yy", test_prefix="test")
    with pytest.raises(DataError, match=r"train\.xx has 5 lines but .*train\.yy has 3"):
        load_corpus(cfg)


def test_undecodable_bytes_name_file_and_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(DataError, match=r"bad\.txt: line 3: invalid UTF-8 at byte 4"):
        read_lines(path)


def test_an_unreachable_hub_says_how_to_use_local_files(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError, match="data.path"):
        load_corpus(DataConfig(hub_id="no-such-user/no-such-dataset-xyz"))


def test_sentencepiece_round_trips_text_with_fixed_special_ids():
    text = [s for pair in reversal_pairs(300, 5) for s in pair]
    tok = train_tokenizer(text, vocab_size=320, byte_fallback=True)
    ids = tok.encode(["a b c", "L K"])
    assert all(i > 3 for seq in ids for i in seq)
    assert tok.decode(ids) == ["a b c", "L K"]
    assert tok.decode(tok.encode(["a 🙂 b"])) == ["a 🙂 b"]  # byte fallback: nothing unknown is lost


def test_a_vocabulary_too_small_for_the_characters_says_what_to_raise():
    with pytest.raises(ValueError, match="raise data.vocab_size"):
        train_tokenizer(["abcdefghij klmnop"] * 10, vocab_size=8, byte_fallback=False)


def test_empty_and_overlong_pairs_are_dropped_with_a_count(caplog):
    from translate.data import Split, tokenize_pairs

    tok = reversal_tokenizer(200, 5)
    split = Split(["a b", "", "c d", "a " * 50, "e"], ["B A", "X", "", "A", "E"])
    with caplog.at_level("INFO"):
        ex = tokenize_pairs(split, tok, max_len=20)
    assert tok.decode(ex.src) == ["a b", "e"] and tok.decode(ex.tgt) == ["B A", "E"]
    assert "dropped 3 of 5 pairs: 2 empty, 1 over 20 subwords" in caplog.text

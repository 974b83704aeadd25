"""Tests of the word-level tokenizer: splitting, special tokens, rare words, and the save/load round trip."""

from transformers import AutoTokenizer

from rm_hf.tokenization import build_word_tokenizer

TEXTS = ["Zoe went to the Kitchen.", "Max took the cup.", "Where is Zoe?", "Zoe dropped the cup, then left."]


def test_splits_words_and_punctuation_lowercased():
    tokenizer = build_word_tokenizer(TEXTS)

    assert tokenizer.tokenize("Zoe went to the KITCHEN.") == ["zoe", "went", "to", "the", "kitchen", "."]
    assert tokenizer.tokenize("cup,then?") == ["cup", ",", "then", "?"]
    # No special tokens are added: callers place [CLS] and [SEP] themselves.
    assert tokenizer("where is zoe")["input_ids"] == tokenizer.convert_tokens_to_ids(["where", "is", "zoe"])


def test_special_tokens():
    tokenizer = build_word_tokenizer(TEXTS)

    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id] == [0, 1, 2]
    assert [tokenizer.sep_token_id, tokenizer.mask_token_id] == [3, 4]
    assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3, 4]) == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert tokenizer("zebra")["input_ids"] == [1]
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    words = "zoe went to the kitchen . max took cup where is ? dropped , then left".split()
    assert len(tokenizer) == 5 + len(words)


def test_min_frequency_maps_rare_words_to_unk():
    tokenizer = build_word_tokenizer(TEXTS, min_frequency=2)

    assert tokenizer.convert_ids_to_tokens(tokenizer("Zoe took the cup")["input_ids"]) == [
        "zoe",
        "[UNK]",
        "the",
        "cup",
    ]
    assert tokenizer.cls_token_id == 2  # special tokens stay whatever their frequency


def test_round_trip_through_auto_tokenizer(tmp_path):
    tokenizer = build_word_tokenizer(TEXTS)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)

    texts = [*TEXTS, "An unseen sentence, Zoe!", "[CLS] where is zoe ? [SEP]"]
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert loaded(texts, padding=True)["attention_mask"] == tokenizer(texts, padding=True)["attention_mask"]
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert loaded.all_special_tokens == tokenizer.all_special_tokens
    assert loaded.model_input_names == ["input_ids", "attention_mask"]
    assert loaded("[CLS] zoe [SEP]")["input_ids"] == [2, tokenizer.convert_tokens_to_ids("zoe"), 3]

"""A word-level tokenizer for bAbI-style text, trained with the `tokenizers` library.

bAbI stories use a few hundred words, so one id per lowercased word (punctuation split off) is all a model
needs, and it saves and loads like any Hugging Face tokenizer. The tokenizer itself adds no special tokens: the
layout the models read (each story sentence followed by [SEP], a question as `[CLS] question [SEP]`) is
`encode_story(tokenizer, story, questions)`, re-exported here from `pipeline_rehearsal_memory`, the one place
that training (`rm_hf.qa_data`) and the pipelines encode with. A story string is split into sentences by
`split_sentences`.

Loading a saved tokenizer without rm_hf: `AutoTokenizer.from_pretrained(path, trust_remote_code=True)` or
`PreTrainedTokenizerFast.from_pretrained(path)`. transformers 5's `AutoTokenizer` always builds the folder's model
config through `AutoConfig` first, and a checkpoint's config is remote code, so without the flag (and without rm_hf
imported) it asks "run custom code? [y/N]" whatever the tokenizer files say.
"""

from collections.abc import Iterable

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .pipeline_rehearsal_memory import encode_story, split_sentences

__all__ = ["SPECIAL_TOKENS", "build_word_tokenizer", "encode_story", "split_sentences"]

PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
# Trained first, in this order, so [PAD] gets id 0, which `QACollator` pads with by default.
SPECIAL_TOKENS = [PAD_TOKEN, UNK_TOKEN, CLS_TOKEN, SEP_TOKEN, MASK_TOKEN]


def build_word_tokenizer(texts: Iterable[str], min_frequency: int = 1) -> PreTrainedTokenizerFast:
    """Train a lowercasing word-level tokenizer on `texts`; words seen fewer than `min_frequency` times map to [UNK].

    Words are split on whitespace and every punctuation character ("kitchen." -> "kitchen", "."). The result
    adds no special tokens by itself: callers place [CLS] and [SEP] where they need them.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL_TOKENS, min_frequency=min_frequency)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        cls_token=CLS_TOKEN,
        sep_token=SEP_TOKEN,
        mask_token=MASK_TOKEN,
        model_input_names=["input_ids", "attention_mask"],
    )

"""The question-answering head: save/load, Auto classes (installed and remote code), many questions per
memory, streaming with interleaved questions, the reader's linear reading, and input checks."""

import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import AutoModel, AutoModelForQuestionAnswering

from rm_hf import RehearsalMemoryForQuestionAnswering, RehearsalMemoryModel
from rm_hf.layers_rehearsal_memory import RehearsalMemoryAttention
from tests.conftest import remote_memory, tiny_config

LABELS = {i: f"answer{i}" for i in range(5)}


def qa_model(**overrides):
    return RehearsalMemoryForQuestionAnswering(tiny_config(id2label=LABELS, rehearsal_num_heads=2, **overrides)).eval()


def story_and_questions(batch=3, length=30):
    ids = torch.randint(0, 50, (batch, length))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[1, 11:] = 0
    questions = torch.randint(0, 50, (batch, 6))
    question_mask = torch.ones_like(questions)
    question_mask[0, 4:] = 0
    return ids, mask, questions, question_mask


def test_save_load_and_auto_classes(tmp_path):
    model = qa_model()
    ids, mask, questions, question_mask = story_and_questions()
    expected = model(ids, mask, questions, question_mask).logits
    model.save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForQuestionAnswering"].endswith("RehearsalMemoryForQuestionAnswering")
    assert auto_map["AutoModel"].endswith(".RehearsalMemoryModel")

    loaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert type(loaded) is RehearsalMemoryForQuestionAnswering
    assert loaded.config.id2label == LABELS
    torch.testing.assert_close(loaded(ids, mask, questions, question_mask).logits, expected)

    base = AutoModel.from_pretrained(tmp_path).eval()  # the head checkpoint loads as its base
    assert type(base) is RehearsalMemoryModel
    torch.testing.assert_close(
        base(ids, attention_mask=mask).memory, model.rehearsal_memory(ids, attention_mask=mask).memory
    )


def test_head_checkpoint_loads_as_base_through_remote_code(tmp_path):
    model = qa_model()
    model.save_pretrained(tmp_path / "checkpoint")
    ids = torch.randint(0, 50, (2, 17))
    name, memory = remote_memory(tmp_path / "checkpoint", ids, tmp_path)
    assert name == "RehearsalMemoryModel"
    torch.testing.assert_close(memory, model.rehearsal_memory(ids).memory)


def test_many_questions_against_one_memory_match_the_forward_path():
    model = qa_model()
    ids, mask, questions, question_mask = story_and_questions()
    per_question = model(ids, mask, questions, question_mask).logits
    memory = model.rehearsal_memory(ids, attention_mask=mask).memory
    torch.testing.assert_close(model.answer(memory, questions, question_mask), per_question)
    # five questions about story 2, answered from its one stored memory
    many = torch.randint(0, 50, (5, 6))
    from_memory = model.answer(memory[2:3].expand(5, -1, -1), many)
    reread = model(ids[2:3].expand(5, -1), mask[2:3].expand(5, -1), many).logits
    torch.testing.assert_close(from_memory, reread)


def test_streaming_answers_interleaved_questions():
    # bAbI style: questions arrive in the middle of a story; write up to each one, answer, keep writing
    model = qa_model()
    story = torch.randint(0, 50, (1, 40))
    question = torch.randint(0, 50, (1, 6))
    memory = model.rehearsal_memory.init_memory(1)
    for start, end in ((0, 16), (16, 32), (32, 40)):
        memory = model.rehearsal_memory.write(memory, story[:, start:end])
        streamed = model.answer(memory, question)
        torch.testing.assert_close(streamed, model(story[:, :end], question_input_ids=question).logits)


def test_qa_input_errors():
    model = qa_model()
    ids, mask, questions, _ = story_and_questions()
    with pytest.raises(ValueError, match="differ in size"):
        model(ids, mask, questions[:2])
    with pytest.raises(ValueError, match=r"labels.*\[0, 5\)"):
        model(ids, mask, questions, labels=torch.tensor([0, 1, 5]))
    with pytest.raises(ValueError, match="question_input_ids"):
        model(ids, mask)
    with pytest.raises(
        ValueError, match=r"`memory` must be torch.float32 of shape .* = \(3, 4, 32\), got .*\(2, 4, 32\)"
    ):
        model.answer(torch.zeros(2, 4, 32), questions)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"question_input_ids": torch.full((3, 6), 50)}, r"`question_input_ids` must lie in \[0, 50\)"),
        ({"question_input_ids": torch.full((3, 6), -1)}, r"`question_input_ids` must lie in \[0, 50\)"),
        ({"question_input_ids": torch.zeros(3, 65, dtype=torch.long)}, "65 tokens; the encoder reads at most 64"),
        ({"question_input_ids": torch.zeros(3, 0, dtype=torch.long)}, "at least one token"),
        ({"question_attention_mask": torch.ones(3, 5)}, r"`question_attention_mask` shape \(3, 5\)"),
        ({"labels": torch.tensor([[0], [1], [2]])}, r"shape \(batch,\) = \(3,\)"),
        ({"labels": torch.tensor([0.0, 1.0, 2.0])}, "integer answer ids"),
        ({"labels": torch.tensor([0, -1, 2])}, r"`labels` must lie in \[0, 5\) \(config.id2label\)"),
        *[
            (
                {"question_input_ids": torch.ones(3, 6, dtype=dtype)},
                rf"`question_input_ids` must be integer ids .*{dtype}",
            )
            for dtype in (torch.float32, torch.int16, torch.uint8, torch.bool)
        ],
    ],
)
def test_bad_questions_and_labels_get_clear_errors(changes, message):
    ids, mask, questions, question_mask = story_and_questions()
    inputs = {"input_ids": ids, "attention_mask": mask, "question_input_ids": questions}
    inputs |= {"question_attention_mask": question_mask, "labels": torch.tensor([0, 1, 2]), **changes}
    with pytest.raises(ValueError, match=message):
        qa_model()(**inputs)
    if "labels" not in changes:  # answering stored memories checks the question too
        memory = torch.zeros(3, 4, 32)
        with pytest.raises(ValueError, match=message):
            qa_model().answer(memory, inputs["question_input_ids"], inputs["question_attention_mask"])


def sentence_story(batch=3, sentences=7, width=5):
    ids = torch.randint(1, 50, (batch, sentences, width))
    ids[:, :, 3:] = 0  # padded words inside each sentence
    ids[1, 4:] = 0  # the second story has only 4 sentences
    return ids, (ids != 0).any(-1).long()


@pytest.mark.parametrize("link", [False, True])
def test_sentence_items_stream_answer_and_reload(tmp_path, link):
    model = qa_model(story_items="sentences", segment_length=2, link_previous_item=link)
    if link:  # a learnt link (it starts at zero, adding nothing)
        torch.nn.init.normal_(model.rehearsal_memory.previous_item_link.weight, std=0.3)
    assert model.config.input_feature_dim == model.config.encoder_config.hidden_size
    ids, mask = sentence_story()
    _, _, questions, question_mask = story_and_questions()
    with torch.no_grad():
        logits = model(ids, mask, questions, question_mask).logits
        # the same story streamed two segments at a time, then answered from memory alone
        memory = model.rehearsal_memory.init_memory(3)
        for start in range(0, ids.shape[1], 4):
            features = model.embed_sentences(ids[:, start : start + 4])
            memory = model.rehearsal_memory.write(
                memory, input_features=features, attention_mask=mask[:, start : start + 4]
            )
        streamed = model.answer(memory, questions, question_mask)
    torch.testing.assert_close(streamed, logits)
    # padded words add nothing: a story padded to wider sentences reads the same
    wider = torch.cat([ids, torch.zeros(3, ids.shape[1], 4, dtype=torch.long)], dim=-1)
    torch.testing.assert_close(model(wider, mask, questions, question_mask).logits, logits)

    model.save_pretrained(tmp_path)
    loaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(ids, mask, questions, question_mask).logits, logits)


@pytest.mark.parametrize("sampler_mode", ["uniform", "teacher", "external"])
def test_sentence_items_train_with_rehearsal(sampler_mode):
    model = qa_model(story_items="sentences", segment_length=2, rehearsal_fragment_length=2, sampler_mode=sampler_mode)
    ids, mask = sentence_story()
    _, _, questions, question_mask = story_and_questions()
    out = model.train()(ids, mask, questions, question_mask, labels=torch.tensor([0, 1, 2]),
                        fragment_weights=mask.float())  # fmt: skip
    terms = [out.loss, out.recollection_loss, out.familiarity_loss]
    assert all(torch.isfinite(t) and t > 0 for t in terms)
    sum(terms).backward()
    assert model.sentence_encoder.position_weights.grad.abs().sum() > 0


@pytest.mark.parametrize("start", ["memn2n", "uniform"])
def test_sentence_position_start(start):
    model = qa_model(story_items="sentences", sentence_position_start=start)
    encoder = model.sentence_encoder
    gave = torch.tensor([[5, 6, 7, 8, 9, 10]])  # "jeff gave the apple to fred"
    swapped = torch.tensor([[10, 6, 7, 8, 9, 5]])  # "fred gave the apple to jeff"
    if start == "uniform":  # a bag of words: the order is lost until training learns it
        torch.testing.assert_close(encoder(gave, "gave"), encoder(swapped, "swapped"))
        assert torch.equal(encoder.position_weights, torch.ones_like(encoder.position_weights))
    else:  # MemN2N's formula: giver and receiver sum to different vectors from the first step
        assert (encoder(gave, "gave") - encoder(swapped, "swapped")).abs().max() > 0.1
        weights = encoder.position_weights  # (J, d): word j, dimension k weigh (1 - j/J) - (k/d)(1 - 2j/J)
        length, dim = weights.shape
        assert weights[0, 0].item() == pytest.approx(1 - 1 / length - (1 / dim) * (1 - 2 / length))
        assert weights[-1, -1].item() == pytest.approx(1.0)
        torch.testing.assert_close(weights[length // 2 - 1], torch.full((dim,), 0.5))  # j/J = 1/2


def test_reader_feed_forward_ends_each_hop_and_reloads(tmp_path):
    # off (the default, and every config saved before the option): the reader has the weights it always had
    assert not any("feed_forwards" in name for name in qa_model().state_dict())
    model = qa_model(story_items="sentences", reader_feed_forward=True)
    names = [name for name in model.state_dict() if name.startswith("reader.feed_forwards.")]
    assert len(names) == 6 * model.config.num_reasoning_hops  # up, down and norm: a weight and a bias each
    ids, mask = sentence_story()
    _, _, questions, question_mask = story_and_questions()
    out = model.train()(ids, mask, questions, question_mask, labels=torch.tensor([0, 1, 2]))
    out.loss.backward()
    assert all(block.up.weight.grad.abs().sum() > 0 for block in model.reader.feed_forwards)
    model.eval()
    with torch.no_grad():
        logits = model(ids, mask, questions, question_mask).logits
        torch.nn.init.constant_(model.reader.feed_forwards[-1].up.bias, 1.0)  # the last hop's block acts
        assert not torch.allclose(model(ids, mask, questions, question_mask).logits, logits)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForQuestionAnswering.from_pretrained(tmp_path).eval()
    assert loaded.config.reader_feed_forward
    torch.testing.assert_close(
        loaded(ids, mask, questions, question_mask).logits, model(ids, mask, questions, question_mask).logits
    )


def test_linear_reading_weighs_entries_by_raw_scores():
    torch.manual_seed(0)
    attention = RehearsalMemoryAttention(8, 8, num_heads=2)
    queries, keys = torch.randn(2, 1, 8), torch.randn(2, 5, 8)
    visible = torch.tensor([[True] * 5, [True, True, False, False, True]])
    read = attention(queries, keys, visible, linear=True)

    def heads(projection, x):  # (B, n, 8) -> (B, 2, n, 4)
        return projection(x).view(2, -1, 2, 4).transpose(1, 2)

    q, k, v = heads(attention.q_proj, queries), heads(attention.k_proj, keys), heads(attention.v_proj, keys)
    scores = q @ k.transpose(-1, -2) * 4**-0.5 * visible[:, None, None]  # raw, hidden keys at 0
    torch.testing.assert_close(read, attention.o_proj((scores @ v).transpose(1, 2).reshape(2, 1, 8)))
    # a float visibility scales each key's score (the read is linear in the weights, o_proj adds its bias)
    bias = attention.o_proj.bias
    torch.testing.assert_close(attention(queries, keys, 0.5 * visible, linear=True) - bias, 0.5 * (read - bias))
    assert not torch.allclose(attention(queries, keys, visible), read)  # the softmax by default
    # the reader passes its flag to every hop
    model = qa_model()
    ids, mask, questions, question_mask = story_and_questions()
    with torch.no_grad():
        logits = model(ids, mask, questions, question_mask).logits
        model.reader.linear_reading = True
        assert not torch.allclose(model(ids, mask, questions, question_mask).logits, logits)


def test_sentence_items_reject_bad_input():
    model = qa_model(story_items="sentences", max_sentence_tokens=4)
    questions = story_and_questions()[2]
    with pytest.raises(ValueError, match="max_sentence_tokens"):
        model(torch.ones(2, 3, 5, dtype=torch.long), question_input_ids=questions[:2, :4])
    with pytest.raises(ValueError, match=r"\(batch, sentences, sentence_length\)"):
        model(torch.ones(2, 5, dtype=torch.long), question_input_ids=questions[:2, :4])
    with pytest.raises(StrictDataclassError, match="story_items"):
        tiny_config(story_items="words")

"""Tests of the story generator, checked by replaying every story with an independent reading of its sentences."""

import re

import pytest
from datasets import Value

from rm_hf.babi import QA_FEATURES
from rm_hf.story_generator import generate_stories, generator_vocabulary

MOVE = re.compile(r"(\w+) (?:went|moved|walked|ran) to the (\w+)\.")
PICK_UP = re.compile(r"(\w+) (?:picked up|grabbed|took) the (\w+)\.")
DROP = re.compile(r"(\w+) (?:dropped|left|put down) the (\w+) in the (\w+)\.")
IDLE = re.compile(
    r"\w+ (?:looked around|yawned|sang a song|waved)\."
    r"|It started to rain\.|The sun came out\.|A bird sang outside\.|The clock struck noon\."
)


def expected_answer(story: list[str], question: str) -> tuple[str, int]:
    """Replay the story, checking every event is possible; returns (answer, index of the deciding sentence)."""
    place: dict[str, str] = {}
    holder: dict[str, str | None] = {}
    lying: dict[str, str | None] = {}
    last_move: dict[str, int] = {}
    last_hand_over: dict[str, int] = {}  # object -> its last pick-up or drop
    for index, sentence in enumerate(story):
        if match := MOVE.fullmatch(sentence):
            person, where = match.groups()
            place[person], last_move[person] = where, index
        elif match := PICK_UP.fullmatch(sentence):
            person, obj = match.groups()
            assert holder.get(obj) is None, sentence
            assert lying.get(obj) in (None, place[person]), sentence  # KeyError: a person nowhere picked it up
            holder[obj], lying[obj], last_hand_over[obj] = person, None, index
        elif match := DROP.fullmatch(sentence):
            person, obj, where = match.groups()
            assert holder.get(obj) == person and place[person] == where, sentence
            holder[obj], lying[obj], last_hand_over[obj] = None, where, index
        else:
            assert IDLE.fullmatch(sentence), sentence

    if match := re.fullmatch(r"Where is ([A-Z]\w+)\?", question):
        person = match[1]
        return place[person], last_move[person]
    if match := re.fullmatch(r"Where is the (\w+)\?", question):
        obj = match[1]
        assert holder[obj] is None, "questions only ask where objects lying on the floor are"
        return lying[obj], last_hand_over[obj]
    obj = re.fullmatch(r"Who has the (\w+)\?", question)[1]
    return holder[obj] or "nobody", last_hand_over[obj]


def check_rows(dataset) -> None:
    for row in dataset:
        answer, deciding = expected_answer(row["story"], row["question"])
        length = len(row["story"])
        assert row["answer"] == answer
        assert row["supporting_positions"] == [deciding]
        assert row["supporting_ids"] == [deciding + 1]
        assert row["story_line_ids"] == list(range(1, length + 1))
        assert row["fact_distance"] == length - 1 - deciding


def test_columns_match_load_babi_plus_fact_distance():
    dataset = generate_stories(5, story_length=10)

    assert dataset.features == {**QA_FEATURES, "fact_distance": Value("int32")}
    assert list(dataset.features) == [*QA_FEATURES, "fact_distance"]
    assert dataset["story_id"] == [0, 1, 2, 3, 4]
    assert dataset["task_id"] == [0] * 5
    assert all(len(story) == 10 for story in dataset["story"])


def test_deterministic_under_a_seed():
    first = generate_stories(20, story_length=30, seed=7)

    assert generate_stories(20, story_length=30, seed=7).to_list() == first.to_list()
    assert generate_stories(20, story_length=30, seed=8)["story"] != first["story"]


def test_supporting_fact_decides_the_answer():
    dataset = generate_stories(600, story_length=60, num_people=3, num_places=4, num_objects=2, seed=3)

    check_rows(dataset)
    assert set(dataset["question_type"]) == {"where_person", "where_object", "who_has"}
    answers = set(dataset["answer"])
    assert "nobody" in answers and "Alice" in answers and "kitchen" in answers
    assert answers <= {"Alice", "Bob", "Carol", "kitchen", "garden", "hallway", "office", "nobody"}


@pytest.mark.parametrize("question_type", ["where_person", "where_object", "who_has"])
def test_fact_distance_stays_in_range(question_type):
    dataset = generate_stories(
        200, story_length=40, min_fact_distance=5, max_fact_distance=12, question_types=[question_type], seed=1
    )

    distances = dataset["fact_distance"]
    assert min(distances) >= 5 and max(distances) <= 12
    assert len(set(distances)) > 4  # spread over the range, not stuck at one end
    assert set(dataset["question_type"]) == {question_type}
    check_rows(dataset)


def test_longest_distances_fit_the_story():
    # With no maximum the fact may open the story (where_person) or follow a two-sentence setup (object questions).
    dataset = generate_stories(300, story_length=6, min_fact_distance=3, seed=2)

    for row in dataset:
        limit = 5 if row["question_type"] == "where_person" else 3
        assert 3 <= row["fact_distance"] <= limit
    assert max(dataset["fact_distance"]) == 5
    check_rows(dataset)


@pytest.mark.parametrize("sizes", [{}, {"num_people": 12, "num_places": 12, "num_objects": 10}])
def test_the_vocabulary_holds_every_sentence_question_and_answer(sizes):
    sentences, answers = generator_vocabulary(**sizes)
    stories = generate_stories(300, story_length=40, seed=3, **sizes)
    assert {s for row in stories for s in (*row["story"], row["question"])} <= set(sentences)
    assert set(stories["answer"]) <= set(answers) and answers == sorted(set(answers))
    people, places = sizes.get("num_people", 4), sizes.get("num_places", 6)
    assert len(answers) == people + places + 1  # a name, a place, or "nobody"


def test_people_only_stories():
    dataset = generate_stories(50, story_length=20, num_objects=0, question_types=["where_person"])

    check_rows(dataset)
    assert not any("the key" in sentence for story in dataset["story"] for sentence in story)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"question_types": ["when"]}, "question_types"),
        ({"question_types": []}, "question_types"),
        ({"num_people": 13}, "num_people"),
        ({"num_objects": 0}, "num_objects"),
        ({"min_fact_distance": 8}, "min_fact_distance"),  # object questions keep room for their setup
        ({"min_fact_distance": 3, "max_fact_distance": 2}, "max_fact_distance"),
    ],
)
def test_rejects_bad_arguments(arguments, message):
    with pytest.raises(ValueError, match=message):
        generate_stories(1, story_length=10, **arguments)

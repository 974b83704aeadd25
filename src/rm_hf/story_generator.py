"""Generator of long bAbI-style stories with one question each, whose answer hinges on one sentence.

People move between places, pick up and drop objects, and idle ("Carol looked around.", "It started to rain.").
The sentence that settles the answer (the supporting fact) is placed at a chosen distance from the end of the
story and no later sentence changes the answer, so memory over long distances can be measured precisely. The
wording is our own; the rows have the columns of `rm_hf.babi.load_babi` plus `fact_distance`.
"""

import random
from collections.abc import Sequence

from datasets import Dataset, Value

from .babi import QA_FEATURES, dataset_from_columns

PEOPLE = ("Alice", "Bob", "Carol", "Dave", "Erin", "Frank", "Grace", "Heidi", "Ivan", "Judy", "Mallory", "Oscar")
PLACES = (
    "kitchen", "garden", "hallway", "office", "bedroom", "bathroom",
    "cellar", "garage", "library", "attic", "porch", "studio",
)  # fmt: skip
OBJECTS = ("key", "apple", "book", "ball", "cup", "hat", "lamp", "coin", "scarf", "candle")
QUESTION_TYPES = ("where_person", "where_object", "who_has")
NOBODY = "nobody"

MOVE_VERBS = ("went to", "moved to", "walked to", "ran to")
PICK_UP_VERBS = ("picked up", "grabbed", "took")
_DROP_VERBS = ("dropped", "left", "put down")
_IDLE_VERBS = ("looked around", "yawned", "sang a song", "waved")
_QUESTIONS = {"where_person": "Where is {}?", "where_object": "Where is the {}?", "who_has": "Who has the {}?"}
_WEATHER = ("It started to rain.", "The sun came out.", "A bird sang outside.", "The clock struck noon.")

# Sentences of setup an object question may need before its supporting fact (see `_World.hold`).
_SETUP_BUDGET = {"where_person": 0, "where_object": 2, "who_has": 2}
# Probabilities of a move, a pick-up and a drop; an impossible event becomes an idle sentence.
_P_MOVE, _P_PICK_UP, _P_DROP = 0.45, 0.2, 0.15

GENERATED_FEATURES = QA_FEATURES.copy()
GENERATED_FEATURES["fact_distance"] = Value("int32")


class _Phrasebook:
    """Every sentence a story can use, written once per `generate_stories` call.

    Drawing a random move or pick-up as one (who, what, sentence) triple costs a single random draw, which keeps
    generating millions of sentences fast.
    """

    def __init__(self, num_people: int, num_places: int, num_objects: int):
        self.num_people, self.num_places, self.num_objects = num_people, num_places, num_objects
        people, places, objects = PEOPLE[:num_people], PLACES[:num_places], OBJECTS[:num_objects]
        self.moves = [[tuple(f"{p} {verb} the {place}." for verb in MOVE_VERBS) for place in places] for p in people]
        self.pick_ups = [[tuple(f"{p} {verb} the {o}." for verb in PICK_UP_VERBS) for o in objects] for p in people]
        self.drops = [
            [
                [tuple(f"{p} {verb} the {o} in the {place}." for verb in _DROP_VERBS) for place in places]
                for o in objects
            ]
            for p in people
        ]
        self.any_move = [
            (person, place, sentence)
            for person, row in enumerate(self.moves)
            for place, sentences in enumerate(row)
            for sentence in sentences
        ]
        self.any_pick_up = [
            (person, obj, sentence)
            for person, row in enumerate(self.pick_ups)
            for obj, sentences in enumerate(row)
            for sentence in sentences
        ]
        self.idle = [f"{p} {verb}." for p in people for verb in _IDLE_VERBS] + list(_WEATHER)


class _World:
    """Who is where and who holds what in one story; every event updates the state and returns its sentence."""

    def __init__(self, rng: random.Random, phrasebook: _Phrasebook):
        self.rng = rng
        self.phrases = phrasebook
        self.person_place: list[int | None] = [None] * phrasebook.num_people  # None until the person first moves
        self.holder: list[int | None] = [None] * phrasebook.num_objects
        self.object_place: list[int | None] = [None] * phrasebook.num_objects  # None while held or never seen

    def move(self, person: int, place: int) -> str:
        self.person_place[person] = place
        return self.rng.choice(self.phrases.moves[person][place])

    def can_pick_up(self, person: int, obj: int) -> bool:
        place = self.person_place[person]
        # An object nobody has seen yet may be found anywhere.
        return place is not None and self.holder[obj] is None and self.object_place[obj] in (None, place)

    def pick_up(self, person: int, obj: int) -> str:
        self.holder[obj], self.object_place[obj] = person, None
        return self.rng.choice(self.phrases.pick_ups[person][obj])

    def drop(self, obj: int) -> str:
        """The holder drops `obj` where they are; the sentence names the place so it alone says where it lies."""
        person = self.holder[obj]
        # Only people whose place is known can pick things up, so a holder's place is always known.
        place = self.person_place[person]
        self.holder[obj], self.object_place[obj] = None, place
        return self.rng.choice(self.phrases.drops[person][obj][place])

    def reach(self, person: int, obj: int) -> list[str]:
        """Move `person` to where `obj` lies, if needed, so that they can pick it up."""
        target = self.object_place[obj]
        if target is None and self.person_place[person] is None:
            target = self.rng.randrange(self.phrases.num_places)
        if target is None or target == self.person_place[person]:
            return []
        return [self.move(person, target)]

    def hold(self, obj: int) -> list[str]:
        """Make somebody hold `obj` (at most two sentences); the holder is then `self.holder[obj]`."""
        if self.holder[obj] is not None:
            return []
        person = self.rng.randrange(self.phrases.num_people)
        return [*self.reach(person, obj), self.pick_up(person, obj)]

    def random_event(self, frozen_person: int | None = None, frozen_object: int | None = None) -> str:
        """A random sentence that neither moves `frozen_person` nor picks up or drops `frozen_object`."""
        rng, phrases = self.rng, self.phrases
        draw = rng.random()
        if draw < _P_MOVE:
            person, place, sentence = rng.choice(phrases.any_move)
            if person != frozen_person:
                self.person_place[person] = place
                return sentence
        elif phrases.num_objects and draw < _P_MOVE + _P_PICK_UP:
            person, obj, sentence = rng.choice(phrases.any_pick_up)
            if obj != frozen_object and self.can_pick_up(person, obj):
                self.holder[obj], self.object_place[obj] = person, None
                return sentence
        elif phrases.num_objects and draw < _P_MOVE + _P_PICK_UP + _P_DROP:
            obj = rng.randrange(phrases.num_objects)
            if obj != frozen_object and self.holder[obj] is not None:
                return self.drop(obj)
        return rng.choice(phrases.idle)


def _generate_story(
    rng: random.Random, phrasebook: _Phrasebook, question_type: str, story_length: int, distance: int
) -> tuple[list[str], str, str]:
    """One story whose supporting fact is followed by exactly `distance` sentences; returns (story, question, answer).

    The sentences come in up to five stretches: random events; the setup the question needs (e.g. somebody picking up
    the object that will be dropped); random events that keep the setup valid, padding the setup to its budget;
    the supporting fact; `distance` random events that cannot change the answer.
    """
    world = _World(rng, phrasebook)
    fact_position = story_length - 1 - distance
    budget = _SETUP_BUDGET[question_type]
    story = [world.random_event() for _ in range(fact_position - budget)]
    if question_type == "where_person":
        person = rng.randrange(phrasebook.num_people)
        place = rng.randrange(phrasebook.num_places)
        question, answer = _QUESTIONS[question_type].format(PEOPLE[person]), PLACES[place]
        fact = world.move(person, place)
        # After the fact the person stays put; picking up and dropping things does not move them.
        frozen_person, frozen_object = person, None
    else:
        obj = rng.randrange(phrasebook.num_objects)
        question = _QUESTIONS[question_type].format(OBJECTS[obj])
        taker = None
        if question_type == "who_has" and rng.random() < 0.5:  # the supporting fact is a pick-up: answer its taker
            taker = rng.randrange(phrasebook.num_people)
            setup = [world.drop(obj)] if world.holder[obj] is not None else []
            setup += world.reach(taker, obj)
        else:  # the supporting fact is a drop: answer the place it names, or nobody
            setup = world.hold(obj)
        story += setup
        # The taker must stay next to the object until the pick-up.
        story += [world.random_event(frozen_person=taker, frozen_object=obj) for _ in range(budget - len(setup))]
        if taker is not None:
            fact, answer = world.pick_up(taker, obj), PEOPLE[taker]
        else:
            fact = world.drop(obj)
            answer = PLACES[world.object_place[obj]] if question_type == "where_object" else NOBODY
        # After the fact nobody picks up or drops the object; people, the holder included, may still move.
        frozen_person, frozen_object = None, obj
    story.append(fact)
    story += [world.random_event(frozen_person, frozen_object) for _ in range(distance)]
    return story, question, answer


def generator_vocabulary(
    num_people: int = 4, num_places: int = 6, num_objects: int = 4
) -> tuple[list[str], list[str]]:
    """Every sentence and question `generate_stories` can write for stories of these sizes, and every answer it can
    give, whatever the question types. A model whose words and answers come from these can later be trained on
    question types it has not seen (e.g. `who_has` first, then all three: README, "Warm start with fixed keys")."""
    phrases = _Phrasebook(num_people, num_places, num_objects)
    people, places, objects = PEOPLE[:num_people], PLACES[:num_places], OBJECTS[:num_objects]
    sentences = [s for row in phrases.moves + phrases.pick_ups for group in row for s in group]
    sentences += [s for row in phrases.drops for by_place in row for group in by_place for s in group]
    sentences += phrases.idle
    sentences += [_QUESTIONS["where_person"].format(p) for p in people]
    sentences += [_QUESTIONS[t].format(o) for t in ("where_object", "who_has") for o in objects]
    return sentences, sorted({*people, *places, NOBODY})


def generate_stories(
    num_examples: int,
    story_length: int = 50,
    num_people: int = 4,
    num_places: int = 6,
    num_objects: int = 4,
    min_fact_distance: int = 0,
    max_fact_distance: int | None = None,
    question_types: Sequence[str] = QUESTION_TYPES,
    seed: int = 0,
) -> Dataset:
    """Generate `num_examples` stories of `story_length` sentences, one question each (columns: `GENERATED_FEATURES`).

    Each story uses the first `num_people` names of `PEOPLE` (likewise places and objects), so the answers are
    drawn from a fixed vocabulary. The question type is drawn from `question_types`:

    - "where_person" ("Where is Alice?"): the supporting fact is Alice's last move;
    - "where_object" ("Where is the key?"): the key lies on the floor; the fact is the drop that names the place;
    - "who_has" ("Who has the key?"): the fact is the last pick-up (answer: a name) or drop (answer: "nobody").

    `fact_distance`, the number of sentences after the supporting fact, is uniform in
    [`min_fact_distance`, `max_fact_distance`]; None, or a value too large for the story, means as far as the
    story allows (object questions keep two sentences before the fact for setting it up). `task_id` is 0 and
    `story_id` the example index. The result is deterministic for a given `seed`.
    """
    unknown = set(question_types) - set(QUESTION_TYPES)
    if not question_types or unknown:
        raise ValueError(f"question_types must be a non-empty subset of {QUESTION_TYPES}, got {question_types!r}")
    needs_objects = any(_SETUP_BUDGET[question_type] for question_type in question_types)
    for label, value, pool, minimum in (
        ("num_people", num_people, PEOPLE, 1),
        ("num_places", num_places, PLACES, 1),
        ("num_objects", num_objects, OBJECTS, 1 if needs_objects else 0),
    ):
        if not minimum <= value <= len(pool):
            raise ValueError(f"{label} must be in [{minimum}, {len(pool)}], got {value}")
    longest_allowed = {qt: story_length - 1 - _SETUP_BUDGET[qt] for qt in question_types}
    if min_fact_distance < 0 or min_fact_distance > min(longest_allowed.values()):
        raise ValueError(
            f"min_fact_distance must be in [0, {min(longest_allowed.values())}] for stories of {story_length} "
            f"sentences and question types {tuple(question_types)}, got {min_fact_distance}"
        )
    if max_fact_distance is not None and max_fact_distance < min_fact_distance:
        raise ValueError(f"max_fact_distance ({max_fact_distance}) is below min_fact_distance ({min_fact_distance})")

    rng = random.Random(seed)
    phrasebook = _Phrasebook(num_people, num_places, num_objects)
    line_ids = list(range(1, story_length + 1))
    columns: dict[str, list] = {name: [] for name in GENERATED_FEATURES}
    for index in range(num_examples):
        question_type = rng.choice(question_types)
        longest = longest_allowed[question_type]
        if max_fact_distance is not None:
            longest = min(longest, max_fact_distance)
        distance = rng.randint(min_fact_distance, longest)
        story, question, answer = _generate_story(rng, phrasebook, question_type, story_length, distance)
        position = story_length - 1 - distance
        row = {
            "story": story,
            "story_line_ids": line_ids,
            "question": question,
            "answer": answer,
            "supporting_ids": [position + 1],
            "supporting_positions": [position],
            "task_id": 0,
            "story_id": index,
            "question_type": question_type,
            "fact_distance": distance,
        }
        for name, value in row.items():
            columns[name].append(value)
    return dataset_from_columns(columns, GENERATED_FEATURES)

"""The text half of the embedded speech world: question families, answers, a held-out split and a corpus.

The demo needs a task small enough to learn on two CPU cores yet rich enough to test generalisation, so the world
is a set of question *items* (one fact, many phrasings) drawn from families: facts from small tables (capitals,
colours, animals' sounds, legs and kinds, opposites), skills with a computed answer (arithmetic, spelling,
counting, comparisons) and chit-chat. Everything is deterministic from :attr:`WorldConfig.seed`.

The held-out split is made of whole items (all their phrasings), and items that share a fact (``three plus four``
and ``four plus three``; ``hot -> cold`` and ``cold -> hot``) form one *group* and are held out together. A held-out
item's questions and answer never appear in the training QA, the corpus or the spoken training data. For
knowledge families the held-out facts may still be stated in prose in the corpus
(:attr:`WorldConfig.heldout_facts_in_corpus`), so held-out questions test knowledge *extraction* (answering a
question about a fact only read in prose); for skill families nothing about a held-out item is seen anywhere.

Texts are lowercase words without punctuation and with numbers written as words, so a transcript is exactly what
is spoken; only corpus lines carry ``?`` and ``.`` so that a text model sees where a question ends.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from speechgpt.data.tts import ENGLISH_VOICES, MAX_RATE, MIN_RATE, VoiceSettings
from speechgpt.data.world_tables import (
    ANIMAL_KIND_PLURALS,
    ANIMALS,
    CAPITALS,
    CHITCHAT,
    COLOURS,
    OPPOSITES,
    SPELLING_WORDS,
)

logger = logging.getLogger(__name__)

FAMILIES: tuple[str, ...] = (
    "capital",
    "colour",
    "animal_sound",
    "animal_legs",
    "animal_kind",
    "opposite",
    "spelling",
    "arithmetic",
    "counting",
    "comparison",
    "chitchat",
)
"""Every question family, in the order files list them."""
KNOWLEDGE_FAMILIES = frozenset({"capital", "colour", "animal_sound", "animal_legs", "animal_kind", "opposite"})
"""Families whose answers are facts from a table (rather than computed by a skill)."""
NEVER_HELD_OUT = frozenset({"chitchat"})
"""Families too small to hold out: the assistant must learn every one of its few items."""
HELDOUT_VOICES: tuple[str, ...] = ("en-gb-scotland+m2", "en-us-nyc+f1")
"""Default held-out voices: accents and variants that no training voice uses."""
SPLITS = ("train", "heldout")
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"questions_per_family": 4, "train_utterances": 40, "test_utterances": 12},
    "small": {"questions_per_family": 40, "train_utterances": 800, "test_utterances": 120},
    "default": {},
    "large": {"questions_per_family": None, "train_utterances": 12_000, "test_utterances": 1_200},
}
"""Named sizes; ``default`` is the demo's (built in well under a minute on 2 cores)."""
MAX_NUMBER = 999
"""Largest number :func:`number_to_words` writes (the world's numbers stay far below it)."""

_ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")


def number_to_words(number: int) -> str:
    """A number as the words espeak-ng should say and a recogniser should write (``42`` -> ``"forty two"``).

    Raises:
        ValueError: ``number`` is not an int in [0, :data:`MAX_NUMBER`].
    """
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= MAX_NUMBER:
        raise ValueError(f"number must be an int in [0, {MAX_NUMBER}], got {number!r}")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + ("" if ones == 0 else f" {_ONES[ones]}")
    hundreds, rest = divmod(number, 100)
    return f"{_ONES[hundreds]} hundred" + ("" if rest == 0 else f" and {number_to_words(rest)}")


def spell(word: str) -> str:
    """The letters of ``word`` separated by spaces (``"cat"`` -> ``"c a t"``), as the spelling family answers."""
    if not word.isalpha():
        raise ValueError(f"only letters can be spelled, got {word!r}")
    return " ".join(word)


@dataclass(frozen=True)
class WorldConfig:
    """Everything that decides the content of a speech world; two equal configs build identical folders.

    Attributes:
        seed: Seed of every random choice (which items, which are held out, voices, rates, pitches).
        families: Question families to include, a subset of :data:`FAMILIES`.
        questions_per_family: At most this many items per family (None: every item of the tables).
        max_phrasings: Keep at most this many phrasings per item (None: all, 2 to 4 depending on the family).
        heldout_fraction: Share of each family's fact groups held out (chit-chat is never held out).
        heldout_facts_in_corpus: State held-out *knowledge* facts in prose in the corpus (never their questions or
            answers), so held-out questions test answering about facts read only in prose.
        train_utterances: Spoken training utterances (train voices, train items).
        test_utterances: Spoken test utterances, split evenly between held-out voices on train items, held-out
            voices on held-out items and train voices on held-out items.
        speech_mix: Shares of questions, answers and prose sentences among training utterances.
        train_voices: espeak-ng voices of the training speech.
        heldout_voices: espeak-ng voices heard only in the test speech.
        rate_bounds: Inclusive range of speaking rates (words per minute) drawn per utterance.
        pitch_bounds: Inclusive range of base pitches (0..100) drawn per utterance.
        intonation_bounds: Inclusive range of pitch variation (espeak's ``pitch_range``, 0..100) per utterance.
    """

    seed: int = 0
    families: tuple[str, ...] = FAMILIES
    questions_per_family: int | None = 150
    max_phrasings: int | None = None
    heldout_fraction: float = 0.1
    heldout_facts_in_corpus: bool = True
    train_utterances: int = 3600
    test_utterances: int = 360
    speech_mix: tuple[float, float, float] = (0.5, 0.25, 0.25)
    train_voices: tuple[str, ...] = ENGLISH_VOICES
    heldout_voices: tuple[str, ...] = HELDOUT_VOICES
    rate_bounds: tuple[int, int] = (140, 200)
    pitch_bounds: tuple[int, int] = (35, 65)
    intonation_bounds: tuple[int, int] = (30, 70)

    def __post_init__(self) -> None:
        for name in (
            "families",
            "speech_mix",
            "train_voices",
            "heldout_voices",
            "rate_bounds",
            "pitch_bounds",
            "intonation_bounds",
        ):
            value = getattr(self, name)
            if isinstance(value, list):  # from JSON
                object.__setattr__(self, name, tuple(value))
            elif not isinstance(value, tuple):
                raise ValueError(f"{name} must be a tuple or list, got {type(value).__name__}")
        _check_int("seed", self.seed, 0)
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise ValueError(f"families must be a non-empty subset of {list(FAMILIES)}, got unknown {unknown}")
        if len(set(self.families)) != len(self.families):
            raise ValueError(f"families lists a family twice: {list(self.families)}")
        for name in ("questions_per_family", "max_phrasings"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), 1)
        if isinstance(self.heldout_fraction, bool) or not isinstance(self.heldout_fraction, int | float):
            raise ValueError(f"heldout_fraction must be a number in [0, 1), got {self.heldout_fraction!r}")
        if not 0 <= self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction!r}")
        if not isinstance(self.heldout_facts_in_corpus, bool):
            raise ValueError(f"heldout_facts_in_corpus must be a bool, got {self.heldout_facts_in_corpus!r}")
        _check_int("train_utterances", self.train_utterances, 1)
        _check_int("test_utterances", self.test_utterances, 0)
        if len(self.speech_mix) != 3 or any(
            isinstance(s, bool) or not isinstance(s, int | float) or s < 0 for s in self.speech_mix
        ):
            raise ValueError(
                f"speech_mix must be 3 non-negative shares (question, answer, sentence), got {self.speech_mix!r}"
            )
        if not math.isclose(sum(self.speech_mix), 1.0, abs_tol=1e-6):
            raise ValueError(f"speech_mix shares must sum to 1, got {self.speech_mix!r} (sum {sum(self.speech_mix)})")
        if not self.train_voices:
            raise ValueError("train_voices must name at least one espeak-ng voice")
        for name in ("train_voices", "heldout_voices"):
            voices = getattr(self, name)
            for voice in voices:
                VoiceSettings(voice=voice)  # checks the form; build_world checks that espeak-ng has it
            if len(set(voices)) != len(voices):
                raise ValueError(f"{name} lists a voice twice: {list(voices)}")
        if both := sorted(set(self.train_voices) & set(self.heldout_voices)):
            raise ValueError(f"voices {both} are in both train_voices and heldout_voices; held-out voices must be new")
        for name, low, high in (
            ("rate_bounds", MIN_RATE, MAX_RATE),
            ("pitch_bounds", 0, 100),
            ("intonation_bounds", 0, 100),
        ):
            bounds = getattr(self, name)
            if (
                len(bounds) != 2
                or any(isinstance(b, bool) or not isinstance(b, int) for b in bounds)
                or not low <= bounds[0] <= bounds[1] <= high
            ):
                raise ValueError(f"{name} must be two ints low <= high within [{low}, {high}], got {bounds!r}")

    @classmethod
    def from_preset(cls, size: str = "default", **overrides: Any) -> WorldConfig:
        """A config of a named size (:data:`SIZE_PRESETS`), with some fields overridden.

        Raises:
            ValueError: Unknown size or field.
        """
        if size not in SIZE_PRESETS:
            raise ValueError(f"unknown world size {size!r}; choose one of {list(SIZE_PRESETS)}")
        return cls.from_dict({**SIZE_PRESETS[size], **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WorldConfig:
        """Build from a dict such as ``world.json``'s ``config``; unknown keys are an error, not ignored.

        Raises:
            ValueError: Unknown or invalid fields.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"unknown WorldConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (tuples become lists), as written to ``world.json``."""
        return {
            key: list(value) if isinstance(value, tuple) else value for key, value in dataclasses.asdict(self).items()
        }


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class Question:
    """One question item: a fact or skill instance asked in several phrasings, with one answer.

    Attributes:
        key: Unique name, ``family.slug`` (``"capital.france"``).
        family: Its family.
        group: Items of one group state the same fact and always share a split.
        phrasings: The question texts, most common first.
        answer: The answer text.
        facts: Prose sentences stating the fact, for the corpus and spoken training sentences.
        split: ``"train"`` or ``"heldout"``.
    """

    key: str
    family: str
    group: str
    phrasings: tuple[str, ...]
    answer: str
    facts: tuple[str, ...] = ()
    split: str = "train"

    def qa_records(self) -> list[dict[str, str]]:
        """Alpaca-style records, one per phrasing, in the layout of ``qa/*.jsonl``."""
        return [
            {
                "id": f"{self.key}.p{i}",
                "instruction": text,
                "input": "",
                "output": self.answer,
                "family": self.family,
                "split": self.split,
            }
            for i, text in enumerate(self.phrasings)
        ]


def _slug(*parts: object) -> str:
    return "-".join(re.sub(r"[^a-z0-9]+", "-", str(p).lower()).strip("-") for p in parts)


def _with_article(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _capital_questions() -> list[Question]:
    return [
        Question(
            key=f"capital.{_slug(country)}",
            family="capital",
            group=country,
            phrasings=(
                f"what is the capital of {country}",
                f"which city is the capital of {country}",
                f"tell me the capital of {country}",
                f"name the capital city of {country}",
            ),
            answer=f"the capital of {country} is {capital}",
            facts=(f"{capital} is the capital of {country}", f"the capital city of {country} is called {capital}"),
        )
        for country, capital in CAPITALS
    ]


def _colour_questions() -> list[Question]:
    return [
        Question(
            key=f"colour.{_slug(thing)}",
            family="colour",
            group=thing,
            phrasings=(
                f"what colour is {thing}",
                f"what is the colour of {thing}",
                f"tell me the colour of {thing}",
                f"which colour is {thing}",
            ),
            answer=f"{thing} is {colour}",
            facts=(f"{thing} is usually {colour}", f"{colour} is the colour of {thing}"),
        )
        for thing, colour in COLOURS
    ]


def _animal_sound_questions() -> list[Question]:
    questions = []
    for name, sound, _, _ in ANIMALS:
        if sound is None:
            continue
        animal = _with_article(name)
        questions.append(
            Question(
                key=f"animal_sound.{_slug(name)}",
                family="animal_sound",
                group=name,
                phrasings=(
                    f"what sound does {animal} make",
                    f"what noise does {animal} make",
                    f"what does {animal} say",
                    f"what sound do you hear from {animal}",
                ),
                answer=f"{animal} says {sound}",
                facts=(f"{animal} makes the sound {sound}", f"the sound {sound} comes from {animal}"),
            )
        )
    return questions


def _animal_legs_questions() -> list[Question]:
    questions = []
    for name, _, legs, _ in ANIMALS:
        if legs is None:
            continue
        animal, count = _with_article(name), number_to_words(legs)
        answer = f"{animal} has no legs" if legs == 0 else f"{animal} has {count} legs"
        fact = f"{animal} does not have any legs" if legs == 0 else f"there are {count} legs on {animal}"
        questions.append(
            Question(
                key=f"animal_legs.{_slug(name)}",
                family="animal_legs",
                group=name,
                phrasings=(
                    f"how many legs does {animal} have",
                    f"how many legs has {animal} got",
                    f"tell me how many legs {animal} has",
                    f"count the legs of {animal}",
                ),
                answer=answer,
                facts=(fact,),
            )
        )
    return questions


def _animal_kind_questions() -> list[Question]:
    questions = []
    for name, _, _, kind in ANIMALS:
        animal, kinds = _with_article(name), ANIMAL_KIND_PLURALS[kind]
        questions.append(
            Question(
                key=f"animal_kind.{_slug(name)}",
                family="animal_kind",
                group=name,
                phrasings=(
                    f"what is {animal}",
                    f"what kind of animal is {animal}",
                    f"what type of animal is {animal}",
                    f"which group of animals does {animal} belong to",
                ),
                answer=f"{animal} is {_with_article(kind)}",
                facts=(f"{animal} is one of the {kinds}", f"{animal} belongs to the {kinds}"),
            )
        )
    return questions


def _opposite_questions() -> list[Question]:
    questions = []
    for pair in OPPOSITES:
        for word, opposite in (pair, pair[::-1]):
            questions.append(
                Question(
                    key=f"opposite.{_slug(word)}",
                    family="opposite",
                    group="-".join(pair),
                    phrasings=(
                        f"what is the opposite of {word}",
                        f"tell me the opposite of {word}",
                        f"what word means the opposite of {word}",
                        f"what is the reverse of {word}",
                    ),
                    answer=f"the opposite of {word} is {opposite}",
                    facts=(f"{word} and {opposite} are opposites", f"{opposite} is the opposite of {word}"),
                )
            )
    return questions


def _spelling_questions() -> list[Question]:
    return [
        Question(
            key=f"spelling.{word}",
            family="spelling",
            group=word,
            phrasings=(
                f"how do you spell {word}",
                f"spell the word {word}",
                f"can you spell {word}",
                f"how is {word} spelled",
            ),
            answer=spell(word),
            facts=(
                f"the word {word} has {number_to_words(len(word))} letters",
                f"the word {word} starts with the letter {word[0]}",
            ),
        )
        for word in SPELLING_WORDS
    ]


_ARITHMETIC = {
    # operation: (operand pairs, result, question templates, fact templates); operands stay small so that a tiny
    # model can learn them, and commutative pairs share a group.
    "plus": (
        [(a, b) for a in range(11) for b in range(11)],
        lambda a, b: a + b,
        (
            "what is {a} plus {b}",
            "how much is {a} plus {b}",
            "add {a} and {b}",
            "what do you get if you add {a} and {b}",
        ),
        ("{a} plus {b} makes {c}", "if you add {a} and {b} you get {c}"),
    ),
    "minus": (
        [(a, b) for a in range(13) for b in range(a + 1)],
        lambda a, b: a - b,
        ("what is {a} minus {b}", "how much is {a} minus {b}", "take {b} away from {a}", "subtract {b} from {a}"),
        ("{a} minus {b} leaves {c}", "if you take {b} away from {a} you get {c}"),
    ),
    "times": (
        [(a, b) for a in range(1, 11) for b in range(1, 11)],
        lambda a, b: a * b,
        ("what is {a} times {b}", "how much is {a} times {b}", "multiply {a} by {b}", "what is {a} multiplied by {b}"),
        ("{a} times {b} makes {c}", "{a} groups of {b} make {c}"),
    ),
}


def _arithmetic_questions() -> list[Question]:
    questions = []
    for operation, (pairs, result, templates, fact_templates) in _ARITHMETIC.items():
        for a, b in pairs:
            words = {"a": number_to_words(a), "b": number_to_words(b), "c": number_to_words(result(a, b))}
            group = (a, b) if operation == "minus" else (min(a, b), max(a, b))
            questions.append(
                Question(
                    key=f"arithmetic.{a}-{operation}-{b}",
                    family="arithmetic",
                    group=f"{operation}-{group[0]}-{group[1]}",
                    phrasings=tuple(t.format(**words) for t in templates),
                    answer=f"{words['a']} {operation} {words['b']} is {words['c']}",
                    facts=tuple(t.format(**words) for t in fact_templates),
                )
            )
    return questions


def _counting_questions() -> list[Question]:
    questions = []
    for start in range(1, 16):  # up to twenty: one word per number
        for stop in range(start + 2, start + 6):
            a, b = number_to_words(start), number_to_words(stop)
            sequence = " ".join(number_to_words(n) for n in range(start, stop + 1))
            questions.append(
                Question(
                    key=f"counting.{start}-to-{stop}",
                    family="counting",
                    group=f"{start}-{stop}",
                    phrasings=(
                        f"count from {a} to {b}",
                        f"please count from {a} to {b}",
                        f"can you count from {a} to {b}",
                        f"count up from {a} to {b}",
                    ),
                    answer=sequence,
                    facts=(f"counting from {a} to {b} goes {sequence}",),
                )
            )
    return questions


def _comparison_questions() -> list[Question]:
    questions = []
    for low in range(21):
        for high in range(low + 1, 21):
            a, b = number_to_words(low), number_to_words(high)
            for kind, adjective, answer, fact in (
                ("bigger", "bigger", f"{b} is bigger than {a}", f"{b} is more than {a}"),
                ("smaller", "smaller", f"{a} is smaller than {b}", f"{a} is less than {b}"),
            ):
                other = "larger" if kind == "bigger" else "less"
                questions.append(
                    Question(
                        key=f"comparison.{kind}-{low}-{high}",
                        family="comparison",
                        group=f"{low}-{high}",
                        phrasings=(
                            f"which is {adjective} {a} or {b}",
                            f"which is {adjective} {b} or {a}",
                            f"which number is {other} {a} or {b}",
                            f"which number is {other} {b} or {a}",
                        ),
                        answer=answer,
                        facts=(fact,),
                    )
                )
    return questions


def _chitchat_questions() -> list[Question]:
    return [
        Question(key=f"chitchat.{key}", family="chitchat", group=key, phrasings=phrasings, answer=answer, facts=facts)
        for key, phrasings, answer, facts in CHITCHAT
    ]


FAMILY_BUILDERS: dict[str, Callable[[], list[Question]]] = {
    "capital": _capital_questions,
    "colour": _colour_questions,
    "animal_sound": _animal_sound_questions,
    "animal_legs": _animal_legs_questions,
    "animal_kind": _animal_kind_questions,
    "opposite": _opposite_questions,
    "spelling": _spelling_questions,
    "arithmetic": _arithmetic_questions,
    "counting": _counting_questions,
    "comparison": _comparison_questions,
    "chitchat": _chitchat_questions,
}
"""Every family's items, all in the train split, in table order."""


def family_questions(family: str) -> list[Question]:
    """Every item of ``family`` before sampling and splitting.

    Raises:
        ValueError: Unknown family.
    """
    if family not in FAMILY_BUILDERS:
        raise ValueError(f"unknown question family {family!r}; choose from {list(FAMILIES)}")
    return FAMILY_BUILDERS[family]()


def _rng(seed: int, purpose: str) -> random.Random:
    """An independent random stream per purpose, so changing one size does not reshuffle everything else."""
    return random.Random(f"speechgpt-world/{seed}/{purpose}")  # str seeds are hashed with SHA-512: stable everywhere


def _groups(questions: Sequence[Question]) -> dict[str, list[Question]]:
    groups: dict[str, list[Question]] = {}
    for question in questions:
        groups.setdefault(question.group, []).append(question)
    return groups


def _sample_and_split(family: str, config: WorldConfig) -> list[Question]:
    questions = family_questions(family)
    groups = _groups(questions)
    names = list(groups)
    if config.questions_per_family is not None and len(questions) > config.questions_per_family:
        _rng(config.seed, f"sample/{family}").shuffle(names)
        kept: list[str] = []
        count = 0
        for name in names:
            if count + len(groups[name]) <= config.questions_per_family:
                kept.append(name)
                count += len(groups[name])
        names = kept
    chosen = set(names)
    heldout: set[str] = set()
    if family not in NEVER_HELD_OUT and config.heldout_fraction > 0 and len(chosen) >= 2:
        count = min(len(chosen) - 1, max(1, round(config.heldout_fraction * len(chosen))))
        order = [name for name in groups if name in chosen]  # table order, whatever the sampling order
        _rng(config.seed, f"heldout/{family}").shuffle(order)
        heldout = set(order[:count])
    result = []
    for question in questions:  # table order, whatever was sampled
        if question.group not in chosen:
            continue
        phrasings = question.phrasings[: config.max_phrasings] if config.max_phrasings else question.phrasings
        split = "heldout" if question.group in heldout else "train"
        result.append(dataclasses.replace(question, phrasings=phrasings, split=split))
    return result


@dataclass(frozen=True)
class TextWorld:
    """The questions of a world (both splits) and its text corpus.

    Attributes:
        config: The config it was built from.
        questions: Every item, families in config order, items in table order.
        corpus: Corpus lines for text pretraining, shuffled.
    """

    config: WorldConfig
    questions: tuple[Question, ...]
    corpus: tuple[str, ...] = field(repr=False)

    def split(self, split: str) -> list[Question]:
        """The items of ``"train"`` or ``"heldout"``."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return [q for q in self.questions if q.split == split]

    def qa_records(self, split: str) -> list[dict[str, str]]:
        """Alpaca-style records of one split, one per phrasing, as written to ``qa/{split}.jsonl``."""
        return [record for question in self.split(split) for record in question.qa_records()]

    def vocabulary(self) -> list[str]:
        """Every word the world's language has, sorted: the words of every phrasing, answer and fact of every item
        of the config's families, before sampling and splitting (so it does not depend on the sample or the split).

        A listener's word list, for the judge ASR's lexicon: it tells which words exist, not which are asked.
        """
        texts = (text for family in self.config.families for q in family_questions(family) for text in _texts(q))
        return sorted({word for text in texts for word in _WORD.findall(text.lower())})

    def question_counts(self) -> dict[str, dict[str, int]]:
        """Items per family in each split: ``{"train": {family: n}, "heldout": {family: n}}``."""
        return {
            split: {f: n for f in self.config.families if (n := Counter(q.family for q in self.split(split))[f])}
            for split in SPLITS
        }


_WORD = re.compile(r"[a-z']+")


def _texts(question: Question) -> tuple[str, ...]:
    return (*question.phrasings, question.answer, *question.facts)


def _corpus(questions: Sequence[Question], config: WorldConfig) -> list[str]:
    lines: list[str] = []
    for question in questions:
        if question.split == "train":
            lines.extend(f"{fact}." for fact in question.facts)
            lines.extend(f"{text}? {question.answer}." for text in question.phrasings)
        elif config.heldout_facts_in_corpus and question.family in KNOWLEDGE_FAMILIES:
            lines.extend(f"{fact}." for fact in question.facts)
    unique = list(dict.fromkeys(lines))
    _rng(config.seed, "corpus").shuffle(unique)
    return unique


def _check_unique(questions: Sequence[Question]) -> None:
    """Each question text and each answer belongs to one item, so a text identifies its item (and its answer)."""
    texts = Counter(text for q in questions for text in q.phrasings)
    answers = Counter(q.answer for q in questions)
    repeated = [t for t, n in texts.items() if n > 1] + [a for a, n in answers.items() if n > 1]
    assert not repeated, f"world tables give one text to several items: {repeated[:5]}"


def build_text_world(config: WorldConfig | None = None) -> TextWorld:
    """Generate the questions, the held-out split and the corpus of a world (no audio; fast).

    Raises:
        ValueError: The config leaves no training question.
    """
    config = config if config is not None else WorldConfig()
    questions = [q for family in config.families for q in _sample_and_split(family, config)]
    _check_unique(questions)
    if not any(q.split == "train" for q in questions):
        raise ValueError(f"the config leaves no training question (families {list(config.families)})")
    world = TextWorld(config=config, questions=tuple(questions), corpus=tuple(_corpus(questions, config)))
    logger.debug(
        "text world: %d items (%d held out), %d corpus lines",
        len(questions),
        len(world.split("heldout")),
        len(world.corpus),
    )
    return world

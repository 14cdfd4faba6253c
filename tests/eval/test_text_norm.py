"""The scoring normalisation: one test per documented rule, in the module's order."""

import pytest

from speechgpt.eval.text_norm import normalize_text, number_to_words, ordinal_to_words


def test_nfkc_turns_compatibility_characters_into_plain_ones():
    # Full-width letters, the "fi" ligature and a superscript two.
    assert normalize_text("ＡＢＣ ﬁne x²") == "abc fine x two"


def test_typographic_apostrophes_become_ascii_and_stay_inside_words():
    assert normalize_text("Don\u2019t, won\u2018t, can\u02bct") == "don't won't can't"


def test_lowercase():
    assert normalize_text("The CAT Sat") == "the cat sat"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (20, "twenty"),
        (42, "forty two"),
        (100, "one hundred"),
        (105, "one hundred five"),
        (342, "three hundred forty two"),
        (999, "nine hundred ninety nine"),
    ],
)
def test_number_to_words(value, words):
    assert number_to_words(value) == words


@pytest.mark.parametrize("value", [-1, 1000, 2.5, True])
def test_number_to_words_rejects_what_it_cannot_spell(value):
    with pytest.raises(ValueError, match=r"0\.\.999"):
        number_to_words(value)


@pytest.mark.parametrize(
    ("value", "words"),
    [(1, "first"), (2, "second"), (3, "third"), (5, "fifth"), (12, "twelfth"), (20, "twentieth"),
     (21, "twenty first"), (100, "one hundredth"), (999, "nine hundred ninety ninth")],
)  # fmt: skip
def test_ordinal_to_words(value, words):
    assert ordinal_to_words(value) == words


def test_digits_up_to_999_are_spelled_and_larger_runs_kept():
    assert normalize_text("I have 342 cats and 1000 dogs") == "i have three hundred forty two cats and 1000 dogs"
    assert normalize_text("007") == "seven"


def test_thousands_separators_are_dropped_inside_numbers():
    assert normalize_text("12,345 and 1,000") == "12345 and 1000"
    assert normalize_text("1,2") == "one two"  # not a thousands group: the comma is punctuation


def test_ordinals_and_decimals_are_spelled():
    assert normalize_text("the 21st and 3rd place") == "the twenty first and third place"
    assert normalize_text("3.25 kg") == "three point two five kg"


def test_digits_glued_to_letters_are_split():
    assert normalize_text("3d mp3") == "three d mp three"


def test_hundred_and_loses_the_and_before_a_number_word():
    assert normalize_text("One hundred and twenty-three") == "one hundred twenty three"
    assert normalize_text("a hundred and one dalmatians") == "a hundred one dalmatians"
    assert normalize_text("a hundred and cats") == "a hundred and cats"  # not followed by a number word


def test_punctuation_and_symbols_become_spaces_but_inword_apostrophes_stay():
    assert normalize_text("Forty-two! black/white, (e-mail)") == "forty two black white e mail"
    assert normalize_text("'quoted' the dogs' o'clock $5 #1") == "quoted the dogs o'clock five one"


def test_whitespace_is_collapsed_and_stripped():
    assert normalize_text("  a\tb \n\n c\u00a0d  ") == "a b c d"


def test_nothing_left_gives_an_empty_string():
    assert normalize_text("?! ...") == ""
    assert normalize_text("") == ""


def test_normalising_twice_changes_nothing():
    text = "Don’t pay $1,000 for 21st-century 3.5 GHz CPUs, OK?"
    assert normalize_text(normalize_text(text)) == normalize_text(text)


def test_non_string_input_is_a_type_error():
    with pytest.raises(TypeError, match="text must be a str, got int"):
        normalize_text(42)

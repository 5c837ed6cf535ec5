from __future__ import annotations

import random
import time

import pytest

from datasets_app.distillation.engine.filters import (DEFAULT_REFUSALS, REASONS, DuplicateIndex, QualityConfig,
                                                      Rejection, answer_problem, word_count)
from datasets_app.distillation.engine.types import Answer
from datasets_app.engine.dedup import DEFAULT_SHINGLE, DEFAULT_THRESHOLD, DedupConfig

PROMPT = "Explain briefly why the sky looks blue during the day."
GOOD = ("The sky looks blue because air molecules scatter short blue wavelengths of sunlight much more "
        "strongly than long red ones, so blue light reaches our eyes from every direction.")
LONG_ANSWER = (
    "Photosynthesis is the process plants use to turn light into chemical energy. Chlorophyll in the "
    "chloroplasts absorbs mostly red and blue light, and that energy splits water molecules, releasing "
    "oxygen as a by-product. The energy is stored briefly in ATP and NADPH, which the Calvin cycle then "
    "uses to fix carbon dioxide from the air into sugars. Those sugars feed the plant's growth and, "
    "through food chains, almost every other living thing on Earth."
)
CONFIG = QualityConfig()


def problem(text: str, prompt: str = PROMPT, config: QualityConfig = CONFIG, **kw) -> Rejection | None:
    return answer_problem(prompt, Answer(text=text, **kw), config)


def test_config_defaults_follow_the_dataset_dedup():
    assert CONFIG.near_threshold == DEFAULT_THRESHOLD == DedupConfig().threshold
    assert CONFIG.shingle_size == DEFAULT_SHINGLE == DedupConfig().shingle_size
    assert CONFIG.min_words == 3 and CONFIG.check_language and CONFIG.language_min_confidence == 0.9
    assert CONFIG.refusal_patterns == DEFAULT_REFUSALS


def test_every_reason_has_a_label():
    for code in ("empty", "refusal", "cut_off", "too_short", "language", "duplicate", "near_duplicate", "echo",
                 "judge", "judge_error", "teacher_error", "not_best", "manual"):
        assert REASONS[code]


def test_a_good_answer_passes():
    assert problem(GOOD) is None


@pytest.mark.parametrize("text", ["", "   \n\t "])
def test_empty_answer_is_rejected(text):
    assert problem(text).reason == "empty"


def test_answer_with_only_reasoning_is_empty():
    assert problem("<think>Let me think about scattering...</think>\n").reason == "empty"


def test_empty_answer_cut_off_while_thinking_says_so():
    rejection = problem("", finish_reason="length", tokens_out=2048)
    assert rejection.reason == "empty" and "2048 tokens" in rejection.detail


@pytest.mark.parametrize("text", [
    "I'm sorry, but I can't help with that request.",
    "I’m sorry, but I can’t help with that.",  # curly apostrophes
    "Im sorry but I cannot do this.",
    "I am sorry, but I am unable to assist with that.",
    "I cannot help with creating malware, but here is some general information about security practices that "
    "might interest you, including how antivirus engines detect suspicious behaviour on a computer.",
    "I cannot provide that information.",
    "I can't assist with that.",
    "I can’t help with this one.",
    "As an AI language model, I cannot browse the internet.",
    "As an AI, I can't have opinions.",
    "I won't be able to write that for you.",
    "I am unable to comply with this request.",
    "I'm unable to help with that.",
    "I don't feel comfortable writing that story.",
    "I don’t feel comfortable helping with this.",
    "I must respectfully decline.",
    '"I\'m sorry, but I can\'t help with that."',  # quoted
    "Unfortunately, I cannot help with that.",  # short: anywhere counts
    "Sorry, I can't do that.",
])
def test_refusal_phrasings_are_rejected(text):
    rejection = problem(text)
    assert rejection is not None and rejection.reason == "refusal", text


def test_a_long_answer_that_says_sorry_later_is_not_a_refusal():
    text = (GOOD + " Sorry if this is more detail than you wanted. " + LONG_ANSWER + " A support agent might write: "
            "'I'm sorry, but I can't refund this order', and that sentence is only an example here.")
    assert problem(text) is None


def test_a_refusal_after_reasoning_is_a_refusal():
    assert problem("<think>The user wants X. That is not allowed.</think>I can't help with that.").reason == "refusal"


def test_provider_refusal_is_a_refusal_even_with_empty_text():
    rejection = problem("", finish_reason="refusal", refusal="I'm sorry, I cannot assist with that.")
    assert rejection.reason == "refusal" and "cannot assist" in rejection.detail
    assert problem(GOOD, finish_reason="refusal").reason == "refusal"
    assert problem(GOOD, finish_reason="content_filter").reason == "refusal"


def test_custom_refusal_patterns_replace_the_defaults():
    config = QualityConfig(refusal_patterns=(r"nope\b",))
    assert problem("Nope, not doing that today my friend.", config=config).reason == "refusal"
    assert problem("I can't help with that.", config=config) is None


def test_cut_off_answer_names_the_token_limit():
    rejection = problem(GOOD, finish_reason="length", tokens_out=512)
    assert rejection == Rejection("cut_off", "stopped at max_tokens (512 tokens)")


def test_refusal_comes_before_cut_off():
    assert problem("I'm sorry, but I can't continue this story.", finish_reason="length").reason == "refusal"


def test_too_short_answer_says_the_counts():
    rejection = problem("Blue scattering.")
    assert rejection.reason == "too_short"
    assert "2 words" in rejection.detail and "3" in rejection.detail


def test_min_words_is_configurable():
    assert problem("Twelve.", prompt="What is 15% of 80?", config=QualityConfig(min_words=1)) is None


def test_reasoning_words_count_towards_the_length():
    assert problem("<reasoning>15% of 80 is 0.15 times 80, which is 12.</reasoning>\n\n12") is None


def test_cjk_characters_count_as_words():
    assert word_count("天空是蓝色的") == 6
    assert word_count("the sky is blue") == 4


def test_answer_in_another_language_than_the_prompt_is_rejected():
    french = ("Le ciel paraît bleu parce que les molécules de l'air diffusent beaucoup plus la lumière bleue "
              "du soleil que la lumière rouge, et cette lumière nous arrive de toutes les directions.")
    rejection = problem(french)
    assert rejection.reason == "language"
    assert "the prompt is 'en', the answer 'fr'" in rejection.detail


def test_same_language_in_french_passes():
    prompt = "Explique pourquoi le ciel est bleu pendant la journée, s'il te plaît."
    french = ("Le ciel paraît bleu parce que les molécules de l'air diffusent beaucoup plus la lumière bleue "
              "du soleil que la lumière rouge.")
    assert problem(french, prompt=prompt) is None


def test_short_texts_are_not_judged_on_language():
    assert problem("Le ciel est bleu.", prompt="Why is the sky blue?") is None  # 4 words each


def test_language_check_can_be_turned_off():
    french = ("Le ciel paraît bleu parce que les molécules de l'air diffusent beaucoup plus la lumière bleue "
              "du soleil que la lumière rouge.")
    assert problem(french, config=QualityConfig(check_language=False)) is None


def test_code_does_not_make_an_answer_foreign():
    answer = ("Here is a function that reverses a list in Python:\n```python\ndef rev(xs):\n    return xs[::-1]\n"
              "for i in range(10): print(rev([i, i + 1]))\n```\nIt uses slicing with a negative step.")
    assert problem(answer, prompt="Write a Python function that reverses a list, please.") is None


# --- duplicates ----------------------------------------------------------------------------------

def test_exact_duplicate_of_a_kept_answer_names_the_item():
    index = DuplicateIndex(CONFIG)
    assert index.check(GOOD) is None
    index.add(4, GOOD)
    # normalize(): case, punctuation and spacing do not make a new answer
    assert index.check(GOOD.upper().replace(",", "")) == Rejection("duplicate", "same text as item #4")


def test_near_duplicate_with_one_word_changed_is_caught():
    index = DuplicateIndex()
    index.add(1, LONG_ANSWER)
    rejection = index.check(LONG_ANSWER.replace("briefly", "shortly"))
    assert rejection.reason == "near_duplicate"
    assert "item #1" in rejection.detail and "similarity 0.9" in rejection.detail


def test_different_answers_are_not_duplicates():
    index = DuplicateIndex()
    index.add(1, LONG_ANSWER)
    index.add(2, GOOD)
    assert index.check("Mitochondria produce most of a cell's ATP through oxidative phosphorylation, using "
                       "oxygen and the energy in nutrients such as glucose and fatty acids.") is None


def test_answer_that_echoes_its_prompt_is_an_echo():
    index = DuplicateIndex()
    index.add_prompt(PROMPT, key=7)
    assert index.check(PROMPT) == Rejection("echo", "repeats the prompt of item #7")
    assert index.check(PROMPT.lower() + "!!") == Rejection("echo", "repeats the prompt of item #7")


def test_answer_nearly_repeating_a_prompt_is_an_echo():
    index = DuplicateIndex()
    index.add_prompt(LONG_ANSWER)  # a long prompt, e.g. a text to rephrase
    rejection = index.check(LONG_ANSWER.replace("oxygen", "O2"))
    assert rejection.reason == "echo" and "a prompt" in rejection.detail and "similarity" in rejection.detail


def test_prompts_are_not_answers():
    index = DuplicateIndex()
    index.add_prompt(PROMPT)
    assert len(index) == 0
    index.add(1, GOOD)
    assert len(index) == 1


def test_a_near_duplicate_under_the_threshold_passes():
    index = DuplicateIndex(QualityConfig(near_threshold=0.99))
    index.add(1, LONG_ANSWER)
    assert index.check(LONG_ANSWER.replace("briefly", "shortly")) is None


def test_the_closest_match_is_reported_and_ties_go_to_the_first_item():
    index = DuplicateIndex()
    index.add(1, LONG_ANSWER.replace("oxygen", "O2").replace("sugars", "glucose"))
    index.add(2, LONG_ANSWER.replace("oxygen", "O2"))
    index.add(3, LONG_ANSWER.replace("oxygen", "O2"))  # same text as 2: not added twice
    assert "item #2" in index.check(LONG_ANSWER).detail


def test_rebuilding_the_index_gives_the_same_verdicts():
    rng = random.Random(3)
    words = [f"word{i}" for i in range(300)]
    answers = [" ".join(rng.choice(words) for _ in range(60)) for _ in range(50)]
    answers += [a.replace(a.split()[10], "changed", 1) for a in answers[:10]]

    def run(index: DuplicateIndex) -> list[Rejection | None]:
        verdicts = []
        for key, text in enumerate(answers):
            verdict = index.check(text)
            verdicts.append(verdict)
            if verdict is None:
                index.add(key, text)
        return verdicts

    first, second = run(DuplicateIndex()), run(DuplicateIndex())
    assert first == second
    assert [v.reason for v in first[50:]] == ["near_duplicate"] * 10
    # resume: the kept answers add()-ed again answer the same for what comes next
    resumed = DuplicateIndex()
    for key, text in enumerate(answers[:50]):
        resumed.add(key, text)
    assert [resumed.check(t) for t in answers[50:]] == first[50:]


def test_ten_thousand_answers_are_indexed_quickly():
    # Measured on one core: check() + add() of 10k answers of 100 words took 3-4.5 s (the target is
    # under 10 s); not asserted, machines differ.
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(5000)]
    index = DuplicateIndex()
    started = time.perf_counter()
    for key in range(10_000):
        text = " ".join(rng.choice(vocab) for _ in range(100))
        if index.check(text) is None:
            index.add(key, text)
    elapsed = time.perf_counter() - started
    assert len(index) == 10_000
    print(f"10k answers indexed in {elapsed:.1f} s")

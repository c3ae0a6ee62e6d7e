"""AUTOMATIC1111's prompt syntax (generation.prompt_syntax): its documented examples, BREAK, LoRA tags
and the problems a form shows next to the prompt field. No torch, no database."""
from __future__ import annotations

import pytest

from generation.prompt_syntax import BREAK, LoraTag, check_prompt, extract_lora_tags, parse_prompt_attention


# The examples in the docstring of A1111's modules/prompt_parser.py `parse_prompt_attention`, verbatim.
A1111_EXAMPLES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ("a ", 1.0), ("house", 1.5730000000000004), (" ", 1.1), ("on", 1.0), (" a ", 1.1),
            ("hill", 0.55), (", sun, ", 1.1), ("sky", 1.4641000000000006), (".", 1.1),
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), A1111_EXAMPLES)
def test_a1111_documented_examples_parse_to_the_same_weights(text, expected):
    assert parse_prompt_attention(text) == expected  # the same floats, bit for bit


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("", 1.0)]),
        ("[faded]", [("faded", 1 / 1.1)]),
        ("((a:2):0.5)", [("a", 1.0)]),
        ("(x:-1)", [("x", -1.0)]),
        ("(x:.5)", [("x", 0.5)]),
        ("a) b] c:", [("a) b] c:", 1.0)]),  # closing brackets with nothing open are text
        ("a :1.2) b", [("a :1.2) b", 1.0)]),  # an explicit weight with no bracket open is text too
        ("\\\\ \\[x\\)", [("\\ [x)", 1.0)]),
        ("a\\b", [("ab", 1.0)]),  # a lone backslash vanishes, as in A1111
        ("(x:abc)", [("x:abc", 1.1)]),  # not a number: literal text in brackets, as in A1111
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
    ],
)
def test_edge_cases_follow_a1111(text, expected):
    assert parse_prompt_attention(text) == [(t, pytest.approx(w)) for t, w in expected]


def test_break_is_a_marker_between_pieces_and_eats_its_spaces():
    assert parse_prompt_attention("a red circle BREAK on blue") == [("a red circle", 1.0), BREAK, ("on blue", 1.0)]
    assert parse_prompt_attention("BREAKFAST") == [("BREAKFAST", 1.0)]  # only the whole word


def test_break_inside_brackets_is_still_a_break_and_keeps_the_weights_around_it():
    assert parse_prompt_attention("(a BREAK b:1.5)") == [("a", 1.5), BREAK, ("b", 1.5)]


def test_lora_tags_are_extracted_with_a1111_default_weight_and_removed_from_the_text():
    text, tags = extract_lora_tags("a <lora:ink_style:0.8> cat, <lora:sks dog> <lyco:lyco1:0.5:0.25>")
    assert text == "a  cat,  "
    assert tags == [LoraTag("ink_style", 0.8), LoraTag("sks dog", 1.0), LoraTag("lyco1", 0.5, 0.25)]
    assert tags[0].unet_weight == 0.8
    assert [t.tag for t in tags] == ["<lora:ink_style:0.8>", "<lora:sks dog:1>", "<lora:lyco1:0.5:0.25>"]


def test_named_lora_weights_as_a1111_reads_them():
    # te= overrides the first weight; the UNet's follows the text encoder's unless given (A1111's Lora extension)
    _, tags = extract_lora_tags("<lora:x:1:te=0.3> <lora:y:unet=0.2> <lora:z:0.5:0.7:te=0.1>")
    assert tags == [LoraTag("x", 0.3, 0.3), LoraTag("y", 1.0, 0.2), LoraTag("z", 0.1, 0.7)]


def test_a_lora_tag_with_a_bad_weight_is_a_problem_and_not_returned():
    text, tags = extract_lora_tags("a <lora:ink:strong> cat")
    assert (text, tags) == ("a  cat", [])
    problems = check_prompt("a <lora:ink:strong> cat")
    assert len(problems) == 1 and "<lora:ink:strong>" in problems[0] and "not a number" in problems[0]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("<lora::0.5>", "no name"),
        ("<hypernet:anime:1>", "not supported"),
        ("(red:1.2.3) circle", "1.2.3"),
        ("(red:.) circle", "not a number"),
        ("a [cat:dog:0.5]", "Prompt editing"),
        ("a [cat:10]", "Prompt editing"),
        ("a [cat|dog]", "alternation"),
        ("<lora:x:1:dyn=4>", "dyn"),
        ("<lora:x:1e9>", "between"),
    ],
)
def test_problems_name_what_is_wrong(text, fragment):
    problems = check_prompt(text)
    assert problems and fragment in " ".join(problems)


@pytest.mark.parametrize(
    "text",
    [
        "a (red:1.5) circle on a [blue] background",
        "(unbalanced [brackets",
        "(x:abc)",
        "escaped \\[cat:dog:0.5\\] brackets",
        "a <lora:ink:0.8> BREAK <lora:x> cat",
        "",
    ],
)
def test_prompts_a1111_accepts_have_no_problems(text):
    assert check_prompt(text) == []

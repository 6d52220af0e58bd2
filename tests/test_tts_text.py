"""Text read from a pipe, sentence splitting of streamed text, and text preparation for speech."""

import codecs
import os

import pytest

from localai.tts.sentences import SentenceSplitter, find_boundary
from localai.tts.text import integer_words, ordinal_words, prepare_for_speech, strip_markdown
from localai.tts.textin import text_chunks


@pytest.mark.parametrize("mark, encoding", [(codecs.BOM_UTF16_LE, "utf-16-le"), (codecs.BOM_UTF16_BE, "utf-16-be"),
                                            (codecs.BOM_UTF8, "utf-8"), (b"", "utf-8")],
                         ids=["utf-16-le", "utf-16-be", "utf-8-with-mark", "utf-8"])
def test_piped_text_is_utf16_after_its_byte_order_mark_and_utf8_otherwise(mark, encoding):
    """One byte a read: the mark and the characters (a surrogate pair too) arrive in pieces."""
    text = "Grüße, 東京 😀."
    reader, writer = os.pipe()
    os.write(writer, mark + text.encode(encoding))
    os.close(writer)
    with os.fdopen(reader) as stream:
        assert "".join(text_chunks(stream, size=1)) == text


@pytest.mark.timeout(30)  # a reader that waited for the end of the text would hang here
def test_utf16_text_is_yielded_as_it_arrives():
    """`localai generate ... | localai speak` from PowerShell: a sentence is spoken before the rest is written."""
    reader, writer = os.pipe()
    with os.fdopen(reader) as stream:
        chunks = text_chunks(stream)
        os.write(writer, codecs.BOM_UTF16_LE + "Première phrase. ".encode("utf-16-le"))
        assert next(chunks) == "Première phrase. "  # the writer has not finished
        os.write(writer, "Deuxième.".encode("utf-16-le"))
        os.close(writer)
        assert "".join(chunks) == "Deuxième."


def split_streamed(text: str, step: int, **kwargs) -> list[str]:
    splitter = SentenceSplitter(**kwargs)
    sentences = []
    for i in range(0, len(text), step):
        sentences += splitter.feed(text[i:i + step])
    return sentences + splitter.flush()


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_abbreviations_initials_and_decimals_do_not_end_sentences(step):
    text = "Dr. Smith paid $3.50 for J. K. Rowling's book, e.g. the first one. Then he left! Did he? Yes."
    assert split_streamed(text, step) == [
        "Dr. Smith paid $3.50 for J. K. Rowling's book, e.g. the first one.",
        "Then he left!",
        "Did he?\nYes.",  # "Yes." alone is shorter than min_chars: joined to the one before it
    ]


@pytest.mark.parametrize("step", [1, 5, 1000])
def test_an_abbreviation_that_ends_a_sentence_ends_it_before_a_capital(step):
    text = "Bring pens, paper, etc. The shop opens at 9 a.m. Then we go, etc. and so on. Ask Dr. Who in the U.S. Army."
    assert split_streamed(text, step) == [
        "Bring pens, paper, etc.", "The shop opens at 9 a.m.", "Then we go, etc. and so on.",
        "Ask Dr. Who in the U.S. Army."]


@pytest.mark.parametrize("step", [1, 4, 1000])
def test_numbered_and_bulleted_lists_split_per_item(step):
    text = "Steps to follow:\n1. Open the lid.\n2. Pour 2.5 cups of water\n- stir well for a minute\n3. Done"
    assert split_streamed(text, step) == [
        "Steps to follow:", "1. Open the lid.", "2. Pour 2.5 cups of water", "- stir well for a minute", "3. Done",
    ]


def test_quotes_and_brackets_stay_with_their_sentence():
    assert split_streamed('He said "Stop right there." (He meant it.) Then silence.', 2) == [
        'He said "Stop right there."', "(He meant it.)", "Then silence.",
    ]


@pytest.mark.parametrize("step", [1, 1000])
def test_chinese_japanese_hindi_and_arabic_sentence_ends(step):
    assert split_streamed("今天天气很好。我们去公园吧！你觉得怎么样？他说「好。」然后走了。", step, min_chars=1) == [
        "今天天气很好。", "我们去公园吧！", "你觉得怎么样？", "他说「好。」", "然后走了。"]
    assert split_streamed("これはペンです。あれは本です。", step, min_chars=1) == ["これはペンです。", "あれは本です。"]
    assert split_streamed("यह पहला वाक्य है। यह दूसरा वाक्य है।", step) == ["यह पहला वाक्य है।", "यह दूसरा वाक्य है।"]
    assert split_streamed("هل أنت بخير؟ نعم، أنا بخير.", step, min_chars=1) == ["هل أنت بخير؟", "نعم، أنا بخير."]


def test_a_final_period_waits_for_the_next_character():
    splitter = SentenceSplitter(min_chars=1)
    assert splitter.feed("The value is 3.") == []
    assert splitter.feed("14 exactly. Next") == ["The value is 3.14 exactly."]
    assert splitter.flush() == ["Next"]
    assert splitter.flush() == []


@pytest.mark.parametrize("fence", ["```", "~~~"])
def test_fenced_code_stays_in_one_piece(fence):
    text = f"Run this:\n{fence}\nx = 1. y = 2.\nprint(x)\n{fence}\nThat prints one."
    sentences = split_streamed(text, 5)
    assert sentences[0].startswith(f"Run this:\n{fence}") and sentences[0].endswith(fence)
    assert sentences[1] == "That prints one."
    assert find_boundary(f"{fence}\nunclosed. still code. ") is None
    # spoken: no code, and the sentence after the block is not lost with it
    assert [prepare_for_speech(s) for s in sentences] == ["Run this:", "That prints one."]


@pytest.mark.parametrize("step", [1, 10_000])
def test_a_fence_opens_a_line_and_one_in_prose_holds_nothing_back(step):
    """Markdown fences start a line (indented up to 3 spaces), the closing one too: "use ``` fences"
    in prose neither waits for a closing fence nor drops the rest of the answer as code."""
    prose = "Write blocks with ``` fences. Then more text here. And the end."
    assert split_streamed(prose, step) == ["Write blocks with ``` fences.", "Then more text here.", "And the end."]
    assert [prepare_for_speech(s) for s in split_streamed(prose, step)][0] == "Write blocks with fences."
    indented = "Look:\n  ~~~\na. b. ~~~ c.\n   ~~~\nDone here now."
    assert split_streamed(indented, step) == ["Look:\n~~~\na. b. ~~~ c.\n   ~~~", "Done here now."]
    assert prepare_for_speech("Look:\n  ~~~\na. b.\n  ~~~\nDone.") == "Look: Done."


def test_task_boxes_closing_hashes_and_escaped_marks_are_not_spoken():
    assert prepare_for_speech("- [ ] todo\n- [x] done it") == "todo. done it"
    assert prepare_for_speech("## Title ##\nBody.") == "Title. Body."
    assert prepare_for_speech(r"\*x\* and a\_b, \# not a heading") == "x and a b, not a heading"


def test_timestamps_and_times_with_seconds_are_said():
    assert prepare_for_speech("Logged at 2024-03-15T10:30:00Z by the job.") == \
        "Logged at March fifteenth, twenty twenty-four, ten thirty UTC by the job."
    assert prepare_for_speech("Built 2024-03-15 14:07:09.123+02:00.") == \
        "Built March fifteenth, twenty twenty-four, fourteen oh seven and nine seconds."
    assert prepare_for_speech("It took 3:45:12 in total.") == "It took three forty-five and twelve seconds in total."


def test_html_tags_are_dropped_but_a_comparison_is_no_tag():
    assert prepare_for_speech("if a<b and c>d then") == "if a<b and c>d then"
    tags = 'Use <br> or <br/>, <b>bold</b> and <a href="x">a link</a> <img src="a.png" alt="x" />.'
    assert prepare_for_speech(tags) == "Use or, bold and a link."


@pytest.mark.parametrize("step", [7, 10_000])
def test_run_on_text_is_cut_at_a_comma(step):
    text = ("word " * 30 + ", ") * 4 + "and the end. " + "more " * 50 + "\n```\n" + "code " * 50 + "\n```\n"
    sentences = split_streamed(text, step, max_chars=200)
    assert sentences[-1] == "```\n" + "code " * 50 + "\n```"  # a code block stays whole
    assert len(sentences) > 3 and all(len(s) <= 200 for s in sentences[:-1])
    assert " ".join(sentences).split() == text.split()


def test_markdown_code_and_urls_are_removed():
    text = "# Title\n**Bold** and _it_ with `code`, see [docs](https://x.y) or https://a.b/c.\n```py\nprint(1)\n```"
    plain = strip_markdown(text)
    assert "print" not in plain and "https" not in plain and "*" not in plain and "#" not in plain
    assert "Bold and it with code, see docs or" in " ".join(plain.split())


def test_numbers_are_said_in_english():
    assert integer_words(0) == "zero"
    assert integer_words(1_234_567) == "one million two hundred thirty-four thousand five hundred sixty-seven"
    assert ordinal_words(21) == "twenty-first" and ordinal_words(40) == "fortieth"
    spoken = prepare_for_speech("It is 3.5% of $2.50, the 2nd of 1,000 items at -4 degrees, version 3.10.2.")
    assert spoken == ("It is three point five percent of two dollars and fifty cents, the second of "
                      "one thousand items at minus four degrees, version three point ten point two.")


@pytest.mark.parametrize("written, spoken", [
    ("3.5GB of RAM, 5kg, 1.5x faster, 4K", "three point five GB of RAM, five kg, one point five x faster, four K"),
    ("from 1990-2000, pages 10-20, 1.5–2.5 kg", "from nineteen ninety to two thousand, pages ten to "
                                              "twenty, one point five to two point five kg"),
    ("In 1969, 1500 people; in 2005 and 2024, 1,969 or 3000 or 1969.5 km",
     "In nineteen sixty-nine, fifteen hundred people; in two thousand five and twenty twenty-four, "
     "one thousand nine hundred sixty-nine or three thousand or one thousand nine hundred sixty-nine point five km"),
    ("It ended 3-2.", "It ended three two."),
    ("$1.00, $0.99, $0.01, $5.5, -$5",
     "one dollar, ninety-nine cents, one cent, five point five dollars, minus five dollars"),
    ("$5 million and €2.5bn", "five million dollars and two point five billion euros"),
    ("On 2024-03-15 at 9:05, 10:30 pm or 12:00", "On March fifteenth, twenty twenty-four at nine oh five, "
                                                 "ten thirty pm or twelve o'clock"),
    ("the 1990s and the 80s", "the nineteen nineties and the eighties"),
    ("a .5 chance", "a point five chance"),
    ("Call 555-1234 or (555) 123-4567.", "Call five five five, one two three four or "
                                         "five five five, one two three, four five six seven."),
    ("+1 555-123-4567, 1-800-555-0199 or 555.123.4567",
     "plus one, five five five, one two three, four five six seven, one, eight zero zero, five five five, "
     "zero one nine nine or five five five, one two three, four five six seven"),
])
def test_numbers_with_units_ranges_money_dates_and_times(written, spoken):
    assert prepare_for_speech(written) == spoken


def test_html_character_references_are_decoded_not_spelled():
    assert prepare_for_speech("Tom &amp; Jerry&nbsp;say &quot;it&#39;s 5 &lt; 6&quot;.") == 'Tom and Jerry say "it\'s five < six".'
    assert prepare_for_speech("AT&T and Q&A") == "AT and T and Q and A"


def test_control_characters_and_undecodable_bytes_are_not_spoken():
    assert prepare_for_speech("\ufeffHello \ufffd\ufffd world.\x00\x01\x7f\u200b") == "Hello world."


def test_numbers_stay_digits_for_other_languages():
    assert prepare_for_speech("Il a 3 chats.", "fr") == "Il a 3 chats."


def test_lines_become_phrases_and_empty_text_stays_empty():
    assert prepare_for_speech("- eggs\n- milk") == "eggs. milk"
    assert prepare_for_speech("```\ncode only\n```") == ""
    assert prepare_for_speech("**") == ""

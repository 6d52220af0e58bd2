"""Text as it should be spoken: Markdown, code and URLs removed, numbers said in words (English).

    prepare_for_speech("**Total:** 3.5% of `x` (see https://a.b)", "en")
    -> "Total: three point five percent of x (see )" with spaces tidied
"""

from __future__ import annotations

import re

_FENCED_CODE = re.compile(r"```.*?(```|$)|~~~.*?(~~~|$)", re.DOTALL)
_INDENTED_CODE = re.compile(r"^(?: {4}|\t).*$", re.MULTILINE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"(?:https?://|www\.)[^\s)\]>]*[^\s)\]>.,;:!?]", re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][^>]*>")
_INLINE_CODE = re.compile(r"`([^`]*)`")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE)
_QUOTE = re.compile(r"^\s{0,3}>\s?", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+", re.MULTILINE)
_RULE = re.compile(r"^\s*(?:[-*_]\s*){3,}$", re.MULTILINE)
_TABLE_DIVIDER = re.compile(r"^\s*\|?(?:\s*:?-+:?\s*\|)+\s*:?-*:?\s*$", re.MULTILINE)
_EMPHASIS = re.compile(r"(?<!\w)(\*\*|__|\*|_|~~)(?=\S)(.+?)(?<=\S)\1(?!\w)")
_LINE_END = re.compile(r"(?<=[\w)\]\"'])[ \t]*\n+")

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10 ** 12, "trillion"), (10 ** 9, "billion"), (10 ** 6, "million"), (1000, "thousand"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}
_VERSION = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?!\w|\.\d)")
_NUMBER = re.compile(
    r"(?<![\w.])(?P<currency>[$€£])?(?P<sign>(?<![\w.])-)?(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
    r"(?P<ordinal>st|nd|rd|th)?(?P<percent>\s?%)?(?![\w])"
)
_CURRENCY = {"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("pound", "pounds")}


def strip_markdown(text: str) -> str:
    """Plain prose from Markdown: code blocks and URLs dropped, links and emphasis reduced to their words."""
    text = _FENCED_CODE.sub(" ", text)
    text = _INDENTED_CODE.sub(" ", text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _HTML_TAG.sub(" ", text)
    text = _INLINE_CODE.sub(r"\1", text)
    text = _TABLE_DIVIDER.sub(" ", text)
    text = _RULE.sub(" ", text)
    text = _HEADING.sub("", text)
    text = _QUOTE.sub("", text)
    text = _BULLET.sub("", text)
    for _ in range(2):  # nested emphasis, e.g. ***both***
        text = _EMPHASIS.sub(r"\2", text)
    return text.replace("|", " ")


def integer_words(n: int) -> str:
    """0 <= n < 10**15 in English words: 1234 -> 'one thousand two hundred thirty-four'."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    if n < 1000:
        hundreds, rest = divmod(n, 100)
        return f"{_ONES[hundreds]} hundred" + (f" {integer_words(rest)}" if rest else "")
    for scale, name in _SCALES:
        if n >= scale:
            high, rest = divmod(n, scale)
            return f"{integer_words(high)} {name}" + (f" {integer_words(rest)}" if rest else "")
    raise ValueError(n)


def ordinal_words(n: int) -> str:
    words = integer_words(n)
    head, sep, last = words.rpartition(" " if "-" not in words.split(" ")[-1] else "-")
    if last in _ORDINAL_WORDS:
        last = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return head + sep + last


def _say_number(match: re.Match) -> str:
    digits = match["int"].replace(",", "")
    if len(digits) > 15:
        return " ".join(_ONES[int(d)] for d in digits)
    value = int(digits)
    if match["ordinal"] and not match["frac"]:
        words = ordinal_words(value)
    else:
        words = integer_words(value)
        if match["frac"] and not (match["currency"] and len(match["frac"]) == 2):
            words += " point " + " ".join(_ONES[int(d)] for d in match["frac"])
    if match["sign"]:
        words = "minus " + words
    if match["percent"]:
        words += " percent"
    if match["currency"]:
        singular, plural = _CURRENCY[match["currency"]]
        cents = int(match["frac"]) if match["frac"] and len(match["frac"]) == 2 else 0
        words += " " + (singular if value == 1 and not match["frac"] else plural)
        if cents:
            words += f" and {integer_words(cents)} cent" + ("s" if cents > 1 else "")
    return words


def verbalize_numbers(text: str) -> str:
    """'3.5%' -> 'three point five percent', '1,200' -> 'one thousand two hundred', '2nd' -> 'second'."""
    text = _VERSION.sub(lambda m: " point ".join(integer_words(int(p)) for p in m[0].split(".")), text)
    return _NUMBER.sub(_say_number, text)


def prepare_for_speech(text: str, lang: str = "en") -> str:
    """What a speech engine should read aloud ('' when nothing speakable is left)."""
    text = _LINE_END.sub(". ", strip_markdown(text))  # a line without end punctuation still ends a phrase
    if lang.lower().startswith("en"):
        text = verbalize_numbers(text.replace("&", " and "))
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?)\]])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r"\(\s*\)", "", text).strip()
    return text if re.search(r"\w", text) else ""

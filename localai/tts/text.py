"""Text as it should be spoken: Markdown, code and URLs removed, numbers said in words (English).

    prepare_for_speech("**Total:** 3.5% of `x` (see https://a.b)", "en")
    -> "Total: three point five percent of x (see )" with spaces tidied
"""

from __future__ import annotations

import html
import re

# a fence opens a line (indented by at most 3 spaces); "use ``` fences" in prose is no code block
_FENCED_CODE = re.compile(r"^ {0,3}(```|~~~).*?(?:\n {0,3}\1[^\n]*|\Z)", re.DOTALL | re.MULTILINE)
_INDENTED_CODE = re.compile(r"^(?: {4}|\t).*$", re.MULTILINE)
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_URL = re.compile(r"(?:https?://|www\.)[^\s)\]>]*[^\s)\]>.,;:!?]", re.IGNORECASE)
# a tag name, then attributes only where one has a value: "a<b and c>d" is a comparison, no tag
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9-]*(?:\s+[^<>=]*=[^<>]*)?\s*/?>")
_HTML_ENTITY = re.compile(r"&(?:[A-Za-z][A-Za-z0-9]{1,31}|#[0-9]{1,7}|#[xX][0-9A-Fa-f]{1,6});")  # &amp; &nbsp; &#39;
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")  # `x`, ``a `b` c``
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s*", re.MULTILINE)
_HEADING_CLOSE = re.compile(r"^(\s{0,3}#{1,6}\s.*?)\s+#+[ \t]*$", re.MULTILINE)  # "## Title ##"
_QUOTE = re.compile(r"^\s{0,3}>\s?", re.MULTILINE)
_BULLET = re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+(?:\[[ xX]\]\s+)?", re.MULTILINE)  # a task's box too
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!|>~<])")  # \* is a literal *: no emphasis, no bullet
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
_MONTHS = "_ January February March April May June July August September October November December".split()
_VERSION = re.compile(r"(?<![\w.])\d+(?:\.\d+){2,}(?!\w|\.\d)")
_ISO_DATE = re.compile(r"(?<![\w.-])(\d{4})-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])(?![\w-])")
_TIME = re.compile(r"(?<![\w.:])([01]?\d|2[0-3]):([0-5]\d)(?::(?P<sec>[0-5]\d))?(?![:\d])"
                   r"(?P<ampm>\s?[AaPp]\.?[Mm]\b)?")
# 2024-03-15T10:30:00Z, 2024-03-15 10:30: the date, then the time (seconds' fraction and offset left out)
_ISO_DATETIME = re.compile(r"(?<![\w.-])(\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01]))[T ]"
                           r"((?:[01]\d|2[0-3]):[0-5]\d(?::[0-5]\d)?)(?:\.\d+)?(?P<zone>Z|[+-]\d\d:?\d\d)?(?![\w:])")
_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_RANGE = re.compile(rf"(?<![\w.,−-])({_DECIMAL})(-|\s?–\s?)({_DECIMAL})(?![\w−-]|[.,]\d)")
# 555-1234, 555-123-4567, (555) 123-4567, 555.123.4567, +1 555-123-4567, 1-800-555-1234: digit by digit
_PHONE = re.compile(r"(?<![\w.,+-])(?:\+\d{1,3}[ -]?|1-)?"
                    r"(?:\(\d{3}\) ?\d{3}-\d{4}|\d{3}-\d{3}-\d{4}|\d{3}\.\d{3}\.\d{4}|[2-9]\d\d-\d{4})(?![\w-]|[.,]\d)")
_BARE_FRACTION = re.compile(r"(?<![\w.])\.(\d+)(?![\w.])")  # .5
_NUMBER = re.compile(
    r"(?<![\w.])(?P<sign>[-−](?=[$€£]?\d))?(?P<currency>[$€£])?(?P<sign2>(?<=[$€£])[-−])?"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?:\.(?P<frac>\d+))?"
    r"(?:(?P<scale>\s(?:thousand|million|billion|trillion)\b)|(?P<percent>\s?%)|(?P<suffix>[A-Za-z]+))?(?![\w])"
)
_CURRENCY = {"$": ("dollar", "dollars"), "€": ("euro", "euros"), "£": ("pound", "pounds")}
_CURRENCY_SCALES = {"k": "thousand", "K": "thousand", "M": "million", "B": "billion", "bn": "billion"}
# control characters, undecodable bytes, a byte-order mark, zero-width spaces
_UNSPEAKABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ufffd\ufeff\u200b]")


def strip_markdown(text: str) -> str:
    """Plain prose from Markdown: code blocks and URLs dropped, links and emphasis reduced to their words,
    HTML tags dropped and character references (&amp; &nbsp; &#39;) decoded."""
    text = _FENCED_CODE.sub(" ", text)
    text = _INDENTED_CODE.sub(" ", text)
    # an escaped mark is no markup; the marks that are not spoken anyway go, punctuation stays
    text = _ESCAPE.sub(lambda m: " " if m[1] in "\\`*_[]#|>~<" else m[1], text)
    text = _IMAGE.sub(r"\1", text)
    text = _LINK.sub(r"\1", text)
    text = _URL.sub(" ", text)
    text = _HTML_TAG.sub(" ", text)
    text = _HTML_ENTITY.sub(lambda m: html.unescape(m[0]), text)  # before "&" is said "and"
    text = _INLINE_CODE.sub(r"\2", text).replace("`", " ")  # backticks left over open nothing
    text = _TABLE_DIVIDER.sub(" ", text)
    text = _RULE.sub(" ", text)
    text = _HEADING.sub("", _HEADING_CLOSE.sub(r"\1", text))
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


def year_words(n: int) -> str:
    """1999 -> 'nineteen ninety-nine', 2005 -> 'two thousand five', 1900 -> 'nineteen hundred'."""
    if not 1000 <= n < 10000 or 2000 <= n < 2010:
        return integer_words(n)
    high, low = divmod(n, 100)
    if low == 0:
        return f"{integer_words(high)} hundred"
    return f"{integer_words(high)} " + (f"oh {_ONES[low]}" if low < 10 else integer_words(low))


def _is_decade(digits: str) -> bool:
    """'80' of 'the 80s', '1990' of 'the 1990s'."""
    return digits.endswith("0") and (len(digits) == 2 or (len(digits) == 4 and 1100 <= int(digits) < 2100))


def _plain_year(match: re.Match) -> bool:
    """A bare 1001..2099 is said like a year, as TTS front ends do: 'in 1969', '1500 people'
    ('fifteen hundred'); with a comma, a sign, a unit or a currency it is a quantity."""
    plain = not any(match[group] for group in ("frac", "currency", "sign", "sign2", "scale", "percent", "suffix"))
    return plain and len(match["int"]) == 4 and 1000 < int(match["int"]) < 2100


def _plural(words: str) -> str:
    return words[:-1] + "ies" if words.endswith("y") else words + "s"


def _say_date(match: re.Match) -> str:
    year, month, day = (int(part) for part in match.groups())
    return f"{_MONTHS[month]} {ordinal_words(day)}, {year_words(year)}"


def _say_time(match: re.Match) -> str:
    hours, minutes = int(match[1]), int(match[2])
    if minutes == 0:
        words = integer_words(hours) + ("" if match["ampm"] else " o'clock")
    else:
        words = f"{integer_words(hours)} " + (f"oh {_ONES[minutes]}" if minutes < 10 else integer_words(minutes))
    if match["sec"] and int(match["sec"]):  # 3:45:12; 10:30:00 is said as 10:30
        seconds = int(match["sec"])
        words += f" and {integer_words(seconds)} second" + ("" if seconds == 1 else "s")
    return words + (f" {match['ampm'].strip()}" if match["ampm"] else "")


def _say_phone(match: re.Match) -> str:
    """'+1 (555) 123-4567' -> 'plus one, five five five, one two three, four five six seven'."""
    groups = re.findall(r"\d+", match[0])
    words = ", ".join(" ".join(_ONES[int(d)] for d in group) for group in groups)
    return ("plus " if match[0].startswith("+") else "") + words


def _say_range(match: re.Match) -> str:
    """'10-20' -> '10 to 20' (then said as numbers); '3-2' (a score, say) only loses its hyphen."""
    low, _, high = match.groups()
    if len(low) == 3 and len(high) == 4 and "-" in match[2]:  # 555-1234, a phone number: left alone
        return match[0]
    return f"{low} to {high}" if float(low.replace(",", "")) < float(high.replace(",", "")) else f"{low} {high}"


def _say_number(match: re.Match) -> str:
    digits = match["int"].replace(",", "")
    if len(digits) > 15:
        return " ".join(_ONES[int(d)] for d in digits)
    value, frac, currency, suffix = int(digits), match["frac"], match["currency"], match["suffix"] or ""
    cents = int(frac) if currency and frac and len(frac) == 2 else None
    if suffix in ("st", "nd", "rd", "th") and not frac:
        words, suffix = ordinal_words(value), ""
    elif suffix == "s" and _is_decade(match["int"]) and not (frac or currency):
        words, suffix = _plural(year_words(value)), ""  # the 1990s, the 80s
    elif _plain_year(match):
        words = year_words(value)
    else:
        words = integer_words(value)
        if frac and cents is None:
            words += " point " + " ".join(_ONES[int(d)] for d in frac)
    scale = (match["scale"] or "").strip() or (_CURRENCY_SCALES.get(suffix, "") if currency else "")
    if currency:
        suffix = "" if scale else suffix
        words = _say_money(words, value, cents, scale, *_CURRENCY[currency])
    elif scale:
        words += f" {scale}"
    if match["sign"] or match["sign2"]:
        words = "minus " + words
    if match["percent"]:
        words += " percent"
    return words + (f" {suffix}" if suffix else "")


def _say_money(words: str, value: int, cents: int | None, scale: str, singular: str, plural: str) -> str:
    """$1.00 -> 'one dollar', $0.99 -> 'ninety-nine cents', $5 million -> 'five million dollars'.
    `words`: the amount without its cents (two digits after the point are cents)."""
    if scale:
        return f"{words} {scale} {plural}"
    cent_words = f"{integer_words(cents)} cent" + ("s" if cents > 1 else "") if cents else ""
    if value == 0 and cent_words:
        return cent_words
    words += " " + (singular if words == "one" else plural)
    return words + (f" and {cent_words}" if cent_words else "")


def verbalize_numbers(text: str) -> str:
    """'3.5%' -> 'three point five percent', '1,200' -> 'one thousand two hundred', '2nd' -> 'second',
    '2024-03-15' -> 'March fifteenth, twenty twenty-four', '10:30' -> 'ten thirty', '5-10' -> 'five to ten',
    '2024-03-15T10:30:00Z' -> the date, then 'ten thirty UTC'."""
    text = _PHONE.sub(_say_phone, text)
    text = _VERSION.sub(lambda m: " point ".join(integer_words(int(p)) for p in m[0].split(".")), text)
    text = _ISO_DATETIME.sub(lambda m: f"{m[1]}, {m[2]}" + (" UTC" if m["zone"] == "Z" else ""), text)
    text = _ISO_DATE.sub(_say_date, text)
    text = _TIME.sub(_say_time, text)
    text = _RANGE.sub(_say_range, text)
    text = _BARE_FRACTION.sub(lambda m: "point " + " ".join(_ONES[int(d)] for d in m[1]), text)
    return _NUMBER.sub(_say_number, text)


def prepare_for_speech(text: str, lang: str = "en") -> str:
    """What a speech engine should read aloud ('' when nothing speakable is left)."""
    text = strip_markdown(_UNSPEAKABLE.sub(" ", text))
    text = _LINE_END.sub(". ", text)  # a line without end punctuation still ends a phrase
    if lang.lower().startswith("en"):
        text = verbalize_numbers(text.replace("&", " and "))
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\s+([,.;:!?)\]])", r"\1", text)
    text = re.sub(r"([(\[])\s+", r"\1", text)
    text = re.sub(r"\(\s*\)", "", text).strip()
    return text if re.search(r"\w", text) else ""

"""Chinese text normalisation before pinyin: numbers, dates, money, phone numbers -> Chinese words.

Reproduces the default `TextNorm()` call of the reference (`zh_num2words.py`): the non-standard-word
rules in their order, then every punctuation mark becomes an ASCII comma. Only the simplified,
"mid" numbering system (亿 = 10^8, 兆 = 10^12, ...) is needed.
"""

from __future__ import annotations

import re
import string

_DIGITS = "零一二三四五六七八九"
_LIANG = "两"
_POINT = "点"
# (power of ten, character): 十 百 千 万, then the larger units of the "mid" system in steps of 10^4.
_UNITS = ((1, "十"), (2, "百"), (3, "千"), (4, "万")) + tuple(
    ((index + 2) * 4, char) for index, char in enumerate("亿兆京垓秭穰沟涧正载")
)

_CURRENCY_UNITS = "((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
_QUANTIFIERS = (
    "([匹张座回场尾条个首阙阵网炮顶丘棵只支袭辆挑担颗壳窠曲墙群腔砣客贯扎捆刀令打手罗坡山岭江溪钟队单双对出口"
    "头脚板跳枝件贴针线管名位身堂课本页家户层丝毫厘分钱两斤铢石钧锱忽寸尺丈里寻常铺程撮勺合升斗盘碗碟叠桶笼盆"
    "盒杯斛锅簋篮罐瓶壶卮盏箩箱煲啖袋钵年月日季刻时周天秒旬纪岁世更夜春夏秋冬代伏辈丸泡粒幢堆根道面片块]"
    "|千克|微克|千米|微米)"
)
_DATE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
_MONEY = re.compile(r"\D+((\d+(\.\d+)?)[多余几]?" + _CURRENCY_UNITS + r"(\d" + _CURRENCY_UNITS + r"?)?)")
_MOBILE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_LANDLINE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION = re.compile(r"(\d+/\d+)")
_PERCENT = re.compile(r"(\d+(\.\d+)?%)")
_COUNTED = re.compile(r"(\d+(\.\d+)?)[多余几]?" + _QUANTIFIERS)
_DIGIT_STRING = re.compile(r"(\d{4,32})")
_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_LATIN_TWO_LATIN = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")  # P2P, B2B: the 2 is restored

_PUNCTUATION = (
    "！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟"
    "〰〾〿–—‘’‛“”„‟…‧﹏·〈〉-" + string.punctuation
)
_TO_COMMA = str.maketrans(_PUNCTUATION, "," * len(_PUNCTUATION))


def _place_value_symbols(digits: str) -> list[tuple[str, int]]:
    """Digits as ("digit", value) / ("unit", power) symbols, reading zeros the Chinese way (一百零五)."""
    stripped = digits.lstrip("0")
    if not stripped:
        return []
    if len(stripped) == 1:
        value = ("digit", int(stripped))
        return [("digit", 0), value] if len(digits) != len(stripped) else [value]
    power = next(power for power, _ in reversed(_UNITS) if power < len(stripped))
    return _place_value_symbols(digits[:-power]) + [("unit", power)] + _place_value_symbols(stripped[-power:])


def number_to_chinese(number: str, alt_two: bool = True, use_units: bool = True) -> str:
    """ "105" -> 一百零五, "2.5" -> 二点五, "10" -> 十; use_units=False reads digit by digit (codes, years)."""
    integer, _, decimals = number.partition(".")
    if use_units and len(integer) > 1:
        symbols = _place_value_symbols(integer)
    else:
        symbols = [("digit", int(char)) for char in integer]
    if decimals:
        symbols += [("point", 0)] + [("digit", int(char)) for char in decimals]
    unit_chars = dict(_UNITS)
    chars = []
    for index, (kind, value) in enumerate(symbols):
        if kind == "unit":
            chars.append(unit_chars[value])
        elif kind == "point":
            chars.append(_POINT)
        elif alt_two and value == 2 and _reads_liang(symbols, index):
            chars.append(_LIANG)
        else:
            chars.append(_DIGITS[value])
    result = "".join(chars)
    if result.startswith(_POINT):
        return _DIGITS[0] + result
    if len(result) >= 2 and result[0] == "一" and result[1] == "十":
        result = result[1:]
    return result


def _reads_liang(symbols: list[tuple[str, int]], index: int) -> bool:
    """二 is read 两 before a unit above 十 when nothing but a unit above 十 precedes it (两百, 两万)."""
    following = symbols[index + 1] if index + 1 < len(symbols) else None
    previous = symbols[index - 1] if index > 0 else None
    if following is None or following[0] != "unit" or following[1] == 1:
        return False
    return previous is None or (previous[0] == "unit" and previous[1] != 1)


def _digits(number: str) -> str:
    return number_to_chinese(number, alt_two=False, use_units=False)


def _date_to_chinese(date: str) -> str:
    year, sep, rest = date.strip().partition("年")
    if sep:
        year = _digits(year) + "年"
    else:
        year, rest = "", date
    month = day = ""
    if rest:
        month, sep, day = rest.strip().partition("月")
        if sep:
            month = number_to_chinese(month) + "月"
        else:
            month, day = "", date
        if day:
            day = number_to_chinese(day[:-1]) + day[-1]
    return year + month + day


def _money_to_chinese(money: str) -> str:
    for amount in _NUMBER.findall(money):
        money = money.replace(amount[0], number_to_chinese(amount[0]))
    return money


def _phone_to_chinese(phone: str, landline: bool) -> str:
    parts = phone.split("-") if landline else phone.strip("+").split()
    return "".join(_digits(part) for part in parts)


def _replace_each(pattern: re.Pattern[str], text: str, convert, group: int | None = 0) -> str:
    """Replace the first occurrence of every match, in order, as the reference does."""
    for match in pattern.findall(text):
        found = match if group is None else match[group]
        text = text.replace(found, convert(found), 1)
    return text


def normalize_chinese_numbers(text: str) -> str:
    """Chinese words for numbers (50 -> 五十, 2024年 -> 二零二四年, 50% -> 百分之五十); punctuation -> ','."""
    text = "^" + text + "$"
    text = _replace_each(_DATE, text, _date_to_chinese)
    text = _replace_each(_MONEY, text, _money_to_chinese)
    text = _replace_each(_MOBILE, text, lambda phone: _phone_to_chinese(phone, landline=False))
    text = _replace_each(_LANDLINE, text, lambda phone: _phone_to_chinese(phone, landline=True))
    text = _replace_each(
        _FRACTION,
        text,
        lambda frac: number_to_chinese(frac.split("/")[1]) + "分之" + number_to_chinese(frac.split("/")[0]),
        group=None,
    )
    text = text.replace("％", "%")
    text = _replace_each(_PERCENT, text, lambda pct: "百分之" + number_to_chinese(pct.strip().strip("%")))
    text = _replace_each(_COUNTED, text, number_to_chinese)
    text = _replace_each(_DIGIT_STRING, text, _digits, group=None)
    text = _replace_each(_NUMBER, text, number_to_chinese)
    for whole, left, right in _LATIN_TWO_LATIN.findall(text):
        text = text.replace(whole, left + "2" + right, 1)
    return text.lstrip("^").rstrip("$").translate(_TO_COMMA)

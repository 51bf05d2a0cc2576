"""Cheap, deterministic screens for degenerate candidate answers, applied before any judging.

``screen(question, answer, cut_off)`` returns ``""`` for an answer that passes, else the reason:

* ``"empty"``: no letters or digits at all;
* ``"repetition"``: a loop: over half of the word 3-grams repeat an earlier one (at least 8
  words), or over 60% of the character 12-grams do (long answers without spaces);
* ``"language"``: written in another language than the question: another script (Cyrillic,
  CJK, ... for a Latin-script question, or the reverse), or function words of another of
  en/fr/es/de/it/pt clearly outnumbering the question's language;
* ``"cut off"``: the answering node reports it hit the token limit (``finish=length`` in its
  candidate's sampling field, see ``finish_tag``) and the text never ends a sentence (an answer
  whose first sentences are complete and only the tail is cut keeps them).

Every node computes the same reasons from the same texts; the coordinator records them in the
round (``dropped`` entries ``(node, "screened: <reason>")``), judges vote a screened answer below
any unscreened one, and the winner is never a screened candidate while an unscreened one exists.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Mapping

SCREENED_PREFIX = "screened: "
REASONS = ("empty", "repetition", "language", "cut off")

_WORD = re.compile(r"\w+", re.UNICODE)
_SENTENCE_END = re.compile(r"[.!?。！？](\s|$)")
_ENDS = tuple(".!?。！？)\"'»”’*`")
STOPWORDS = {
    "en": "the is are was of and to in it that what which this with for not be how does do has".split(),
    "fr": "le la les est des une du et que qui dans pour pas sur au aux ce sont il elle".split(),
    "es": "el los las es del una y que en por para con no se su son al lo como".split(),
    "de": "der die das ist und nicht ein eine zu den mit von sich auf dem des im".split(),
    "it": "il lo gli è di che e una per non sono della del nel con alla ci".split(),
    "pt": "o os as é do da dos das uma e que em para com não um são no na".split(),
}
_LANG_OF: dict[str, set[str]] = {}
for _lang, _words in STOPWORDS.items():
    for _w in _words:
        _LANG_OF.setdefault(_w, set()).add(_lang)


def finish_tag(finish_reason: str | None) -> str:
    """The suffix an answering node appends to its candidate's sampling field."""
    return f" finish={finish_reason}" if finish_reason else ""


def was_cut_off(sampling: str) -> bool:
    return "finish=length" in sampling.split()


def _ngram_repeat(items: list[str], n: int) -> float:
    grams = [tuple(items[i:i + n]) for i in range(len(items) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def _script(text: str) -> tuple[int, int]:
    """(Latin letters, other letters) in ``text``."""
    latin = other = 0
    for ch in text:
        if ch.isalpha():
            if ch.isascii() or unicodedata.name(ch, "").startswith("LATIN"):
                latin += 1
            else:
                other += 1
    return latin, other


def _lang_hits(words: Iterable[str]) -> dict[str, int]:
    hits = dict.fromkeys(STOPWORDS, 0)
    for w in words:
        for lang in _LANG_OF.get(w, ()):
            hits[lang] += 1
    return hits


def _language(words: list[str]) -> str:
    """The language whose function words clearly dominate (``""`` when unclear)."""
    hits = _lang_hits(words)
    best = max(hits, key=lambda k: (hits[k], k == "en"))
    rest = max(v for k, v in hits.items() if k != best)
    return best if hits[best] >= 2 and hits[best] >= 2 * rest + 1 else ""


def wrong_language(question: str, answer: str) -> bool:
    ql, qo = _script(question)
    al, ao = _script(answer)
    if ql + qo and al + ao >= 4:
        q_latin, a_latin = ql >= 4 * qo, al >= 4 * ao
        if q_latin != a_latin and (qo == 0 or ao == 0):
            return True
    awords = _WORD.findall(answer.lower())
    if len(awords) < 4:
        return False
    qlang, alang = _language(_WORD.findall(question.lower())), _language(awords)
    return bool(qlang and alang and qlang != alang)


def screen(question: str, answer: str, cut_off: bool = False) -> str:
    """``""`` if the answer passes every screen, else the first reason (see the module docstring)."""
    text = answer.strip()
    if not any(ch.isalnum() for ch in text):
        return "empty"
    words = _WORD.findall(text.lower())
    if len(words) >= 8 and _ngram_repeat(words, 3) > 0.5:
        return "repetition"
    compact = "".join(text.split())
    if len(compact) >= 48 and _ngram_repeat(list(compact), 12) > 0.6:
        return "repetition"
    if wrong_language(question, text):
        return "language"
    if cut_off and not text.endswith(_ENDS) and not _SENTENCE_END.search(text):
        return "cut off"
    return ""


def screen_all(question: str, answers: Mapping[str, tuple[str, bool]]) -> dict[str, str]:
    """``{key: reason}`` for the screened ones of ``{key: (answer, cut_off)}``."""
    out = {}
    for key, (text, cut) in answers.items():
        why = screen(question, text, cut)
        if why:
            out[key] = why
    return out

"""The rule filter that always runs before the optional LLM filter (Uni-C Suppl. VI).

The paper asks an LLM to remove non-English, unclear and motionless prompts. Offline we apply the
same three tests as rules. They are deliberately simple and documented as an approximation:
- language: letters outside ASCII mark a non-English prompt (CJK, Cyrillic, accented Latin); for
  plain ASCII text, a prompt whose function words are more Spanish/French/German/Italian/Portuguese
  than English is non-English;
- length: words counted on whitespace, bounds from params;
- motion: at least one word whose stem is in a motion vocabulary (verbs and nouns of movement).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)

_FUNCTION_WORDS = {
    "en": {"the", "a", "an", "and", "of", "in", "on", "with", "is", "are", "at", "to", "from", "by", "its"},
    "es": {"el", "la", "los", "las", "un", "una", "y", "de", "del", "en", "con", "que", "por", "es"},
    "fr": {"le", "la", "les", "un", "une", "et", "de", "des", "du", "dans", "avec", "sur", "est"},
    "de": {"der", "die", "das", "ein", "eine", "und", "mit", "im", "auf", "ist", "dem", "den", "von"},
    "it": {"il", "lo", "gli", "una", "e", "di", "nel", "con", "sul", "che", "della", "del"},
    "pt": {"o", "os", "um", "uma", "e", "de", "do", "da", "em", "com", "no", "na", "que"},
}

# Stems of words that describe movement. Matching is on stems so "runs", "running", "ran" all hit.
# Left out on purpose: "orbit", "zoom", "pan" (camera motion); "painting", "close", "snow"
# (mostly static uses).
MOTION_WORDS = frozenset(
    """
    run ran walk jump leap hop fly flew flight soar glid swim swam dive dove surf ski skat climb
    crawl drive driv race rac ride rid rode roll spin rotat twirl turn swing sway wave waving
    flutter flap fall fell drop drip pour flow stream splash ripple crash break burst explod erupt
    firework dance danc sing play chas hunt fight punch kick throw catch toss bounc shake shak
    tremble wobbl move moving motion march parad stroll wander sprint dash rush gallop trot prowl
    slither stalk blow blew drift float sail paddl launch takeoff land fling flip backflip kickflip
    tumbl slide slid glide melt grow bloom blink smil laugh cry wav nod eat drink cook chop stir
    knead bak fry typ writ sculpt strum drum fish peck graz chew lick sniff wag stretch yawn breath
    inhal exhal rain storm tornado hurrican lightning strik migrat scurr scamper pounc charg stamped
    hover buzz swarm flock herd wriggl squirm pull push lift rise rising swirl reach go going went
    juggl speed sped puls solv stroke flicker carry carri cross cruis circl descend arriv sneak grab
    chug bargain pass cast spray knit pop click plow plough follow spread pour chas escap hurl shoot
    fir pedal rowing
    """.split()
)


_SUFFIXES = ("ing", "ed", "es", "s", "e")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _stems(word: str) -> Iterable[str]:
    yield word
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            stem = word[: -len(suffix)]
            yield stem
            # doubled consonant before -ing/-ed: running -> run, skipped -> skip
            if suffix in ("ing", "ed") and len(stem) >= 3 and stem[-1] == stem[-2]:
                yield stem[:-1]


def has_motion(text: str, vocabulary: frozenset[str] = MOTION_WORDS) -> bool:
    return any(stem in vocabulary for word in words(text) for stem in _stems(word))


def looks_english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    non_ascii = sum(1 for c in letters if not c.isascii())
    if non_ascii / len(letters) > 0.05:
        return False
    tokens = words(text)
    counts = {lang: sum(t in vocab for t in tokens) for lang, vocab in _FUNCTION_WORDS.items()}
    best_other = max(v for k, v in counts.items() if k != "en")
    return counts["en"] >= best_other


def rule_reason(
    text: str,
    *,
    english_only: bool,
    min_words: int,
    max_words: int,
    require_motion: bool,
    vocabulary: frozenset[str] = MOTION_WORDS,
) -> tuple[str, str] | None:
    """Return (reason, detail) for a prompt the rules reject, or None when it passes."""
    # Language first: scripts without spaces (Chinese, Japanese) would otherwise read as one word.
    if english_only and not looks_english(text):
        return "non_english", "non-ASCII letters or non-English function words"
    n_words = len(text.split())
    if n_words < min_words:
        return "too_short", f"{n_words} words < min_words={min_words}"
    if n_words > max_words:
        return "too_long", f"{n_words} words > max_words={max_words}"
    if require_motion and not has_motion(text, vocabulary):
        return "no_motion", "no word from the motion vocabulary"
    return None

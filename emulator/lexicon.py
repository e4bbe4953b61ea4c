"""Word lists that make the emulator's moderation and classification react to obvious content.

Deliberately small and blunt: the emulator is a stand-in that lets a demo show real differences
between texts, not a model.
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


MODERATION: dict[str, frozenset[str]] = {
    "sexual": frozenset({"sex", "sexual", "nude", "naked", "porn", "explicit", "erotic"}),
    "hate_and_discrimination": frozenset(
        {"hate", "hateful", "racist", "bigot", "inferior", "subhuman", "vermin", "slur"}
    ),
    "violence_and_threats": frozenset(
        {"kill", "murder", "attack", "shoot", "stab", "beat", "hurt", "destroy", "threat"}
    ),
    "dangerous": frozenset({"bomb", "explosive", "weapon", "poison", "meth", "overdose"}),
    "criminal": frozenset({"steal", "rob", "fraud", "launder", "smuggle", "hack", "scam"}),
    "selfharm": frozenset({"suicide", "selfharm", "cutting", "worthless", "die"}),
    "health": frozenset({"diagnosis", "symptoms", "medication", "dosage", "disease", "cancer"}),
    "financial": frozenset({"invest", "stock", "crypto", "loan", "mortgage", "bitcoin"}),
    "law": frozenset({"lawsuit", "sue", "lawyer", "contract", "legal", "court"}),
    "pii": frozenset({"ssn", "passport", "address", "phone", "password", "iban"}),
    "jailbreaking": frozenset({"ignore", "jailbreak", "dan", "unfiltered", "bypass"}),
}
MODERATION["dangerous_and_criminal_content"] = MODERATION["dangerous"] | MODERATION["criminal"]

# Words that speak for a label name in zero-shot classification, beyond the label's own words.
LABEL_HINTS: dict[str, frozenset[str]] = {
    "positive": frozenset(
        {"love", "great", "excellent", "amazing", "happy", "good", "wonderful", "best", "fast"}
    ),
    "negative": frozenset(
        {"hate", "terrible", "awful", "bad", "worst", "broken", "slow", "angry", "refund"}
    ),
    "toxic": MODERATION["hate_and_discrimination"]
    | MODERATION["violence_and_threats"]
    | frozenset({"idiot", "stupid", "moron", "loser", "trash"}),
    "spam": frozenset({"free", "winner", "prize", "click", "offer", "viagra", "cheap"}),
    "question": frozenset({"how", "what", "why", "when", "where", "who", "?"}),
    "complaint": frozenset({"broken", "late", "refund", "terrible", "never", "worst"}),
    "praise": frozenset({"love", "great", "excellent", "thanks", "amazing", "perfect"}),
    "billing": frozenset({"invoice", "charge", "charged", "payment", "refund", "price", "bill"}),
    "shipping": frozenset({"delivery", "shipping", "shipped", "package", "arrived", "late"}),
    "sports": frozenset({"match", "team", "goal", "football", "tennis", "score", "league"}),
    "politics": frozenset({"election", "vote", "government", "minister", "policy", "senate"}),
    "technology": frozenset({"software", "computer", "app", "phone", "ai", "code", "cloud"}),
}

# Labels chosen when nothing in the text speaks for any label.
FALLBACK_LABELS = ("neutral", "other", "none", "safe", "non-toxic", "ok", "normal", "unknown")


def is_negated(label: str) -> bool:
    return label.lower().replace("_", "-").replace(" ", "-").startswith(("non-", "not-", "no-"))


def is_fallback(label: str) -> bool:
    """A label to pick when no word speaks for any: "neutral", "other", "not_spam"..."""
    return label.lower() in FALLBACK_LABELS or is_negated(label)


def hints_for(label: str) -> frozenset[str]:
    """Words that speak for ``label``; a negated label ("non-toxic") has none of its own."""
    name = label.lower()
    if is_negated(name):
        return frozenset()
    own = frozenset(_WORD.findall(name.replace("_", " ").replace("-", " ")))
    return own | LABEL_HINTS.get(name, frozenset())

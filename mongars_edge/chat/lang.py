"""Language of a message: French (with a Québécois flavour) or English, from function words.

Short chat messages defeat character n-gram models trained on prose; a few hundred of the most
frequent words of each language, accents and Québécois markers decide more reliably, and cost
microseconds. `detect` returns None when the text gives no evidence (e.g. "ok", "42").
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final, Literal

Lang = Literal["fr", "en"]
LANGS: Final[tuple[Lang, ...]] = ("fr", "en")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_LETTERS = "a-zàâäçéèêëîïôöùûüÿœæ"
_WORD = re.compile(f"[{_LETTERS}]+(?:'[{_LETTERS}]+)?", re.IGNORECASE)
_FR_WORDS: Final = _words(
    """
    le la les un une des du de au aux et est sont suis es êtes sommes ai as avons avez ont
    je tu il elle nous vous ils elles on me te se moi toi lui leur leurs mon ma mes ton ta tes
    son sa ses notre nos votre vos ce cet cette ces ça cela ceci qui que quoi dont où
    pas ne plus jamais rien personne très trop peu beaucoup bien mal aussi encore déjà
    avec sans pour par dans sur sous chez entre vers depuis pendant avant après
    mais ou donc car si comme quand comment pourquoi combien quel quelle quels quelles
    oui non merci bonjour bonsoir salut allo svp stp peux peut pouvez veux veut voulez
    faire fait fais faut dois doit être avoir aller va vais vas allez dit dire sais sait
    c'est j'ai j'aime j'suis qu'est t'es t'as n'est n'ai d'un d'une l'on c'était aujourd'hui
    demain hier maintenant toujours quelque chose tout tous toute toutes autre même
    parce puis alors voici voilà temps jour heure année maison travail français
    """
)
_EN_WORDS: Final = _words(
    """
    the a an and or but if of to in on at by for with from about into over after before
    is are was were be been being am do does did done have has had having will would
    shall should can could may might must i you he she it we they me him her us them
    my your his its our their mine yours this that these those what which who whom whose
    where when why how not no yes please thanks thank hello hi hey there here some any
    all every each more most very much many just also only than then so too up out
    i'm you're it's don't doesn't can't isn't won't i've i'll what's that's let's
    know think want need like make get go going tell give time today tomorrow yesterday
    now always never something anything nothing good well really help english
    plus minus times equals
    """
)
# Words that settle it for Quebec French (and only count as French evidence).
_QC_WORDS: Final = _words(
    """
    tsé pis chu ché icitte pantoute quessé faque tabarnak tabarnouche câline coudonc
    asteure astheure toé moé itou ben char blonde chum dépanneur magasiner jaser
    niaiser placoter jaser pogner tanné écoeurant bécosse tuque déjeuner dîner souper
    fak pi mettons checker toune plate là-là kossé ostie bin
    """
)
_FR_ACCENTS = frozenset("àâçéèêëîïôùûüÿœ")
# j'aime, l'école, qu'il, c'est, n'importe: elided articles and pronouns are French evidence.
_FR_ELISIONS = frozenset(["j", "l", "d", "c", "qu", "n", "s", "t", "m"])


@dataclass(frozen=True)
class Detection:
    """The guessed language, how sure (0..1), and whether Québécois markers appeared."""

    lang: Lang | None
    confidence: float
    quebec: bool = False


def detect(text: str) -> Detection:
    """Guess French or English from the words of `text`."""
    lowered = unicodedata.normalize("NFC", text.replace("’", "'")).lower()
    fr = en = 0.0
    quebec = False
    for word in _WORD.findall(lowered):
        if word in _QC_WORDS:
            fr += 2.0
            quebec = True
        elif word in _FR_WORDS or ("'" in word and word.split("'")[0] in _FR_ELISIONS):
            fr += 1.0
        if word in _EN_WORDS:
            en += 1.0
        if any(ch in _FR_ACCENTS for ch in word):
            fr += 0.5
    total = fr + en
    if total < 1.0 or fr == en:
        return Detection(None, 0.0, quebec)
    lang: Lang = "fr" if fr > en else "en"
    return Detection(lang, abs(fr - en) / total, quebec and lang == "fr")


def from_accept_language(header: str | None) -> Lang | None:
    """The first of fr/en named in an Accept-Language header (quality order)."""
    if not header:
        return None
    ranked: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                quality = 0.0
        ranked.append((-quality, index, tag.strip().lower()))
    for _q, _i, tag in sorted(ranked):
        primary = tag.split("-")[0]
        if primary in LANGS:
            return "fr" if primary == "fr" else "en"
    return None

"""Offline text generator of aligned items in English, French, German and Spanish.

Every item is one meaning rendered in all four languages (so the renderings are translations
of each other by construction) plus structured fields that instruction tasks can ask about:

    kind          "number" | "year" | "date" | "money" | "sentence"
    value         an integer: the number, the year, the date as month * 100 + day, the amount
                  in cents, or the count of objects in a sentence
    written       the canonical written form: "1234", "1998", "03/05" (DD/MM), "12.50"
                  (euros); "" for sentences
    texts         {"en": ..., "fr": ..., "de": ..., "es": ...} the spoken renderings
    slots         sentence slots as English keys (subject, verb, count, colour, object,
                  location; "" when absent or not a sentence), so that questions and answers
                  can be generated from the lexicon

Numbers use num2words; sentences come from two templates and a small hand-written lexicon
with the agreement each language needs (French/Spanish adjective gender and plural after the
noun, German strong plural adjectives). Everything is a pure function of (n, seed):
`generate_items(n, seed)` always returns the same items. `text_records(items, prefix)` turns
items into the per-utterance records tasks read (one per language; see tasks/__init__.py).
"""

from __future__ import annotations

import dataclasses
import random
from typing import Mapping

from num2words import num2words

LANGUAGES = ("en", "fr", "de", "es")
LANGUAGE_NAMES = {"en": "English", "fr": "French", "de": "German", "es": "Spanish"}
KINDS = ("number", "year", "date", "money", "sentence")
SLOT_NAMES = ("subject", "verb", "count", "colour", "object", "location")
# The kind of item i is KIND_CYCLE[i % len(KIND_CYCLE)]: every kind appears in any 10
# consecutive items (so even tiny corpora have all of them); sentences are 40%.
KIND_CYCLE = ("sentence", "number", "sentence", "year", "number",
              "sentence", "money", "date", "sentence", "number")


@dataclasses.dataclass(frozen=True)
class Item:
    """One meaning, rendered in every language of LANGUAGES."""

    kind: str
    value: int
    written: str
    texts: Mapping[str, str]
    slots: Mapping[str, str]

    def as_dict(self) -> dict:
        return {"kind": self.kind, "value": self.value, "written": self.written,
                "texts": dict(self.texts), "slots": dict(self.slots)}


# ----------------------------------------------------------------------------- numbers


def cardinal(n: int, lang: str) -> str:
    """Cardinal number words, without the commas num2words puts in English."""
    return num2words(n, lang=lang).replace(",", "")


def _number(n: int) -> Item:
    return Item("number", n, str(n), {lang: cardinal(n, lang) for lang in LANGUAGES}, _no_slots())


def _year(y: int) -> Item:
    texts = {lang: num2words(y, lang=lang, to="year").replace(",", "") for lang in LANGUAGES}
    return Item("year", y, str(y), texts, _no_slots())


MONTHS = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"),
    "fr": ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre",
           "octobre", "novembre", "décembre"),
    "de": ("Januar", "Februar", "März", "April", "Mai", "Juni", "Juli", "August", "September",
           "Oktober", "November", "Dezember"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre",
           "octubre", "noviembre", "diciembre"),
}
DAYS_IN_MONTH = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _date(month: int, day: int) -> Item:
    m = {lang: MONTHS[lang][month - 1] for lang in LANGUAGES}
    texts = {
        "en": f"the {num2words(day, lang='en', to='ordinal')} of {m['en']}",
        "fr": f"le {'premier' if day == 1 else cardinal(day, 'fr')} {m['fr']}",
        "de": f"der {num2words(day, lang='de', to='ordinal')} {m['de']}",
        "es": f"el {'primero' if day == 1 else cardinal(day, 'es')} de {m['es']}",
    }
    return Item("date", month * 100 + day, f"{day:02d}/{month:02d}", texts, _no_slots())


def _masculine_one(words: str, lang: str) -> str:
    """'one' before a noun: de eins -> ein, es uno -> un (veintiuno -> veintiún)."""
    if lang == "de" and words.endswith("eins"):
        return words[:-1]
    if lang == "es":
        if words.endswith("veintiuno"):
            return words[:-3] + "ún"
        if words == "uno" or words.endswith(" uno"):
            return words[:-1]
    return words


CURRENCY = {  # (euro singular, euros plural, cent singular, cents plural, joiner)
    "en": ("euro", "euros", "cent", "cents", "and"),
    "fr": ("euro", "euros", "centime", "centimes", "et"),
    "de": ("Euro", "Euro", "Cent", "Cent", "und"),
    "es": ("euro", "euros", "céntimo", "céntimos", "con"),
}


def _money(euros: int, cents: int) -> Item:
    texts = {}
    for lang in LANGUAGES:
        eur1, eurs, c1, cs, joiner = CURRENCY[lang]
        text = f"{_masculine_one(cardinal(euros, lang), lang)} {eur1 if euros == 1 else eurs}"
        if cents:
            text += f" {joiner} {_masculine_one(cardinal(cents, lang), lang)} {c1 if cents == 1 else cs}"
        texts[lang] = text
    return Item("money", euros * 100 + cents, f"{euros}.{cents:02d}", texts, _no_slots())


# ----------------------------------------------------------------------------- sentences

# subject key -> rendering per language (with article, sentence-initial case added later).
SUBJECTS = {
    "Anna": ("Anna", "Anna", "Anna", "Anna"), "Paul": ("Paul", "Paul", "Paul", "Paul"),
    "Maria": ("Maria", "Maria", "Maria", "Maria"), "Thomas": ("Thomas", "Thomas", "Thomas", "Thomas"),
    "Sofia": ("Sofia", "Sofia", "Sofia", "Sofia"), "Lukas": ("Lukas", "Lukas", "Lukas", "Lukas"),
    "Emma": ("Emma", "Emma", "Emma", "Emma"), "Hugo": ("Hugo", "Hugo", "Hugo", "Hugo"),
    "Clara": ("Clara", "Clara", "Clara", "Clara"), "David": ("David", "David", "David", "David"),
    "the man": ("the man", "l'homme", "der Mann", "el hombre"),
    "the woman": ("the woman", "la femme", "die Frau", "la mujer"),
    "the girl": ("the girl", "la fille", "das Mädchen", "la niña"),
    "the boy": ("the boy", "le garçon", "der Junge", "el chico"),
    "the child": ("the child", "l'enfant", "das Kind", "el niño"),
    "the doctor": ("the doctor", "le médecin", "der Arzt", "el médico"),
    "the neighbour": ("the neighbour", "le voisin", "der Nachbar", "el vecino"),
    "the baker": ("the baker", "le boulanger", "der Bäcker", "el panadero"),
    "my friend": ("my friend", "mon ami", "mein Freund", "mi amigo"),
}
# verb key (English base form) -> third person singular per language.
VERBS = {
    "have": ("has", "a", "hat", "tiene"), "see": ("sees", "voit", "sieht", "ve"),
    "buy": ("buys", "achète", "kauft", "compra"), "sell": ("sells", "vend", "verkauft", "vende"),
    "find": ("finds", "trouve", "findet", "encuentra"), "carry": ("carries", "porte", "trägt", "lleva"),
    "want": ("wants", "veut", "will", "quiere"), "wash": ("washes", "lave", "wäscht", "lava"),
    "count": ("counts", "compte", "zählt", "cuenta"),
}
# object key -> (en plural, (fr plural, gender), de plural, (es plural, gender)).
OBJECTS = {
    "car": ("cars", ("voitures", "f"), "Autos", ("coches", "m")),
    "book": ("books", ("livres", "m"), "Bücher", ("libros", "m")),
    "ball": ("balls", ("ballons", "m"), "Bälle", ("pelotas", "f")),
    "cup": ("cups", ("tasses", "f"), "Tassen", ("tazas", "f")),
    "chair": ("chairs", ("chaises", "f"), "Stühle", ("sillas", "f")),
    "bird": ("birds", ("oiseaux", "m"), "Vögel", ("pájaros", "m")),
    "hat": ("hats", ("chapeaux", "m"), "Hüte", ("sombreros", "m")),
    "flower": ("flowers", ("fleurs", "f"), "Blumen", ("flores", "f")),
    "apple": ("apples", ("pommes", "f"), "Äpfel", ("manzanas", "f")),
    "box": ("boxes", ("boîtes", "f"), "Kisten", ("cajas", "f")),
    "dog": ("dogs", ("chiens", "m"), "Hunde", ("perros", "m")),
    "cat": ("cats", ("chats", "m"), "Katzen", ("gatos", "m")),
    "key": ("keys", ("clés", "f"), "Schlüssel", ("llaves", "f")),
    "bottle": ("bottles", ("bouteilles", "f"), "Flaschen", ("botellas", "f")),
    "shoe": ("shoes", ("chaussures", "f"), "Schuhe", ("zapatos", "m")),
}
# colour key -> (en, fr (m pl, f pl), de strong plural, es (m pl, f pl)).
COLOURS = {
    "red": ("red", ("rouges", "rouges"), "rote", ("rojos", "rojas")),
    "green": ("green", ("verts", "vertes"), "grüne", ("verdes", "verdes")),
    "blue": ("blue", ("bleus", "bleues"), "blaue", ("azules", "azules")),
    "black": ("black", ("noirs", "noires"), "schwarze", ("negros", "negras")),
    "white": ("white", ("blancs", "blanches"), "weiße", ("blancos", "blancas")),
    "yellow": ("yellow", ("jaunes", "jaunes"), "gelbe", ("amarillos", "amarillas")),
    "grey": ("grey", ("gris", "grises"), "graue", ("grises", "grises")),
}
# location key -> phrase per language.
LOCATIONS = {
    "garden": ("in the garden", "dans le jardin", "im Garten", "en el jardín"),
    "market": ("at the market", "au marché", "auf dem Markt", "en el mercado"),
    "kitchen": ("in the kitchen", "dans la cuisine", "in der Küche", "en la cocina"),
    "school": ("at school", "à l'école", "in der Schule", "en la escuela"),
    "park": ("in the park", "dans le parc", "im Park", "en el parque"),
    "station": ("at the station", "à la gare", "am Bahnhof", "en la estación"),
    "home": ("at home", "à la maison", "zu Hause", "en casa"),
}
THERE_ARE = {"en": "there are", "fr": "il y a", "de": "es gibt", "es": "hay"}
_LANG_INDEX = {lang: i for i, lang in enumerate(LANGUAGES)}


def subject_text(key: str, lang: str) -> str:
    return SUBJECTS[key][_LANG_INDEX[lang]]


def verb_text(key: str, lang: str) -> str:
    return VERBS[key][_LANG_INDEX[lang]]


def location_text(key: str, lang: str) -> str:
    return LOCATIONS[key][_LANG_INDEX[lang]]


def object_text(key: str, lang: str) -> str:
    """Plural noun."""
    form = OBJECTS[key][_LANG_INDEX[lang]]
    return form[0] if isinstance(form, tuple) else form


def colour_text(colour: str, obj: str, lang: str) -> str:
    """Colour adjective agreeing with the plural object `obj`."""
    form = COLOURS[colour][_LANG_INDEX[lang]]
    if isinstance(form, tuple):
        gender = OBJECTS[obj][_LANG_INDEX[lang]][1]
        return form[0] if gender == "m" else form[1]
    return form


def noun_phrase(count: int, colour: str, obj: str, lang: str) -> str:
    """'three red cars' / 'trois voitures rouges' / 'drei rote Autos' / 'tres coches rojos'."""
    n, c, o = cardinal(count, lang), colour_text(colour, obj, lang), object_text(obj, lang)
    return f"{n} {o} {c}" if lang in ("fr", "es") else f"{n} {c} {o}"


def _capitalise(s: str) -> str:
    return s[:1].upper() + s[1:]


def _sentence(rng: random.Random) -> Item:
    count = rng.randint(2, 9)
    colour, obj = rng.choice(sorted(COLOURS)), rng.choice(sorted(OBJECTS))
    if rng.random() < 0.25:  # "There are three red cars in the garden."
        subject, verb, location = "", "", rng.choice(sorted(LOCATIONS))
        texts = {lang: _capitalise(f"{THERE_ARE[lang]} {noun_phrase(count, colour, obj, lang)} "
                                   f"{location_text(location, lang)}.") for lang in LANGUAGES}
    else:  # "Anna buys three red cars (at the market)."
        subject, verb = rng.choice(sorted(SUBJECTS)), rng.choice(sorted(VERBS))
        location = rng.choice(sorted(LOCATIONS)) if rng.random() < 0.6 else ""
        texts = {}
        for lang in LANGUAGES:
            words = [subject_text(subject, lang), verb_text(verb, lang), noun_phrase(count, colour, obj, lang)]
            if location:
                words.append(location_text(location, lang))
            texts[lang] = _capitalise(" ".join(words)) + "."
    slots = {"subject": subject, "verb": verb, "count": str(count), "colour": colour, "object": obj,
             "location": location}
    return Item("sentence", count, "", texts, slots)


def _no_slots() -> dict:
    return {k: "" for k in SLOT_NAMES}


# ----------------------------------------------------------------------------- generator


# The ranges a number item's value is drawn from, with their shares. Small numbers come first,
# as in language: the single digits are a third of the numbers (each about 3.5%), so isolated
# spoken digits ("zero", "seven") are common utterances of the world, not rare ones.
NUMBER_RANGES = ((0, 9, 0.35), (10, 20, 0.15), (21, 100, 0.2), (101, 999, 0.15), (1000, 9999, 0.15))


def _number_value(rng: random.Random) -> int:
    u = rng.random()
    for low, high, share in NUMBER_RANGES:
        if u < share:
            return rng.randint(low, high)
        u -= share
    return rng.randint(*NUMBER_RANGES[-1][:2])


def make_item(kind: str, rng: random.Random) -> Item:
    """One item of `kind`, drawn with `rng`."""
    if kind == "number":
        return _number(_number_value(rng))
    if kind == "year":
        return _year(rng.randint(1900, 2030))
    if kind == "date":
        month = rng.randint(1, 12)
        return _date(month, rng.randint(1, DAYS_IN_MONTH[month - 1]))
    if kind == "money":
        return _money(rng.randint(1, 999), rng.choice((0, 0, 5, 10, 20, 25, 50, 75, 90, 99)))
    if kind == "sentence":
        return _sentence(rng)
    raise ValueError(f"unknown item kind {kind!r}; expected one of {KINDS}")


def generate_items(n: int, seed: int) -> list[Item]:
    """`n` items; kinds follow KIND_CYCLE, contents are drawn from Random(seed)."""
    if n < 0:
        raise ValueError(f"generate_items: n must be >= 0, got {n}")
    rng = random.Random(seed)
    return [make_item(KIND_CYCLE[i % len(KIND_CYCLE)], rng) for i in range(n)]


def content_word(phrase: str) -> str:
    """The head word of a subject phrase: 'the girl' -> 'girl', "l'homme" -> 'homme'."""
    word = phrase.split()[-1]
    return word[2:] if word.lower().startswith("l'") else word


def lexicon_words(lang: str) -> dict[str, list[str]]:
    """Content words per category in `lang` (for bias lists and distractors)."""
    i = _LANG_INDEX[lang]
    words = {
        "subject": sorted({content_word(SUBJECTS[k][i]) for k in SUBJECTS}),
        "verb": sorted({VERBS[k][i] for k in VERBS}),
        "object": sorted({object_text(k, lang) for k in OBJECTS}),
        "colour": sorted({f for k in COLOURS for f in
                          (COLOURS[k][i] if isinstance(COLOURS[k][i], tuple) else (COLOURS[k][i],))}),
    }
    return words


# ----------------------------------------------------------------------------- records


def text_records(items: list[Item], prefix: str) -> list[dict]:
    """Per-utterance records of `items`, one per language, ids "{prefix}-{i:06d}-{lang}": the
    record fields of spoken_world without audio (voice "", speed and pitch 0)."""
    records = []
    for i, item in enumerate(items):
        item_id = f"{prefix}-{i:06d}"
        for lang in LANGUAGES:
            records.append({
                "id": f"{item_id}-{lang}", "item_id": item_id, "language": lang, "text": item.texts[lang],
                "kind": item.kind, "value": int(item.value), "written": item.written,
                "translations": dict(item.texts), "slots": dict(item.slots),
                "voice": "", "speed": 0, "pitch": 0,
            })
    return records

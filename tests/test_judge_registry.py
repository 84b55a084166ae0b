"""Judges have one registry (lazy "module:factory", the analysis registry's shape): a new
judge is registered from its own module and works in a prompt_transfer config."""

from __future__ import annotations

import pytest

from knowlens.errors import KnowlensError
from knowlens.jailbreak import judges as J


class ShoutJudge:
    """Toy judge: an all-caps response counts as a refusal."""

    name = "shout"

    def judge(self, behavior: str, response: str | None) -> str:
        if response is None:
            return J.INVALID
        return J.REFUSED if response.isupper() else J.JAILBROKEN

    def judge_many(self, behaviors: list[str], responses: list[str | None]) -> list[str]:
        return [self.judge(b, r) for b, r in zip(behaviors, responses, strict=True)]


def make_shout(target: object = None) -> ShoutJudge:
    return ShoutJudge()


@pytest.fixture
def shout():
    J.register_judge("shout", f"{__name__}:make_shout")
    yield
    J.JUDGES.pop("shout", None)


def test_registered_judge_is_found_and_validated_by_configs(shout):
    assert J.get_judge("shout").judge("b", "NO.") == J.REFUSED
    assert J.get_judge("shout").judge("b", "Sure, here") == J.JAILBROKEN
    from knowlens.experiments.prompt_transfer import Config

    assert Config(models=["m"], judges=["gcg", "shout"]).judges == ["gcg", "shout"]


def test_builtin_judges_and_errors():
    assert set(J.STRING_JUDGES) | {"llm"} == set(J.judge_names())
    assert J.get_judge("arditi").judge("b", "I'm sorry, I can't") == J.REFUSED
    with pytest.raises(KnowlensError, match=r"Did you mean: arditi\?"):
        J.get_judge("ardity")
    with pytest.raises(KnowlensError, match="needs a judge model"):
        J.get_judge("llm")
    with pytest.raises(KnowlensError, match="module:factory"):
        J.register_judge("x", "nocolon")
    J.register_judge("broken", "knowlens.jailbreak.judges:nope")
    try:
        with pytest.raises(KnowlensError, match="cannot be loaded"):
            J.get_judge("broken")
    finally:
        J.JUDGES.pop("broken")
    from pydantic import ValidationError

    from knowlens.experiments.prompt_transfer import Config

    with pytest.raises(ValidationError, match="unknown judge 'nope'"):
        Config(models=["m"], judges=["nope"])

# Types of the lazy top-level namespace: __init__.py resolves these names on first use (a
# string table, so `import knowlens` stays fast), which a type checker cannot follow.
# tests/test_typing.py keeps this file equal to _LAZY and _SUBMODULES.
from knowlens import activations as activations
from knowlens import config as config
from knowlens import errors as errors
from knowlens import estimators as estimators
from knowlens import executors as executors
from knowlens import experiments as experiments
from knowlens import generation as generation
from knowlens import jailbreak as jailbreak
from knowlens import metrics as metrics
from knowlens import models as models
from knowlens import plots as plots
from knowlens import report as report
from knowlens import tasks as tasks
from knowlens.activations import ActivationSet as ActivationSet
from knowlens.activations import extract as extract
from knowlens.activations import extract_texts as extract_texts
from knowlens.activations import generate as generate
from knowlens.errors import KnowlensError as KnowlensError
from knowlens.experiments._runner import run as run
from knowlens.generation import Generation as Generation
from knowlens.generation import GenerationSet as GenerationSet
from knowlens.generation import SampleSet as SampleSet
from knowlens.generation import generate_texts as generate_texts
from knowlens.generation import sample as sample
from knowlens.models import ModelHandle as ModelHandle
from knowlens.models import load_model as load_model
from knowlens.tasks import Example as Example
from knowlens.tasks import Task as Task
from knowlens.tasks import load_task as load_task

__version__: str
__all__: list[str]
_LAZY: dict[str, str]
_SUBMODULES: set[str]

"""The embedded demo: a whole SpeechGPT built from nothing on a laptop CPU, as a script over the product.

:func:`run_demo` runs the steps of :mod:`speechgpt.demo.steps` (speech world, unit tokenizer, SpeechInstruct
stages 1-3, training stages 0-3, vocoder, judge ASR, bundle, evaluation, a spoken conversation, the report) with a
step cache, so a second run skips what is done; ``speechgpt demo`` is its command. Importing this package is
cheap: the steps import torch and the models on first use.
"""

from speechgpt.demo.runner import (
    DEMO_SIZES,
    DemoConfig,
    DemoError,
    DemoProgress,
    DemoResult,
    RichDemoProgress,
    StepRecord,
    run_demo,
    summary_table,
)
from speechgpt.demo.steps import STEPS, Step, StepContext, StepOutput

__all__ = [
    "DEMO_SIZES",
    "STEPS",
    "DemoConfig",
    "DemoError",
    "DemoProgress",
    "DemoResult",
    "RichDemoProgress",
    "Step",
    "StepContext",
    "StepOutput",
    "StepRecord",
    "run_demo",
    "summary_table",
]

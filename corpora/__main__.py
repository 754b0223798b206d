"""``python -m corpora build --config configs/corpus/NAME.yaml [key=value ...]``."""

from __future__ import annotations

import argparse
import sys

from pipeline.cli import add_config_args
from pipeline.errors import main_guard

KEYS_HELP = """\
config keys (YAML file, or key.sub=value on the command line; unknown keys are errors):
  run, runs_root          output folder {runs_root}/{run}/corpus/ (default runs/demo/corpus)
  executor.kind           local (default, no service) | slurm | ray  (datatrove executors, pipeline.executors)
  executor.workers        tasks run at once (local processes, Ray); workers=N is a shortcut; output identical for any value
  executor.slurm.{partition,time,cpus_per_task,mem_per_cpu_gb,qos,venv_path,env_command,sbatch_args,slurm_logs_folder}
  executor.ray.{address,cpus_per_task,mem_per_cpu_gb}
  executor.start_method   local: fork (Linux default) | forkserver | spawn
  executor.skip_completed resume: skip tasks that have datatrove's completion marker (default true)
  tasks                   the work is split in this many tasks (the unit of resume; the output depends on it)
  chunk_docs              consecutive input documents per chunk; chunk k goes to task k % tasks
  shard_docs              documents per output part file (per task)
  max_line_bytes          longer lines (or documents) are quarantined, read in bounded pieces
  write_rejected_text     characters of each rejected document kept in rejected/ (0 = none)
  exclude_heldout         drop fine-tuning dev/test text of labelled built-ins (corpora.heldout)
  sources: list of
    type                  text | jsonl | parquet | hf | builtin
    label                 name in records and stats (default: builtin / dataset / file stem)
    path | glob           file, folder (recursive) or glob; .gz/.zst for text and jsonl
    text_field            jsonl/parquet/hf field with the text (dotted for nested)
    doc_sep               text: line (one doc per line) | blank (blank-line separated)
    encoding              text/jsonl: the files' encoding (default utf-8; e.g. gb18030, big5, utf-16)
    name, config, split, data_files   hf: datasets.load_dataset(name, config, split, streaming)
    builtin               pd1998 | reviews | msra | cantonese | english
    max_docs, stride, group           cap, keep every stride-th record, join group records
    licence               licence note copied to stats.json
  normalize.{unicode_form,fullwidth,remove_control,fold_whitespace,cjk_space,t2s}
  langid.{method,min_confidence,fasttext_model,han_min,yue_min_ratio,yue_markers,latin_min,en_function_min}
  filters.{keep_langs,min_chars,max_chars,min_letter_share,max_dup_line_frac,top_ngram,top_ngram_max,
           dup_ngram,dup_ngram_max,repetition_min_units,max_replacement_share,max_mojibake,
           max_gbk_mojibake_share,max_symbol_run,max_symbol_share,cjk_ngram_scale,disabled}
  dedup.{exact,near,threshold,num_perm,char_ngram,word_ngram,seed}
  split.{valid_fraction,salt}
Example: python -m corpora build --config configs/corpus/default.yaml run=demo workers=2
A killed or failed build resumes where it stopped when run again (completed tasks are skipped).
One build per run at a time: a second one exits 2 naming the first one's pid (runs/RUN/.locks/).
A build that keeps no document exits 2 with the rejections and quarantines by reason.
See docs/corpora.md for what each step does and how to add a source.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m corpora",
        description="The corpus stage: read sources, normalise, identify languages, filter, deduplicate, "
                    "split sentences and train/valid, write runs/RUN/corpus/ (shards, stats.json, rejected/).",
        epilog=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    b = sub.add_parser("build", help="build the corpus of a config", description="Build runs/RUN/corpus/ from a corpus config.",
                       epilog=KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(b)
    b.add_argument("--dry-run", action="store_true", help="validate the config, check the sources exist, print the plan")
    return p


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command != "build":
        _parser().print_help()
        return 2
    from pipeline.config import load_config

    from corpora.config import CorpusConfig

    cfg = load_config(CorpusConfig, args.config, args.overrides)
    if args.dry_run:
        from corpora.build import plan

        plan(cfg)
        return 0
    from corpora.build import build

    build(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())

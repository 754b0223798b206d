"""Model cards generated from run metadata (no placeholders).

The card is built only from files the pipeline wrote: ``pretrain_meta.json`` (objective, steps,
tokens, hardware, time), the resolved pre-training config, the corpus and vocabulary
``stats.json``, and the fine-tuning report's ``results.json``. Where a piece is missing (a model that
was never fine-tuned, say) the card says so plainly instead of printing a placeholder.
"""

from __future__ import annotations

from typing import Any

import yaml

# What each objective is, with the honesty notes the card must carry.
OBJECTIVE_NOTES: dict[str, str] = {
    "mlm": "BERT masked language modelling with whole-word masking over jieba (HMM off) word "
           "boundaries, 80/10/10 replacement decided per word.",
    "ntp": "Plain next-token prediction (causal language modelling) with a Llama-family decoder.",
    "amber": "AMBERT (Zhang & Li): a fine-grained (character) and a coarse-grained (word/SGT) view "
             "of the same text through shared Transformer layers with separate embeddings, MLM on "
             "both views. Implemented from the full paper text.",
    "hi_mvp": "Hi-MVP, a reconstruction from the MVP-BERT abstract (Zhu, 2021): the method section "
              "was not available, so the hierarchical design is a documented reading, not the "
              "paper's verified architecture.",
    "al_mvp": "AL-MVP, a reconstruction from the MVP-BERT abstract (Zhu, 2021): the method section "
              "was not available, so the aligned multi-vocabulary design is a documented reading.",
    "clower": "CLOWER-style (Chen et al., 2022) word/character contrastive learning added to "
              "whole-word MLM; a reconstruction from the abstract (word view, temperature and "
              "weights are documented choices, not the paper's values). Ships a plain char BERT.",
    "ernie_gram": "ERNIE-Gram-style explicitly n-gram MLM (Xiao et al., 2021); lexicon size, n, "
                  "generator size and loss weights are documented choices (the paper's values "
                  "were not available). Ships a plain BERT.",
    "meap": "MEAP (Zhuang et al., 2025): a share of input tokens replaced by [MASK], plain "
            "next-token prediction on clean targets; no architecture change. [MASK] is suppressed "
            "at generation.",
}

PIPELINE_TAG = {"encoder": "fill-mask", "decoder": "text-generation"}

TASK_TYPES = {
    "sentence": "text-classification", "pair": "text-classification",
    "tagging": "token-classification", "span": "question-answering",
    "choice": "multiple-choice",
}


def _langs(corpus_stats: dict | None) -> list[str]:
    if not corpus_stats:
        return ["zh"]
    by_lang = corpus_stats.get("languages") or corpus_stats.get("by_lang") or {}
    langs = [k for k in by_lang if k not in ("other", "und")]
    return sorted(langs) or ["zh"]


def _sources(corpus_stats: dict | None) -> dict[str, dict]:
    if not corpus_stats:
        return {}
    src = corpus_stats.get("sources") or corpus_stats.get("by_source") or {}
    return src if isinstance(src, dict) else {}


def _licences(corpus_stats: dict | None) -> dict[str, str]:
    out = {}
    lic = (corpus_stats or {}).get("licences") or (corpus_stats or {}).get("licenses") or {}
    if isinstance(lic, dict):
        out.update({k: str(v) for k, v in lic.items()})
    for name, s in _sources(corpus_stats).items():
        if isinstance(s, dict):
            for key in ("licence", "license"):
                if s.get(key):
                    out.setdefault(name, str(s[key]))
    return out


def card_license(corpus_stats: dict | None, requested: str | None) -> dict[str, str]:
    """Front-matter licence keys. Research-use corpora make the weights research-use too."""
    if requested:
        return {"license": requested}
    if any("research" in v.lower() for v in _licences(corpus_stats).values()):
        return {"license": "other", "license_name": "research-use-only",
                "license_link": "LICENSE"}
    return {"license": "apache-2.0"}


def licence_text(corpus_stats: dict | None, front: dict) -> str:
    """The LICENSE file published next to a card whose licence is ``other``."""
    lines = [f"Licence of this model: {front.get('license_name', front.get('license'))}", "",
             "The weights were trained on the corpora below. Some are available for research use only, "
             "so the weights are offered for research use only as well.", ""]
    for name, lic in sorted(_licences(corpus_stats).items()):
        lines.append(f"- {name}: {lic}")
    return "\n".join(lines) + "\n"


def model_index(name: str, results: dict | None, model_key: str | None) -> list[dict]:
    """The ``model-index`` block: one entry per fine-tuning task, values equal to results.json."""
    if not results or not model_key or model_key not in results.get("models", {}):
        return []
    entries = []
    tasks = results.get("tasks", {})
    seeds = results.get("seeds") or []
    for task, r in results["models"][model_key].get("results", {}).items():
        info = tasks.get(task, {})
        entries.append({
            "task": {"type": TASK_TYPES.get(info.get("kind", ""), "text-classification"), "name": task},
            "dataset": {"name": task, "type": task},
            "metrics": [{
                "type": info.get("metric", "score"),
                "value": r["mean"],
                "name": f"{info.get('metric', 'score')} (mean over {len(r.get('values', [])) or len(seeds)} seeds)",
            }],
        })
    return [{"name": name, "results": entries}] if entries else []


def _fmt_int(n: Any) -> str:
    try:
        return f"{int(n):,}"
    except (TypeError, ValueError):
        return str(n)


def _count_cells(s: Any) -> str:
    """``documents | characters`` table cells of one source / language entry of the corpus stats."""
    s = s if isinstance(s, dict) else {}
    return (f"{_fmt_int(s.get('kept_docs', s.get('docs', s.get('documents', '-'))))} | "
            f"{_fmt_int(s.get('kept_chars', s.get('chars', s.get('characters', '-'))))}")


def render_card(*, repo_id: str, meta: dict, pretrain_config: dict | None, corpus_stats: dict | None,
                vocab_stats: dict | None, results: dict | None, model_key: str | None,
                n_params: int, license: str | None = None, files: list[str] | None = None) -> str:
    objective = meta.get("objective", "unknown")
    model_type = meta.get("model_type", "encoder")
    custom = bool(meta.get("trust_remote_code"))
    tags = ["chinese", "pretraining", f"objective-{objective}", f"vocab-{meta.get('vocab_kind', 'unknown')}"]
    if custom:
        tags.append("custom_code")
    front: dict[str, Any] = {"language": _langs(corpus_stats)}
    front.update(card_license(corpus_stats, license))
    front.update({
        "library_name": "transformers",
        "pipeline_tag": "feature-extraction" if custom else PIPELINE_TAG.get(model_type, "fill-mask"),
        "tags": tags,
        "datasets": sorted(_sources(corpus_stats)) or ["unknown"],
    })
    mi = model_index(repo_id.split("/")[-1], results, model_key)
    if mi:
        front["model-index"] = mi

    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]
    lines += [f"# {repo_id.split('/')[-1]}", ""]
    lines += [
        f"A {'custom-code ' if custom else ''}{'BERT-family encoder' if model_type == 'encoder' else 'Llama-family decoder'} "
        f"with {_fmt_int(n_params)} parameters, pre-trained with the `{objective}` objective by the "
        f"zh-pretrain-pipeline on the corpus described below.", "",
    ]

    lines += ["## Usage", "", "```python"]
    auto = "AutoModelForMaskedLM" if model_type == "encoder" else "AutoModelForCausalLM"
    if custom:
        auto = "AutoModel"
    trc = ", trust_remote_code=True" if custom else ""
    lines += [f"from transformers import AutoTokenizer, {auto}",
              f'tok = AutoTokenizer.from_pretrained("{repo_id}"{trc})',
              f'model = {auto}.from_pretrained("{repo_id}"{trc})', "```", ""]
    if custom:
        lines += ["This model ships its own modelling code; loading it runs that code "
                  "(`trust_remote_code=True`). Read the `.py` files in the repository first.", ""]

    lines += ["## Objective", "", OBJECTIVE_NOTES.get(objective, f"Objective `{objective}`.")]
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
    vs = vocab_stats or {}
    seg = vs.get("segmenter") or {}
    seg_txt = (f"{seg.get('backend', 'rjieba')} with jieba semantics, HMM {'on' if seg.get('hmm') else 'off'}"
               if isinstance(seg, dict) and seg else "jieba semantics (HMM off)")
    lines += [
        f"- kind: `{meta.get('vocab_kind', vs.get('kind', '-'))}`"
        + (f" (learner `{vs['learner']}`)" if vs.get("learner") else ""),
        f"- size: {_fmt_int(vs.get('size', '-'))}",
        f"- segmenter: {seg_txt}",
    ]
    if "tokens_per_char" in vs:
        lines.append(f"- tokens per character on the validation split: {float(vs['tokens_per_char']):.3f}")
    lines += [""]

    lines += ["## Pre-training corpus", ""]
    srcs = _sources(corpus_stats)
    lic = _licences(corpus_stats)
    if srcs:
        lines += ["| source | documents | characters | licence |", "|---|---|---|---|"]
        for name, s in sorted(srcs.items()):
            lines.append(f"| {name} | {_count_cells(s)} | {lic.get(name, '-')} |")
        lines += [""]
        langs = (corpus_stats or {}).get("languages") or (corpus_stats or {}).get("by_lang") or {}
        if isinstance(langs, dict) and langs:
            lines += ["| language | documents | characters |", "|---|---|---|"]
            for lg, s in sorted(langs.items()):
                lines.append(f"| {lg} | {_count_cells(s)} |")
            lines += [""]
        lines += ["Texts used as fine-tuning dev/test sets were excluded from pre-training by the "
                  "pipeline's shared held-out rule (`corpora/heldout.py`).", ""]
    else:
        lines += ["The run folder holds no corpus statistics for this model.", ""]

    lines += ["## Evaluation", ""]
    if results and model_key in results.get("models", {}):
        seeds = results.get("seeds") or []
        r = results["models"][model_key].get("results", {})
        lines += [f"Fine-tuned by the pipeline's suite with {len(seeds)} seed(s) ({', '.join(map(str, seeds))}); "
                  "mean ± standard deviation (max) of the test metric, in %.", "",
                  "| task | metric | mean ± std | max |", "|---|---|---|---|"]
        for task, v in r.items():
            metric = results.get("tasks", {}).get(task, {}).get("metric", "score")
            lines.append(f"| {task} | {metric} | {v['mean']:.2f} ± {v.get('std', 0.0):.2f} | {v.get('max', v['mean']):.2f} |")
        lines += [""]
    else:
        lines += ["This model has not been through the fine-tuning suite; no downstream scores are claimed.", ""]

    lines += ["## Intended use and limitations", "",
              "- A research artefact for comparing pre-training objectives and vocabularies for Chinese; "
              "not a production model.",
              "- Small models trained briefly on a few million characters are far from published "
              "checkpoints; differences between objectives at this scale are often within seed noise.",
              "- Tokenization depends on jieba's default dictionary; a different segmenter at inference "
              "changes SGT/word token ids." if meta.get("vocab_kind") in ("sgt", "word") else
              "- Inputs are tokenized one token per CJK character (WordPiece for other scripts).",
              "- The corpus carries the biases of 1998 news text, online reviews and software documentation.",
              ""]
    if files:
        lines += ["## Files", ""] + [f"- `{f}`" for f in files] + [""]
    return "\n".join(lines)


def parse_front_matter(text: str) -> dict:
    if not text.startswith("---\n"):
        raise ValueError("no YAML front matter")
    end = text.index("\n---\n", 4)
    return yaml.safe_load(text[4:end])

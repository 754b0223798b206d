"""Publish a finished run as a Hugging Face folder with a generated model card, optionally pushed.

    python -m pretrain.publish runs/demo/pretrain/mlm [--repo-id me/zh-mlm-tiny [--push] [--private]]
    python -m pretrain.publish runs/demo --repo-id 'me/{run}-{model}'   # every model of a run

The argument is an export folder (has ``pretrain_meta.json``), a pre-training output folder
(``runs/RUN/pretrain/NAME``) or a whole run (``runs/RUN``). The published folder
(``runs/RUN/publish/NAME/`` unless ``--out``) holds every file of the export (safetensors weights,
config, the tokenizer files of every view, a user dictionary, modelling code where the variant
needs it), the model card ``README.md`` (:mod:`pretrain.model_card`), the resolved pre-training
config and the corpus and vocabulary statistics. Tokenizers are rewritten for users
(:func:`user_tokenizer`), embedding rows past the vocabulary dropped (:func:`trim_padded_vocab`),
and every file made group-readable (:func:`pretrain.export.make_shareable`). Without ``--repo-id``
the card's snippets name the folder itself.

Safety: weights are only ever read from safetensors; a pickle-based file (``*.bin``, ``*.pt``,
``*.pth``, ``*.ckpt``, ``*.pkl``) anywhere in the export is refused. The hub token comes from the
environment (``HF_TOKEN``) or the hub's login cache through ``huggingface_hub``; it is never
printed or written. Without ``--push`` nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import UserError, main_guard
from pipeline.log import get_logger
from pipeline.runs import DIR_MARKER, atomic_dir, read_json
from pretrain.export import make_shareable
from pretrain.exports import META_FILE, ExportMeta

log = get_logger("publish")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# two-view exports (config model_type) -> layout of their one-call tokenizer (pretrain/remote/)
TWO_VIEW_LAYOUTS = {"zh_ambert": "pair", "zh_hi_mvp": "hierarchical"}
TWO_VIEW_TOKENIZER = Path(__file__).parent / "remote" / "tokenization_multivocab.py"
# files the publisher writes itself (an export never needs them copied)
WRITTEN_HERE = {"README.md", "LICENSE", "pretrain_config.yaml", "corpus_stats.json", "vocab_stats.json",
                "eval_results.json"}


def find_exports(path: Path) -> list[Path]:
    """Export folders named by ``path`` (an export, a pretrain output folder or a run folder)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if (path / META_FILE).is_file():
        return [path]
    if (path / "export" / META_FILE).is_file():
        return [path / "export"]
    found = sorted(p.parent for p in path.glob(f"pretrain/*/export/{META_FILE}"))
    if not found:
        raise UserError(f"{path}: holds no finished pre-training export (looked for {META_FILE} "
                        "in the folder, in export/, and in pretrain/*/export/)")
    return found


def refuse_pickles(export: Path) -> None:
    bad = sorted(p.name for p in export.rglob("*") if p.is_file() and p.suffix.lower() in PICKLE_SUFFIXES)
    if bad:
        raise UserError(
            f"{export}: refusing to publish pickle-based file(s) {', '.join(bad)}: pickle can run code "
            "when loaded. Only safetensors weights are published; re-export the model with safetensors.")


def check_safetensors(export: Path) -> tuple[list[Path], int]:
    """The weight files and their parameter count, read with safetensors (never pickle)."""
    from safetensors import safe_open

    files = sorted(export.glob("*.safetensors"))
    if not files:
        raise UserError(f"{export}: no *.safetensors weights found")
    n = 0
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as sf:
                for k in sf.keys():
                    sl = sf.get_slice(k)
                    shape = sl.get_shape()
                    count = 1
                    for d in shape:
                        count *= d
                    n += count
        except Exception as e:  # a truncated or foreign file
            raise UserError(f"{f}: not a readable safetensors file ({e})") from None
    return files, n


def export_files(export: Path) -> list[Path]:
    """Every file the export holds (weights, config, tokenizer files of every view, user dictionary,
    modelling code, extra weights such as ``char_decoder.safetensors``), relative paths kept; hidden
    files skipped. Pickle formats are refused before this is called (:func:`refuse_pickles`)."""
    return sorted(p for p in export.rglob("*")
                  if p.is_file() and not any(part.startswith(".") for part in p.relative_to(export).parts)
                  and p.relative_to(export).as_posix() not in WRITTEN_HERE)


def user_tokenizer(folder: Path, meta: dict) -> list[str]:
    """Turn the pipeline's tokenizer files in ``folder`` into the ones users and pipelines expect.

    * ``split_special_tokens: false``: a typed ``[MASK]`` is the mask token, so
      ``pipeline("fill-mask")`` finds it (the pipeline's own encoders keep treating literal
      special-token text as text);
    * decoders: the BOS-only template ``[CLS] $A`` (``[CLS]`` is the BOS the decoder saw at position
      0, ``[SEP]`` its end of document, which a prompt must not end with), ``bos_token``/``eos_token``
      set, so ``pipeline("text-generation")`` continues the prompt;
    * WordPiece (char) tokenizers decode with CJK characters joined (no space between two CJK
      characters); tokenizers saved as ``BertTokenizer`` (older vocabulary folders) are saved as
      ``TokenizersBackend`` so that the edited ``tokenizer.json`` is what loads.

    Returns the notes for the model card.
    """
    from tokenizers import Tokenizer, processors

    from tokenization.vocab import cjk_joining_wordpiece_decoder

    notes = []
    cfg_p, tj = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not cfg_p.is_file() or not tj.is_file():
        return notes
    cfg = json.loads(cfg_p.read_text(encoding="utf-8"))
    tk = Tokenizer.from_file(str(tj))
    cfg["split_special_tokens"] = False
    if cfg.get("tokenizer_class") == "BertTokenizer":
        cfg["tokenizer_class"] = "TokenizersBackend"
        cfg.setdefault("model_input_names", ["input_ids", "token_type_ids", "attention_mask"])
    if tk.decoder is not None and type(tk.decoder).__name__ == "WordPiece":
        tk.decoder = cjk_joining_wordpiece_decoder()
    if meta.get("model_type") == "decoder" and tk.token_to_id("[CLS]") is not None:
        bos = tk.token_to_id("[CLS]")
        tk.post_processor = processors.TemplateProcessing(single="[CLS] $A", pair="[CLS] $A $B",
                                                          special_tokens=[("[CLS]", bos)])
        cfg.update(bos_token="[CLS]", eos_token="[SEP]", model_input_names=["input_ids", "attention_mask"])
        notes.append("prompts are encoded as `[CLS]` (BOS) + text; generation stops at `[SEP]` (end of document)")
    conf = _maybe_json(folder / "config.json") or {}
    coarse = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.startswith("coarse."))
    if conf.get("model_type") in TWO_VIEW_LAYOUTS and coarse and cfg.get("tokenizer_class") != "SegmentedTokenizer":
        # two-view models: AutoTokenizer builds both views from raw text in one call
        shutil.copyfile(TWO_VIEW_TOKENIZER, folder / TWO_VIEW_TOKENIZER.name)
        cfg.update(tokenizer_class="TwoViewTokenizer", view_layout=TWO_VIEW_LAYOUTS[conf["model_type"]],
                   coarse_files=coarse,
                   auto_map={"AutoTokenizer": [None, f"{TWO_VIEW_TOKENIZER.stem}.TwoViewTokenizer"]})
        cfg.pop("model_input_names", None)
        notes.append("`AutoTokenizer` (with `trust_remote_code=True`) returns both views from raw text: the "
                     "character view as `input_ids` and the coarse view as `coarse_input_ids`"
                     + (" plus `coarse_index`" if TWO_VIEW_LAYOUTS[conf["model_type"]] == "hierarchical" else "")
                     + " (`tokenization_multivocab.py`)")
    tk.save(str(tj))
    cfg_p.write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return notes


def trim_padded_vocab(folder: Path, meta: dict) -> int | None:
    """Drop the embedding rows past the tokenizer's vocabulary (``vocab.padded_size`` rounds the
    matrix up for speed): ids no tokenizer can produce or decode, which ``pipeline("fill-mask")`` /
    ``pipeline("text-generation")`` would otherwise return (an untrained or briefly trained model
    gives them real probability). Stock models only (custom-code models keep their matrices).
    Returns the new vocabulary size, or None when nothing changed."""
    conf = _maybe_json(folder / "config.json") or {}
    if conf.get("auto_map") or not (folder / "tokenizer.json").is_file():
        return None
    from tokenizers import Tokenizer

    n = Tokenizer.from_file(str(folder / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    if int(conf.get("vocab_size", 0)) <= n:
        return None
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    cls = AutoModelForCausalLM if meta.get("model_type") == "decoder" else AutoModelForMaskedLM
    model = cls.from_pretrained(folder, use_safetensors=True)
    model.resize_token_embeddings(n, mean_resizing=False)
    # the model's own weight files only (an export may carry others, e.g. char_decoder.safetensors);
    # they may be memory-mapped: unlink before writing new files under the same names
    sharded = [f for f in folder.glob("model.safetensors.index.json")]
    if sharded:
        names = set(json.loads(sharded[0].read_text(encoding="utf-8"))["weight_map"].values())
        weights = sorted(folder / n for n in names)
    else:
        weights = [folder / "model.safetensors"]
    shard = max(f.stat().st_size for f in weights)
    for f in weights + sharded:
        f.unlink()
    model.save_pretrained(folder, safe_serialization=True, **({"max_shard_size": shard} if sharded else {}))
    return n


def _maybe_json(p: Path) -> Any:
    return read_json(p) if p.is_file() else None


def _maybe_yaml(p: Path) -> Any:
    return yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else None


def run_root_of(export: Path) -> Path | None:
    """``runs/RUN`` for ``runs/RUN/pretrain/NAME/export`` (None if the layout differs)."""
    if export.parent.parent.name == "pretrain":
        return export.parent.parent.parent
    return None


def locate_results(export: Path, explicit: Path | None) -> tuple["FinetuneResults | None", str | None]:
    """The fine-tuning ``results.json`` and this model's key in it."""
    candidates = [explicit] if explicit else []
    root = run_root_of(export)
    if root is not None:
        candidates.append(root / "finetune" / "report" / "results.json")
    from finetune.schema import FinetuneResults  # publishing reads the fine-tuning stage's output

    for c in candidates:
        if c and c.is_file():
            res = FinetuneResults.load(c)
            return res, res.model_key(export)
    return None, None


def build_folder(export: Path, out: Path, repo_id: str | None = None, results_path: Path | None = None,
                 license: str | None = None) -> Path:
    """Write the publishable folder for ``export`` into ``out`` (atomically). ``repo_id`` is the hub
    repo the folder will be pushed to; without one the card's snippets name the folder's path."""
    if not repo_id:
        repo_id = str(out)
    from corpora.schema import CorpusStats
    from tokenization.schema import VocabStats
    from pretrain.model_card import card_license, licence_text, render_card

    refuse_pickles(export)
    weights, n_params = check_safetensors(export)
    export_meta = ExportMeta.load(export, missing_ok=False)  # typed, checked: pretrain.exports
    meta = export_meta.to_dict()  # the card and the tokenizer notes read it as the file's mapping
    run_dir = export.parent
    root = run_root_of(export)
    pre_cfg = _maybe_yaml(run_dir / "config.yaml")
    corpus_stats = CorpusStats.load_if_present(root / "corpus") if root else None
    vp = export_meta.vocab_path
    vocab_stats = VocabStats.load_if_present(Path(vp)) if vp else None
    results, key = locate_results(export, results_path)
    finetune_cfg = None
    if results is not None:
        fc = (results_path.parent.parent if results_path else (root / "finetune" if root else None))
        finetune_cfg = _maybe_yaml(fc / "config.yaml") if fc is not None else None

    with atomic_dir(out) as tmp:
        copied = []
        for f in export_files(export):
            rel = f.relative_to(export)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, tmp / rel)
            copied.append(rel.as_posix())
        tok_notes = user_tokenizer(tmp, meta)
        if trim_padded_vocab(tmp, meta) is not None:
            _, n_params = check_safetensors(tmp)
        copied = [p.relative_to(tmp).as_posix() for p in sorted(tmp.rglob("*")) if p.is_file()]
        if pre_cfg is not None:
            shutil.copy2(run_dir / "config.yaml", tmp / "pretrain_config.yaml")
            copied.append("pretrain_config.yaml")
        if corpus_stats is not None:
            corpus_stats.save(tmp, "corpus_stats.json")
            copied.append("corpus_stats.json")
        if vocab_stats is not None:
            vocab_stats.save(tmp, "vocab_stats.json")
            copied.append("vocab_stats.json")
        if results is not None and key is not None:
            results.only(key).save(tmp, "eval_results.json")
            copied.append("eval_results.json")
        lic = card_license(corpus_stats, license)
        written_extra = ["README.md"] + (["LICENSE"] if lic.get("license_link") == "LICENSE" else [])
        card = render_card(repo_id=repo_id, meta=meta, pretrain_config=pre_cfg, corpus_stats=corpus_stats,
                           vocab_stats=vocab_stats, results=results, model_key=key, n_params=n_params,
                           license=license, files=sorted(copied + written_extra), tokenizer_notes=tok_notes,
                           finetune_config=finetune_cfg, config=_maybe_json(tmp / "config.json"))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if "LICENSE" in written_extra:
            (tmp / "LICENSE").write_text(licence_text(corpus_stats, lic), encoding="utf-8")
        make_shareable(tmp)
    return out


def push_folder(folder: Path, repo_id: str, private: bool = False, api: Any = None) -> str:
    """Create the repo (if needed) and upload the folder. ``api`` defaults to ``HfApi()``."""
    import os

    if api is None:
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false"):
            raise UserError("HF_HUB_OFFLINE is set, so nothing can be pushed; unset it (the Makefile sets "
                            f"it for offline runs) and run again. The folder {folder} is intact.")
        from huggingface_hub import HfApi

        api = HfApi()
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message="Upload from zh-pretrain-pipeline",
                                 ignore_patterns=[DIR_MARKER])  # atomic_dir's marker stays local
    except UserError:
        raise
    except Exception as e:  # no network, bad token, hub error: one clear line, folder untouched
        kind = type(e).__name__
        msg = str(e).splitlines()[0] if str(e) else ""
        # never echo anything that could carry a token
        msg = msg.replace(os.environ.get("HF_TOKEN", "\0"), "***") if os.environ.get("HF_TOKEN") else msg
        raise UserError(f"could not push to the hub repo '{repo_id}' ({kind}: {msg[:200]}). "
                        f"Check the network and your login (HF_TOKEN or `hf auth login`). "
                        f"The folder {folder} is intact.") from None
    return str(getattr(info, "commit_url", None) or info)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pretrain.publish",
        description="Turn a finished run into a Hugging Face folder with a generated model card; "
                    "optionally push it to the hub.")
    p.add_argument("path", type=Path, help="an export folder, runs/RUN/pretrain/NAME, or runs/RUN (all models)")
    p.add_argument("--repo-id", default=None,
                   help="ORG/NAME on the hub; may contain {run} and {model} (needed when publishing several). "
                        "Without it the card's usage snippet names the local folder, and --push is refused")
    p.add_argument("--out", type=Path, default=None,
                   help="output folder (default runs/RUN/publish/MODEL); with several models, a parent folder")
    p.add_argument("--results", type=Path, default=None,
                   help="fine-tuning results.json (default runs/RUN/finetune/report/results.json if present)")
    p.add_argument("--license", default=None,
                   help="licence for the front matter (default: 'other/research-use-only' if any corpus "
                        "source is research-use, else apache-2.0)")
    p.add_argument("--push", action="store_true", help="upload the folder with huggingface_hub")
    p.add_argument("--private", action="store_true", help="create the hub repo as private")
    return p.parse_args(argv)


@main_guard
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    exports = find_exports(args.path)
    if args.push and not args.repo_id:
        raise UserError("--push needs --repo-id ORG/NAME (the hub repo to create or update)")
    if args.repo_id and len(exports) > 1 and "{model}" not in args.repo_id:
        raise UserError(f"{args.path} holds {len(exports)} models; put {{model}} in --repo-id "
                        "(e.g. 'me/{run}-{model}') so each gets its own repo")
    for export in exports:
        model = export.parent.name if export.name == "export" else export.name
        root = run_root_of(export)
        run = root.name if root is not None else "run"
        if args.out is not None:
            out = args.out / model if len(exports) > 1 else args.out
        elif root is not None:
            out = root / "publish" / model
        else:
            out = export.parent / "publish"
        repo_id = args.repo_id.format(run=run, model=model) if args.repo_id else None
        build_folder(export, out, repo_id, args.results, args.license)
        print(f"published {model} -> {out}  ({f'repo id {repo_id}' if repo_id else 'no repo id: the card names the folder'})")
        if args.push:
            url = push_folder(out, repo_id, private=args.private)
            print(f"pushed {out} -> {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

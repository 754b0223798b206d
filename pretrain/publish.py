"""Publish a finished run as a Hugging Face folder with a generated model card, optionally pushed.

    python -m pretrain.publish runs/demo/pretrain/mlm --repo-id me/zh-mlm-tiny [--push] [--private]
    python -m pretrain.publish runs/demo --repo-id 'me/{run}-{model}'   # every model of a run

The argument is an export folder (has ``pretrain_meta.json``), a pre-training output folder
(``runs/RUN/pretrain/NAME``) or a whole run (``runs/RUN``). The published folder
(``runs/RUN/publish/NAME/`` unless ``--out``) holds the safetensors weights, config, tokenizer
files, custom modelling code only where the variant needs it, the model card ``README.md``, the
resolved pre-training config and the corpus and vocabulary statistics.

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

log = get_logger("publish")

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
COPY_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "vocab.txt", "added_tokens.json", "spm.model",
              "sentencepiece.model", "chat_template.jinja")


def find_exports(path: Path) -> list[Path]:
    """Export folders named by ``path`` (an export, a pretrain output folder or a run folder)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if (path / "pretrain_meta.json").is_file():
        return [path]
    if (path / "export" / "pretrain_meta.json").is_file():
        return [path / "export"]
    found = sorted(p.parent for p in path.glob("pretrain/*/export/pretrain_meta.json"))
    if not found:
        raise UserError(f"{path}: holds no finished pre-training export (looked for pretrain_meta.json "
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


def _maybe_json(p: Path) -> Any:
    return read_json(p) if p.is_file() else None


def _maybe_yaml(p: Path) -> Any:
    return yaml.safe_load(p.read_text(encoding="utf-8")) if p.is_file() else None


def run_root_of(export: Path) -> Path | None:
    """``runs/RUN`` for ``runs/RUN/pretrain/NAME/export`` (None if the layout differs)."""
    if export.parent.parent.name == "pretrain":
        return export.parent.parent.parent
    return None


def locate_results(export: Path, explicit: Path | None) -> tuple[dict | None, str | None]:
    """The fine-tuning ``results.json`` and this model's key in it."""
    candidates = [explicit] if explicit else []
    root = run_root_of(export)
    if root is not None:
        candidates.append(root / "finetune" / "report" / "results.json")
    for c in candidates:
        if c and c.is_file():
            res = read_json(c)
            for key, m in res.get("models", {}).items():
                if m.get("random_init"):
                    continue
                d = m.get("dir")
                if d and Path(d).resolve() == export.resolve():
                    return res, key
            name = export.parent.name
            if name in res.get("models", {}):
                return res, name
            return res, None
    return None, None


def build_folder(export: Path, out: Path, repo_id: str, results_path: Path | None = None,
                 license: str | None = None) -> Path:
    """Write the publishable folder for ``export`` into ``out`` (atomically)."""
    from pretrain.model_card import card_license, licence_text, render_card

    refuse_pickles(export)
    weights, n_params = check_safetensors(export)
    meta = read_json(export / "pretrain_meta.json")
    run_dir = export.parent
    root = run_root_of(export)
    pre_cfg = _maybe_yaml(run_dir / "config.yaml")
    corpus_stats = _maybe_json(root / "corpus" / "stats.json") if root else None
    vocab_stats = None
    vp = meta.get("vocab_path")
    if vp and (Path(vp) / "stats.json").is_file():
        vocab_stats = read_json(Path(vp) / "stats.json")
    results, key = locate_results(export, results_path)

    with atomic_dir(out) as tmp:
        copied = []
        for w in weights:
            shutil.copy2(w, tmp / w.name)
            copied.append(w.name)
        for idx in sorted(export.glob("*.safetensors.index.json")):  # sharded weights load only with it
            shutil.copy2(idx, tmp / idx.name)
            copied.append(idx.name)
        for name in COPY_FILES:
            if (export / name).is_file():
                shutil.copy2(export / name, tmp / name)
                copied.append(name)
        if meta.get("trust_remote_code"):
            for py in sorted(export.glob("*.py")):
                shutil.copy2(py, tmp / py.name)
                copied.append(py.name)
        shutil.copy2(export / "pretrain_meta.json", tmp / "pretrain_meta.json")
        copied.append("pretrain_meta.json")
        if pre_cfg is not None:
            shutil.copy2(run_dir / "config.yaml", tmp / "pretrain_config.yaml")
            copied.append("pretrain_config.yaml")
        if corpus_stats is not None:
            (tmp / "corpus_stats.json").write_text(json.dumps(corpus_stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            copied.append("corpus_stats.json")
        if vocab_stats is not None:
            (tmp / "vocab_stats.json").write_text(json.dumps(vocab_stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            copied.append("vocab_stats.json")
        if results is not None and key is not None:
            sub = {k: v for k, v in results.items() if k != "models"}
            sub["models"] = {key: results["models"][key]}
            (tmp / "eval_results.json").write_text(json.dumps(sub, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
            copied.append("eval_results.json")
        lic = card_license(corpus_stats, license)
        written_extra = ["README.md"] + (["LICENSE"] if lic.get("license_link") == "LICENSE" else [])
        card = render_card(repo_id=repo_id, meta=meta, pretrain_config=pre_cfg, corpus_stats=corpus_stats,
                           vocab_stats=vocab_stats, results=results, model_key=key, n_params=n_params,
                           license=license, files=sorted(copied + written_extra))
        (tmp / "README.md").write_text(card, encoding="utf-8")
        if "LICENSE" in written_extra:
            (tmp / "LICENSE").write_text(licence_text(corpus_stats, lic), encoding="utf-8")
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
    p.add_argument("--repo-id", required=True,
                   help="ORG/NAME on the hub; may contain {run} and {model} (needed when publishing several)")
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
    if len(exports) > 1 and "{model}" not in args.repo_id:
        raise UserError(f"{args.path} holds {len(exports)} models; put {{model}} in --repo-id "
                        "(e.g. 'me/{run}-{model}') so each gets its own repo")
    for export in exports:
        model = export.parent.name if export.name == "export" else export.name
        root = run_root_of(export)
        run = root.name if root is not None else "run"
        repo_id = args.repo_id.format(run=run, model=model)
        if args.out is not None:
            out = args.out / model if len(exports) > 1 else args.out
        elif root is not None:
            out = root / "publish" / model
        else:
            out = export.parent / "publish"
        build_folder(export, out, repo_id, args.results, args.license)
        print(f"published {model} -> {out}  (repo id {repo_id})")
        if args.push:
            url = push_folder(out, repo_id, private=args.private)
            print(f"pushed {out} -> {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

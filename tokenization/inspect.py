"""``python -m tokenization inspect``: print one packed window decoded, word boundaries marked,
with an aligned second stream side by side.

    python -m tokenization inspect --run demo --kind char --extra sgt --split valid --window 3

The window is the one :class:`tokenization.loader.PackedLoader` yields at position ``--window`` of
epoch ``--epoch`` (global order, before the split across ranks) with the same ``--seed``,
``--seq-len`` and shuffling, so what is printed is exactly what training reads.

Output: the documents the window covers, then each stream on one line (tokens separated by
spaces, ``|`` before every token that starts a segmented word), then a table with one row per
stretch of characters on which both streams have a token boundary (the alignment unit).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.errors import UserError, main_guard

WORD_MARK = "|"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Arguments of the ``inspect`` subcommand (pass a subparser to add them to it)."""
    p = parser or argparse.ArgumentParser(prog="python -m tokenization inspect", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default="demo", help="run name (runs/RUN/shards)")
    p.add_argument("--runs-root", default="runs", help="folder holding the runs")
    p.add_argument("--shards", default=None, help="shards root (default RUNS_ROOT/RUN/shards)")
    p.add_argument("--kind", default="char", help="primary stream (vocabulary kind)")
    p.add_argument("--extra", default=None, help="second stream shown side by side, aligned by characters")
    p.add_argument("--split", default="valid", choices=("train", "valid"))
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--window", type=int, default=0, help="window position in the epoch's order")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--extra-seq-len", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shuffle", dest="shuffle", action="store_true", default=None,
                   help="shuffled order (default: on for train, off for valid)")
    p.add_argument("--no-shuffle", dest="shuffle", action="store_false")
    p.add_argument("--alpha", type=float, default=None, help="apply language mixing with this alpha")
    return p


def _decoder(loader, kind: str):
    """id -> token string through the pipeline's encoder (``str(id)`` if the vocabulary is gone)."""
    data = loader.data if kind == loader.kind else loader.extras[kind]
    vdir = data.dir / data.meta.get("vocab_dir", "")
    try:
        from tokenization.vocab import load_token_encoder

        enc = load_token_encoder(vdir)
        return lambda i: enc.id_to_token(int(i)) or f"<{int(i)}>"
    except Exception:  # noqa: BLE001 - inspecting must work without the vocabulary folder
        return lambda i: f"<{int(i)}>"


def _show(tok: str) -> str:
    return tok.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")


def render_stream(ids: np.ndarray, word_start: np.ndarray, special: np.ndarray, attn: np.ndarray, decode) -> str:
    parts = []
    for i, ws, sp, a in zip(ids.tolist(), word_start.tolist(), special.tolist(), attn.tolist()):
        if not a:
            break
        t = _show(decode(i))
        parts.append(t if sp or not ws else WORD_MARK + t)
    return " ".join(parts)


def side_by_side(a: dict, b: dict, decode_a, decode_b) -> list[tuple[str, str, str]]:
    """Rows ``(chars, tokens of a, tokens of b)``, cut where both streams have a boundary.

    Both streams of an aligned window have the same special-token structure ([CLS], [SEP]s) and
    the same characters between them, so each stretch between specials is merged by cumulative
    characters.
    """
    rows: list[tuple[str, str, str]] = []
    na, nb = int(a["attn"].sum()), int(b["attn"].sum())
    i = j = 0
    ca = cb = 0

    def tok(s, k, dec):
        t = _show(dec(s["ids"][k]))
        return t if s["special"][k] or not s["ws"][k] else WORD_MARK + t

    def real(s, k, n):
        return k < n and not s["special"][k]

    while i < na or j < nb:
        if not real(a, i, na) and not real(b, j, nb):
            rows.append(("", _show(decode_a(a["ids"][i])) if i < na else "", _show(decode_b(b["ids"][j])) if j < nb else ""))
            i, j = i + 1, j + 1
            continue
        start, ta, tb = ca, [], []
        while real(a, i, na) or real(b, j, nb):
            if real(a, i, na) and (ca <= cb or not real(b, j, nb)):
                ta.append(tok(a, i, decode_a))
                ca += int(a["cl"][i])
                i += 1
                while real(a, i, na) and int(a["cl"][i]) == 0:
                    ta.append(tok(a, i, decode_a))
                    i += 1
            else:
                tb.append(tok(b, j, decode_b))
                cb += int(b["cl"][j])
                j += 1
                while real(b, j, nb) and int(b["cl"][j]) == 0:
                    tb.append(tok(b, j, decode_b))
                    j += 1
            if ca == cb:
                rows.append((f"{start}-{ca}", " ".join(ta), " ".join(tb)))
                start, ta, tb = ca, [], []
        if ta or tb:
            rows.append((f"{start}-{max(ca, cb)}?", " ".join(ta), " ".join(tb)))
            ca = cb = max(ca, cb)
    return rows


def inspect_window(args: argparse.Namespace, out=None) -> str:
    from pipeline.log import format_table
    from tokenization.loader import PackedLoader

    out = out or sys.stdout
    root = Path(args.shards) if args.shards else Path(args.runs_root, args.run, "shards")
    shuffle = args.shuffle if args.shuffle is not None else args.split == "train"
    extra = (args.extra,) if args.extra and args.extra != args.kind else ()
    mixing = {"alpha": args.alpha} if args.alpha is not None else None
    loader = PackedLoader(root, args.kind, args.split, args.seq_len, 1, seed=args.seed, extra_kinds=extra,
                          shuffle=shuffle, mixing=mixing, extra_seq_len=args.extra_seq_len)
    n = loader.windows_per_epoch
    if not 0 <= args.window < n:
        raise UserError(f"--window {args.window} out of range: epoch {args.epoch} of {root / args.kind / args.split} "
                        f"has {n} window(s) of {args.seq_len} tokens")
    batch = loader.window(args.epoch, args.window)
    items = loader.window_items(args.epoch, args.window)
    lines = [f"window {args.window} of {n}, epoch {args.epoch}, {args.kind}/{args.split} (seed {args.seed}, "
             f"seq_len {args.seq_len}, {'shuffled' if shuffle else 'stored order'})"]
    for it in items:
        span = it.get("chars") or it.get("tokens")
        unit = "chars" if "chars" in it else "tokens"
        lines.append(f"  doc {it['shard']}:{it['doc']} id={it['id']} lang={it['lang']} source={it['source']} "
                     f"{unit} [{span[0]}, {span[1]}){' + [SEP]' if it['sep'] else ''}")
    streams = [(args.kind, "")] + [(k, f"{k}.") for k in extra]
    decs = {}
    views = {}
    for kind, prefix in streams:
        decs[kind] = _decoder(loader, kind)
        ids = batch[prefix + "input_ids"][0]
        views[kind] = {"ids": ids, "ws": batch[prefix + "word_start"][0], "special": batch[prefix + "special_mask"][0],
                       "attn": batch[prefix + "attention_mask"][0], "cl": batch[prefix + "char_len"][0]}
        v = views[kind]
        n_tok = int(v["attn"].sum())
        lines.append(f"{kind} ({n_tok} tokens, {int(v['cl'].sum())} chars, {WORD_MARK} = word start):")
        lines.append("  " + render_stream(v["ids"], v["ws"], v["special"], v["attn"], decs[kind]))
        if prefix == "" and "unit_len" in batch:
            ul = batch["unit_len"][0]
            units = int(((ul > 1) & (v["attn"] > 0)).sum())
            lines.append(f"  n-gram units of 2+ tokens: {units}")
    if extra:
        a, b = views[args.kind], views[extra[0]]
        rows = side_by_side(a, b, decs[args.kind], decs[extra[0]])
        lines.append("")
        lines.append(format_table(["chars", args.kind, extra[0]], rows))
    text = "\n".join(lines)
    print(text, file=out, flush=True)
    return text


@main_guard
def main_inspect(argv_or_args: Sequence[str] | argparse.Namespace | None = None) -> int:
    """Entry point: ``argv`` list (standalone) or an ``argparse.Namespace`` from the stage CLI."""
    if isinstance(argv_or_args, argparse.Namespace):
        args = argv_or_args
    else:
        args = build_parser().parse_args(list(argv_or_args) if argv_or_args is not None else None)
    inspect_window(args)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main_inspect())

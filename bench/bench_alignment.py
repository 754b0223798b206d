"""How well the multi-vocabulary objectives align the char and SGT streams on real batches.

    python bench/bench_alignment.py --run runs/demo [--batches 20] [--seq-len 128] [--batch-size 32]

Writes ``runs/bench/alignment.json`` (bench/record.py). Reads the run's token shards (``char`` and ``sgt``, train split) through the project loader and
runs the objectives' own ``collate`` (``hi_mvp`` on char windows + the aligned SGT stream,
``al_mvp`` reading a on SGT windows + the aligned char stream, as their tiny configs do). The
checks use only the collated output and the vocabularies' token strings, so they measure any
version of the alignment code:

* ``hi_mvp``: real SGT tokens that show a non-whitespace character but get no char token
  (``coarse_index``), in % of real SGT tokens, and how many of them are not ASCII (the rest are
  SGT pieces of a Latin word that the char vocabulary keeps as one longer WordPiece: one char
  token can feed only one SGT token);
* ``al_mvp`` (a): character targets read from an SGT token in which the target's string does not
  start ("wrong token"), and targets whose character the input still shows ("leaked": read from
  the wrong token while an unselected neighbour holds the character, or spanning an unselected
  SGT token), in % of targets;
* ``chars_vs_mlm``: characters the two-stream windows cover, in % of the same windows of the
  primary stream alone (what ``mlm`` / ``mlm_sgt`` see).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _surfaces(vocab_dir: Path) -> list[str]:
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(vocab_dir / "tokenizer.json"))
    vocab = tk.get_vocab(with_added_tokens=True)
    out = [""] * (max(vocab.values()) + 1)
    for t, i in vocab.items():
        s = t[2:] if t.startswith("##") and len(t) > 2 else t
        out[i] = "".join(c for c in s if not (c.isspace() or c == "\u2581")).lower()
    for i, t in enumerate(("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")):
        out[i] = ""
    return out


def _context(run: Path, primary: str, seq_len: int):
    from pretrain.models import ModelConfig
    from pretrain.objectives.base import ObjectiveContext, VocabInfo

    vocabs = {}
    for k in ("char", "sgt"):
        st = json.loads((run / "vocab" / k / "stats.json").read_text(encoding="utf-8"))
        sp = st["special_tokens"]
        vocabs[k] = VocabInfo(kind=k, path=str(run / "vocab" / k), size=int(st["size"]), pad_id=sp["pad"],
                              unk_id=sp["unk"], cls_id=sp["cls"], sep_id=sp["sep"], mask_id=sp["mask"],
                              special_ids=tuple(sp.values()))
    m = ModelConfig(size="tiny", num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64,
                    max_position_embeddings=max(512, seq_len), dropout=0.0)
    return ObjectiveContext(model=m, vocabs=vocabs, primary=primary, seq_len=seq_len)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True, help="runs/RUN (with vocab/ and shards/)")
    ap.add_argument("--batches", type=int, default=20)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--debug", action="store_true", help="print every leaked target")
    args = ap.parse_args()
    debug = args.debug
    from pretrain.objectives.base import build_objective
    from tokenization.loader import PackedLoader

    run = Path(args.run)
    surf = {k: _surfaces(run / "vocab" / k) for k in ("char", "sgt")}
    g = torch.Generator().manual_seed(0)
    res: dict = {}

    # ---- hi_mvp: char windows, SGT aligned
    ld = PackedLoader(run / "shards", "char", "train", args.seq_len, args.batch_size, seed=0, extra_kinds=("sgt",))
    ob = build_objective("hi_mvp", {}, _context(run, "char", args.seq_len))
    n_real = n_empty = n_ws = n_empty_cjk = 0
    solo = PackedLoader(run / "shards", "char", "train", args.seq_len, args.batch_size, seed=0)
    hc = {"pair": 0, "mlm": 0}
    for i in range(min(args.batches, len(ld))):
        b = ld.batch(0, i)
        hc["pair"] += int(b["char_len"].astype(np.int64).sum())
        hc["mlm"] += int(solo.batch(0, i)["char_len"].astype(np.int64).sum())
        out = ob.collate(b, g)
        idx = out["coarse_index"].numpy()
        ids = b["sgt.input_ids"]
        real = (b["sgt.attention_mask"] > 0) & ~b["sgt.special_mask"]
        for r in range(ids.shape[0]):
            owned = set(idx[r][idx[r] >= 0].tolist())
            for s in np.flatnonzero(real[r]).tolist():
                shows = surf["sgt"][ids[r, s]] != "" or ids[r, s] == 1
                n_real += 1
                if not shows:
                    n_ws += 1
                elif s not in owned:
                    n_empty += 1
                    n_empty_cjk += not surf["sgt"][ids[r, s]].isascii()
    res["hi_mvp"] = {"real_sgt_tokens": n_real, "whitespace_only": n_ws, "no_char": n_empty,
                     "no_char_pct": round(100.0 * n_empty / max(1, n_real), 2),
                     "no_char_non_ascii": n_empty_cjk,
                     "chars_vs_mlm_pct": round(100.0 * hc["pair"] / max(1, hc["mlm"]), 2)}

    # ---- al_mvp reading a: SGT windows, char aligned
    ld = PackedLoader(run / "shards", "sgt", "train", args.seq_len, args.batch_size, seed=0, extra_kinds=("char",))
    ctx = _context(run, "sgt", args.seq_len)
    unk_sgt = ctx.vocabs["sgt"].unk_id  # an [UNK] SGT token's string is unknown: not "wrong"
    ob = build_objective("al_mvp", {"reading": "a"}, ctx)
    n_t = n_wrong = n_leak = 0
    chars = {"primary": 0, "aligned": 0, "mlm": 0}
    solo = PackedLoader(run / "shards", "sgt", "train", args.seq_len, args.batch_size, seed=0)
    for i in range(min(args.batches, len(ld))):
        b = ld.batch(0, i)
        out = ob.collate(b, g)
        S = b["input_ids"].shape[1]
        ids = b["input_ids"]
        sel = np.zeros(ids.size, dtype=bool)
        sel[out["coarse_pos"].numpy()] = True
        sel = sel.reshape(ids.shape)
        real = (b["attention_mask"] > 0) & ~b["special_mask"]
        for src, lab in zip(out["char_src"].tolist(), out["char_labels"].tolist()):
            r, s = divmod(src, S)
            c = surf["char"][lab]
            if not c:
                continue
            n_t += 1
            # the target's string must start inside SGT token s (it may run on into the next
            # tokens: a char-vocabulary WordPiece spanning several SGT pieces of a Latin word)
            toks = ids[r, s:s + 8].tolist()
            run_on = "".join(surf["sgt"][x] for x in toks)
            off = run_on.find(c)
            if toks[0] != unk_sgt and not 0 <= off < len(surf["sgt"][toks[0]]):
                n_wrong += 1
                if debug:
                    print("wrong", repr(c), [surf["sgt"][x] for x in ids[r, max(0, s - 3):s + 4]], s)
                # leaked: an unselected neighbour of the input shows the character
                leak = any(0 <= nb < S and real[r, nb] and not sel[r, nb] and c in surf["sgt"][ids[r, nb]]
                           for nb in (s - 1, s + 1))
            else:
                # leaked: one of the SGT tokens the target's string spans is not selected
                leak, pos = False, 0
                for k, x in enumerate(toks):
                    n = len(surf["sgt"][x])
                    if pos < off + len(c) and pos + n > off and not sel[r, s + k]:
                        leak = True
                    pos += n
                    if pos >= off + len(c):
                        break
            if leak:
                n_leak += 1
                if debug:
                    print("leak", c, [surf["sgt"][x] for x in ids[r, max(0, s - 3):s + 4]], sel[r, max(0, s - 3):s + 4])
        chars["primary"] += int(b["char_len"].astype(np.int64).sum())
        chars["aligned"] += int(b["char.char_len"].astype(np.int64).sum())
        chars["mlm"] += int(solo.batch(0, i)["char_len"].astype(np.int64).sum())
    res["al_mvp_a"] = {"targets": n_t, "wrong_token": n_wrong, "wrong_pct": round(100.0 * n_wrong / max(1, n_t), 2),
                       "leaked": n_leak, "leaked_pct": round(100.0 * n_leak / max(1, n_t), 2)}
    res["al_mvp_a"]["chars_vs_mlm_sgt_pct"] = round(100.0 * chars["primary"] / max(1, chars["mlm"]), 2)
    print(json.dumps(res, indent=1))
    from bench.record import write_record

    # correctness figures (no speed baseline): the share of misaligned tokens and leaked targets
    records = [{"metric": "hi_mvp_sgt_tokens_without_char", "value": res["hi_mvp"]["no_char_pct"], "unit": "% of real SGT tokens",
                "baseline": None, "ratio": None},
               {"metric": "al_mvp_a_wrong_token_targets", "value": res["al_mvp_a"]["wrong_pct"], "unit": "% of targets",
                "baseline": None, "ratio": None},
               {"metric": "al_mvp_a_leaked_targets", "value": res["al_mvp_a"]["leaked_pct"], "unit": "% of targets",
                "baseline": None, "ratio": None}]
    print(f"wrote {write_record('alignment', records, results=res)}")


if __name__ == "__main__":
    main()

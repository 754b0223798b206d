"""The shared config system: YAML + dotted overrides into typed dataclasses, clear errors."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from pipeline.config import ConfigError, dump_config, load_config, save_config


@dataclass
class Model:
    hidden: int = 128
    dropout: float = 0.1
    act: Literal["gelu", "relu"] = "gelu"


@dataclass
class Cfg:
    run: str = "demo"
    steps: int = 10
    tags: list[str] = field(default_factory=list)
    limit: Optional[int] = None
    model: Model = field(default_factory=Model)

    def validate(self):
        if self.steps <= 0:
            raise ValueError("steps must be positive")


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "steps: 5\nmodel:\n  hidden: 64\n")
    cfg = load_config(Cfg, p, ["model.dropout=0", "tags=[a, b]", "limit=3", "run=x"])
    assert cfg.steps == 5 and cfg.model.hidden == 64 and cfg.model.dropout == 0.0
    assert isinstance(cfg.model.dropout, float)
    assert cfg.tags == ["a", "b"] and cfg.limit == 3 and cfg.run == "x"


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    p = write(tmp_path, "model:\n  hiden: 64\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, p)
    msg = str(e.value)
    assert "model.hiden" in msg and str(p) in msg and "hidden" in msg and "dropout" in msg


def test_unknown_override_key(tmp_path):
    with pytest.raises(ConfigError, match="stpes"):
        load_config(Cfg, None, ["stpes=3"])


@pytest.mark.parametrize("override,needle", [
    ("steps=abc", "integer"), ("model.act=tanh", "valid values"), ("steps=1.5", "integer"),
    ("model.dropout=yes", "number"), ("steps=0", "positive"),
])
def test_mistyped_values(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config(Cfg, None, [override])


def test_include_and_round_trip(tmp_path):
    write(tmp_path, "steps: 7\nmodel:\n  hidden: 32\n", "base.yaml")
    p = write(tmp_path, "include: base.yaml\nmodel:\n  dropout: 0.2\n")
    cfg = load_config(Cfg, p)
    assert cfg.steps == 7 and cfg.model.hidden == 32 and cfg.model.dropout == 0.2
    out = tmp_path / "resolved.yaml"
    save_config(cfg, out)
    assert load_config(Cfg, out) == cfg
    assert "hidden: 32" in dump_config(cfg)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Cfg, write(tmp_path, "a: [1,\n"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Cfg, write(tmp_path, "- 1\n- 2\n"))


def test_yaml_11_quirks_are_read_as_meant(tmp_path):
    @dataclass
    class Q:
        lr: float = 0.1
        mp: Literal["no", "bf16"] = "bf16"

    cfg = load_config(Q, write(tmp_path, "lr: 1e-3\nmp: no\n"))
    assert cfg.lr == 0.001 and cfg.mp == "no"
    with pytest.raises(ConfigError, match="number"):
        load_config(Q, None, ["lr=fast"])

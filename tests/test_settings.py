"""The settings schema: one declaration gives the defaults, the CLI options and the Airflow Params, with one set of rules."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import jsonschema
import pytest

from deccm import settings
from deccm.runs import RunError, TrainConfig
from deccm.settings import Pipeline, SettingsError, spec, specs

# JSON values a trigger form or an API conf may send (text is a CLI's business: the Params take JSON types)
PROBES = [None, 0, 1, 2, -1, 7, 0.5, 1.5, 1e9, True, False, "x", "", "demo", "fixed", "HR_w@10", "MedR", "gate", "test", "plain"]


def _accepts(schema: dict, value: object) -> bool:
    try:
        jsonschema.validate(value, schema)
        return True
    except jsonschema.ValidationError:
        return False


def _converts(s: settings.Spec, value: object) -> bool:
    try:
        s.convert(value)
        return True
    except SettingsError:
        return False


@pytest.mark.parametrize("s", specs(Pipeline), ids=lambda s: s.name)
def test_the_params_and_the_converter_accept_the_same_values(s: settings.Spec) -> None:
    probes = PROBES + list(s.choices or []) + [b + d for b in (s.minimum, s.maximum, s.above) if b is not None for d in (-0.5, 0, 0.5)]
    for value in probes:
        if (s.type is int and isinstance(value, float)) or (s.type is not str and value == ""):
            continue  # 7.0 is an integer to the converter (TOML) and "" empty text (a CLI): JSON sends neither
        assert _accepts(s.json_schema(), value) == _converts(s, value), (s.name, value)
    assert _converts(s, s.default), s.name  # every default passes its own rules


def test_conversion_takes_text_and_typed_values_and_refuses_with_the_rule() -> None:
    assert spec(Pipeline, "epochs").convert("3") == 3 and spec(Pipeline, "epochs").convert(3.0) == 3
    assert spec(Pipeline, "gate_margin").convert("0.01") == 0.01 and spec(Pipeline, "gate_margin").convert(0) == 0.0
    assert spec(Pipeline, "balance_blocks").convert("yes") is True and spec(Pipeline, "balance_blocks").convert("off") is False
    assert spec(Pipeline, "epochs").convert(None) is None  # empty: the source's
    for name, value, words in (("epochs", "3.5", "must be an integer"), ("epochs", 0, "at least 1"), ("epochs", True, "integer"),
                               ("gate_floor", math.nan, "finite number"), ("gate_floor", 1.01, "at most 1"),
                               ("window_hop_s", 0, "above 0"), ("source", "web", "choose one of synth-tiny"),
                               ("seed", None, "needs a value"), ("videos", 3, "must be text"),
                               ("balance_blocks", "maybe", "true or false")):
        with pytest.raises(SettingsError, match=f"{name}={value!r} is refused: .*{words}"):
            spec(Pipeline, name).convert(value)


def test_a_dict_of_settings_drops_empties_and_refuses_unknown_keys() -> None:
    assert settings.convert(Pipeline, {"epochs": "4", "videos": "", "lr": None}, "pipeline settings") == {"epochs": 4}
    with pytest.raises(SettingsError, match=r"unknown pipeline settings \['epoch'\]. Fix: use \[.*'epochs'"):
        settings.convert(Pipeline, {"epoch": 4}, "pipeline settings")
    assert settings.defaults(Pipeline)["gate_metric"] == "HR@10" and settings.defaults(Pipeline)["epochs"] is None


def test_cli_options_are_made_from_the_schema_and_refuse_at_parse_time(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser(prog="x")
    settings.add_options(p, Pipeline)
    args = p.parse_args(["--gate-margin", "0.02", "--balance-blocks", "true"])
    assert (args.gate_margin, args.balance_blocks, args.epochs) == (0.02, True, None)  # unset stays None: defaults apply later
    with pytest.raises(SystemExit):
        p.parse_args(["--gate-split", "test"])
    assert "gate_split='test' is refused: choose one of gate, val" in capsys.readouterr().err
    assert "empty = the source's (demo 200" in p.format_help()


def test_train_config_reads_its_table_through_the_same_rules() -> None:
    assert TrainConfig.from_dict({"epochs": "3", "lr": 0.01, "device": "cpu", "patience": None}) == \
        TrainConfig(epochs=3, lr=0.01, device="cpu")
    with pytest.raises(RunError, match=r"unknown training settings \['epoch'\]"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(RunError, match="batch_size=1 is refused: it must be at least 2"):
        TrainConfig.from_dict({"batch_size": 1})


def test_the_dag_readme_shows_the_settings_as_the_schema_declares_them() -> None:
    readme = (Path(__file__).resolve().parents[1] / "dags" / "README.md").read_text()
    assert settings.table(Pipeline) in readme, "run `python -m deccm.pipeline defaults --markdown` and paste it in dags/README.md"
    assert all(f"| `{s.name}` |" in settings.table(Pipeline) for s in specs(Pipeline))

"""The typed config: YAML ← key=value overrides; unknown keys, wrong types and bad choices name the key and file."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolace_r.config import Config, load_config, to_dict, to_yaml
from toolace_r.errors import ConfigError

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_defaults_are_typed_dataclasses():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.pool.path == "builtin" and cfg.probe.k == 8 and cfg.select.policy == "learnable"
    assert isinstance(cfg.train.betas, list) and cfg.eval.generation.temperature == 0.0


def test_yaml_then_overrides(tmp_path):
    path = write(tmp_path, "probe:\n  k: 4\n  generation:\n    temperature: 0.5\nrun:\n  dir: runs/x\n")
    cfg = load_config(path, ["probe.k=6", "train.lr=0.001", "eval.data=[builtin,bfcl:/d]", "train.lora.enabled=true"])
    assert cfg.probe.k == 6  # command line wins over the file
    assert cfg.probe.generation.temperature == 0.5 and cfg.run.dir == "runs/x"
    assert cfg.train.lr == pytest.approx(0.001) and cfg.train.lora.enabled is True
    assert cfg.eval.data == ["builtin", "bfcl:/d"]


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path, "probe:\n  kk: 4\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "probe.kk" in str(err.value)


def test_wrong_type_in_file_names_key_and_file(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: many\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "train.max_steps" in str(err.value)


@pytest.mark.parametrize("override,key", [("probe.kk=3", "probe.kk"), ("probe.k=abc", "probe.k"),
                                          ("nosuch.section=1", "nosuch")])
def test_bad_override_names_key_and_command_line(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert "command line" in str(err.value) and key in str(err.value)


def test_override_without_equals():
    with pytest.raises(ConfigError, match="'probe.k' is not of the form key=value"):
        load_config(None, ["probe.k"])


@pytest.mark.parametrize("override,key", [("select.policy=best", "select.policy"),
                                          ("pool.on_error=ignore", "pool.on_error"),
                                          ("train.zero_stage=4", "train.zero_stage"),
                                          ("model.prompt_style=fancy", "model.prompt_style"),
                                          ("eval.decoder=strict", "eval.decoder"),
                                          ("probe.decoder=strict", "probe.decoder"),
                                          ("refine.keep_answer=copy", "refine.keep_answer")])
def test_choices_are_checked(override, key):
    with pytest.raises(ConfigError, match=f"key '{key}'"):
        load_config(None, [override])


def test_the_leaderboards_decoder_judges_eval_and_probe_by_default(tmp_path):
    """eval.decoder defaults to BFCL's decoder; probe.decoder follows eval.decoder unless set, so the probe (and the
    refinement corpus built from its verdicts) judges answers as the evaluation does. Both stay overridable."""
    for cfg in (load_config(), Config()):
        assert cfg.eval.decoder == "bfcl" and cfg.probe.decoder == "bfcl"
    lenient = load_config(None, ["eval.decoder=lenient"])
    assert lenient.eval.decoder == "lenient" and lenient.probe.decoder == "lenient"  # one judge for both
    from_file = load_config(write(tmp_path, "eval:\n  decoder: lenient\n"))
    assert from_file.probe.decoder == "lenient"
    apart = load_config(None, ["probe.decoder=lenient"])  # set apart on purpose (the driver warns)
    assert apart.probe.decoder == "lenient" and apart.eval.decoder == "bfcl"
    apart = load_config(write(tmp_path, "eval:\n  decoder: lenient\n"), ["probe.decoder=bfcl"])
    assert apart.probe.decoder == "bfcl" and apart.eval.decoder == "lenient"
    # a run dir's saved config records the decoder the probe used
    assert load_config(write(tmp_path, to_yaml(lenient))).probe.decoder == "lenient"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "probe: [k: 4\n"))


def test_yaml_round_trip(tmp_path):
    cfg = load_config(None, ["probe.k=3", "serve.port=9001"])
    again = load_config(write(tmp_path, to_yaml(cfg)))
    assert to_dict(again) == to_dict(cfg)


def test_retired_keys_in_a_file_are_dropped_with_a_warning(tmp_path, caplog):
    """run.seed and refine.max_rounds were read nowhere: an older job file (or a run dir's saved config.yaml) that
    has them still loads, to the same config as without them, and the log says which key to delete and why."""
    path = write(tmp_path, "refine:\n  max_rounds: 5\n  keep_answer: confirm\nrun:\n  seed: 3\n  dir: runs/x\n")
    with caplog.at_level("WARNING", logger="toolace_r.config"):
        cfg = load_config(path)
    assert to_dict(cfg) == to_dict(load_config(None, ["refine.keep_answer=confirm", "run.dir=runs/x"]))
    assert "max_rounds" not in to_dict(cfg)["refine"] and "seed" not in to_dict(cfg)["run"]
    text = caplog.text
    assert str(path) in text and "'refine.max_rounds' is ignored" in text and "eval.max_rounds" in text
    assert "'run.seed' is ignored" in text and "train.seed" in text


@pytest.mark.parametrize("override", ["refine.max_rounds=1", "run.seed=4"])
def test_a_retired_key_on_the_command_line_is_an_error_saying_why(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"command line: key '{key}' no longer exists: it was read nowhere"):
        load_config(None, [override])


def _job_files() -> list[str]:
    """toolace-r job configs under jobs/ (Ray Serve config files there, with `applications:`, are not ours)."""
    import yaml

    return sorted(p.name for p in JOBS.glob("*.yaml") if "applications" not in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("job", _job_files() or ["(none)"])
def test_every_job_file_loads(job):
    if job == "(none)":
        pytest.skip("no job YAML files under jobs/ yet")
    assert isinstance(load_config(JOBS / job), Config)

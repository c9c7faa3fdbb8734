from pathlib import Path

import pytest
import yaml

from p2p.config import PRESETS, deep_merge, load_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_in_params_yaml_validates(preset):
    cfg = load_config(ROOT / "params.yaml", preset=preset)
    assert cfg.preset == preset
    assert cfg.data.sources, "a preset must name at least one data source"


def test_default_preset_is_cpu_and_presets_override_base():
    base = load_config(ROOT / "params.yaml")
    smoke = load_config(ROOT / "params.yaml", preset="smoke")
    assert base.preset == "cpu"
    assert smoke.data.synth.users < base.data.synth.users
    assert smoke.split.dir == base.split.dir  # untouched keys come from the base


def test_deep_merge_merges_dicts_and_replaces_lists():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2}
    merged = deep_merge(base, {"a": {"y": [3]}, "c": 4})
    assert merged == {"a": {"x": 1, "y": [3]}, "b": 2, "c": 4}
    assert base["a"]["y"] == [1, 2]  # the input is not modified


def _write_params(tmp_path, mutate):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_typo_in_params_names_the_key(tmp_path):
    path = _write_params(tmp_path, lambda raw: raw["split"].update(tset_users=3))
    with pytest.raises(ValueError, match=r"split\.tset_users"):
        load_config(path)


def test_a_bad_value_names_the_key_and_preset(tmp_path):
    path = _write_params(tmp_path, lambda raw: raw["presets"]["smoke"]["data"]["synth"].update(users=0))
    with pytest.raises(ValueError, match=r"preset 'smoke'.*data\.synth\.users"):
        load_config(path, preset="smoke")


def test_unknown_preset_lists_the_defined_ones():
    with pytest.raises(ValueError, match="unknown preset 'huge'.*smoke"):
        load_config(ROOT / "params.yaml", preset="huge")


def test_flat_gives_dotted_keys_for_logging():
    flat = load_config(ROOT / "params.yaml", preset="smoke").flat()
    assert flat["data.synth.users"] == 40
    assert flat["preset"] == "smoke"


@pytest.mark.parametrize("overrides", [
    ["preset=smoke"],
    ["data.sources=[{dataset: personal_reddit, tasks: [PersonalReddit]}, {dataset: empathetic_conversations, "
     "tasks: [EmpatheticConv]}]", "data.queries_per_user=2", "judge.forced_choice=true"],
])
def test_params_survive_dvc_exp_run_set_param(tmp_path, overrides):
    """`dvc exp run -S` rewrites params.yaml with DVC's own YAML dumper (which re-wraps flow mappings): every preset
    must still load, and the override must take effect. A URL in a flow mapping once broke this."""
    from dvc.utils.hydra import apply_overrides
    from dvc.utils.serialize import parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text(Path("params.yaml").read_text())
    apply_overrides(str(path), overrides)
    parse_yaml(path.read_text(), str(path))  # DVC's own (YAML 1.2) reader, as `dvc exp run` reads it next
    for preset in PRESETS:
        load_config(path, preset)
    cfg = load_config(path)
    assert cfg.preset == (overrides[0].split("=")[1] if overrides[0].startswith("preset=") else "cpu")
    if len(overrides) > 1:
        assert [s.dataset for s in cfg.data.sources] == ["personal_reddit", "empathetic_conversations"]
        assert (cfg.data.queries_per_user, cfg.judge.forced_choice) == (2, True)
    assert load_config(path, "paper").judge.base_url == "https://api.openai.com/v1"

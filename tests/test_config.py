from pathlib import Path

import pytest
import yaml

from p2p.config import deep_merge, load_config

ROOT = Path(__file__).resolve().parents[1]
PRESETS = tuple(yaml.safe_load((ROOT / "params.yaml").read_text())["presets"])


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


def test_a_preset_defined_only_in_params_yaml_loads(tmp_path):
    path = _write_params(tmp_path, lambda raw: raw["presets"].update(mine={"seed": 7}))
    cfg = load_config(path, "mine")
    assert (cfg.preset, cfg.seed) == ("mine", 7)


@pytest.mark.parametrize("text, match", [
    ("seed: 0\nseed: 1\n", r"record line 2: not valid YAML \(duplicate key 'seed', first at line 1\)"),
    ("data: {raw_dir: a, raw_dir: b}\n", r"record line 1: not valid YAML \(duplicate key 'raw_dir'"),
    ("seed: [0\n", "record line 2: not valid YAML"),
    ("- a\n", "expected a mapping of sections, got a list"),
    ("presets: [smoke]\n", "field 'presets': expected a mapping"),
    ("presets: {smoke: fast}\n", "field 'presets.smoke': expected a mapping of overrides, got a str"),
    ("preset: [smoke]\npresets: {smoke: {}}\n", "field 'preset': expected a preset name"),
])
def test_bad_yaml_and_wrong_shapes_are_input_errors_naming_the_file(tmp_path, text, match):
    from p2p.io import InputError

    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=match) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: ")


@pytest.mark.parametrize("mutate, match", [
    (lambda raw: raw.update(seed=True), r"seed: Input should be a valid integer, got True"),
    (lambda raw: raw["split"].update(test_users=3.0), r"split\.test_users: Input should be a valid integer"),
    (lambda raw: raw["split"].update(test_users="3"), r"split\.test_users: Input should be a valid integer"),
    (lambda raw: raw["embed"].update(instruction=1), r"embed\.instruction: Input should be a valid boolean"),
    (lambda raw: raw["train"].update(lr=True), r"train\.lr: Input should be a valid number"),
    (lambda raw: raw["data"].update(sources=[]), r"data\.sources: List should have at least 1 item"),
    (lambda raw: raw["data"].update(sources=[{"dataset": "synth", "tasks": []}]), r"data\.sources\.0\.tasks"),
])
def test_values_are_checked_strictly(tmp_path, mutate, match):
    path = _write_params(tmp_path, mutate)
    with pytest.raises(ValueError, match=match):
        load_config(path)


def test_numbers_are_read_as_yaml_1_2_reads_them_and_ints_serve_as_floats(tmp_path):
    path = tmp_path / "params.yaml"
    text = (ROOT / "params.yaml").read_text()
    assert "  lr: 3.0e-4 " in text  # the base train.lr, written the way YAML 1.1 reads as a float
    path.write_text(text.replace("  lr: 3.0e-4 ", "  lr: 3e-4 ", 1))  # as DVC writes it; YAML 1.1 reads a string
    assert load_config(path).train.lr == 3e-4
    cfg = load_config(_write_params(tmp_path, lambda raw: raw["train"].update(lr=1)))
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)


def _old_name(section: dict) -> None:
    """`hyper.architecture` written under its name before the rename, `hyper.layout`."""
    section["layout"] = section.pop("architecture")


@pytest.mark.parametrize("where", ["file", "preset"])
def test_the_old_name_hyper_layout_is_read_as_hyper_architecture_with_a_warning(tmp_path, caplog, where):
    if where == "file":
        path = _write_params(tmp_path, lambda raw: (_old_name(raw["hyper"]), raw["hyper"].update(layout="released")))
    else:
        path = _write_params(tmp_path, lambda raw: _old_name(raw["presets"]["paper"]["hyper"]))
    with caplog.at_level("WARNING", logger="p2p.config"):
        cfg = load_config(path, preset="smoke" if where == "file" else "paper")
    assert cfg.hyper.architecture == "released"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "hyper.layout is now called hyper.architecture" in warnings[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="p2p.config"):
        assert load_config(ROOT / "params.yaml", preset="paper").hyper.architecture == "released"
    assert not caplog.records  # the new name: no warning


def test_the_old_and_the_new_name_together_are_refused(tmp_path):
    path = _write_params(tmp_path, lambda raw: raw["hyper"].update(layout="released"))
    with pytest.raises(ValueError, match=r"hyper\.layout is the old name of hyper\.architecture"):
        load_config(path, preset="smoke")


def test_the_removed_train_check_settings_are_ignored_with_a_warning_saying_what_replaces_them(tmp_path, caplog):
    path = _write_params(tmp_path, lambda raw: (raw["train"].update(check=False, eval_max_new_tokens=64),
                                                raw["presets"]["smoke"]["train"].update(check=True)))
    with caplog.at_level("WARNING", logger="p2p.config"):
        cfg = load_config(path, preset="smoke")
    assert cfg.train == load_config(ROOT / "params.yaml", preset="smoke").train
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 3, warnings  # the file's two keys and the preset's one
    assert all("is no longer a setting and is ignored" in w for w in warnings)
    assert any("train.check" in w and "evaluate_p2p_shuffled" in w for w in warnings)

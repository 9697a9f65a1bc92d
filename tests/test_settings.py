"""config.json's shape is written down once (settings.py): every train.py flag is a training setting
or a run option, and the comparison and the report read that table."""
import json

import pytest

import settings
import train


def test_every_train_flag_is_a_setting_or_a_run_option():
    dests = {a.dest for a in train.build_parser()._actions if a.option_strings and a.dest != "help"}
    unknown = dests - set(settings.SETTINGS) - set(settings.RUN_OPTIONS)
    assert not unknown, f"add these train.py flags to settings.SETTINGS (or RUN_OPTIONS): {sorted(unknown)}"
    stale = (set(settings.SETTINGS) | set(settings.RUN_OPTIONS)) - dests
    assert not stale, f"settings.py names flags train.py no longer has: {sorted(stale)}"


def test_a_run_keeps_every_setting_and_its_provenance(tiny_run):
    config = json.loads((tiny_run / "config.json").read_text())
    assert set(settings.settings_of(config)) == set(settings.SETTINGS)
    assert all(config[k] for k in settings.PROVENANCE_KEYS)


def test_changed_settings_ignore_bookkeeping_and_keep_table_order():
    a = {"arch": "resnet18", "lr": 0.1, "seed": 1, "git_commit": "x", "wall_seconds": 3, "precision": "float32"}
    b = {**a, "lr": 0.01, "seed": 2, "git_commit": "y", "wall_seconds": 4, "cutmix_prob": 0.5}
    assert settings.changed_settings(a, b) == ["lr", "cutmix_prob", "seed"]
    assert settings.settings_of(b, {"seed"}) == {"arch": "resnet18", "lr": 0.01, "cutmix_prob": 0.5}


def test_rows_shown_only_where_they_matter():
    sgd, adam = {"optimizer": "sgd"}, {"optimizer": "adam"}
    assert settings.shown("momentum", adam, sgd) and not settings.shown("momentum", adam, adam)
    assert not settings.shown("cutmix_alpha", {"cutmix_prob": 0.0}, {})
    assert settings.shown("limit_test", {"limit_test": 100}, {}) and settings.shown("lr", {}, {})
    assert settings.label("amp") == "bf16 autocast" and settings.label("unknown_key") == "unknown_key"


@pytest.mark.parametrize("config, shown_", [
    ({"tf32": False, "device_name": "cpu (2 cores, 1 thread)"}, False),
    ({"tf32": False, "device_name": "mps"}, False),
    ({"tf32": False, "device_name": "NVIDIA H100 80GB HBM3"}, True),
    ({"tf32": True, "device_name": "cpu (2 cores, 1 thread)"}, True),  # asked for, fell back: say so
    ({"imported": {}}, False)])
def test_the_tf32_row_shows_where_cuda_ran_or_tf32_was_asked(config, shown_):
    assert settings.shown("tf32", config) is shown_

"""run.json's history of starts and the resume comparison (matpac_jax/train/run_record.py)."""

import json
import os

import ml_collections
import pytest

from matpac_jax import cli, config_lib
from matpac_jax.train import run_record

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def _config(**changes):
    config = config_lib.load_config(os.path.join(CONFIG, "matpac_pp.py:runlocal"))
    for dotted, value in changes.items():
        *parents, name = dotted.split("__")
        node = config
        for p in parents:
            node = node[p]
        node[name] = value
    return config


@pytest.mark.parametrize(
    "key, fixed",
    [
        ("model.variant", True),
        ("model.cls_classes", True),
        ("model.mask_ratio", True),
        ("seed", True),
        ("data.crop_frames", True),
        ("data.num_workers", False),
        ("model.compute_dtype", False),  # how the same model is computed
        ("model.remat", False),
        ("batch_size", False),
        ("total_steps", False),
        ("optim.peak_lr", False),
        ("data.dir", False),
        ("seedling", False),  # a prefix is a whole key, not the start of a word
        ("modelx.variant", False),
    ],
)
def test_fixed_keys(key, fixed):
    assert run_record.fixed_key(key) is fixed


def test_changes_are_the_differing_keys_present_on_both_sides():
    old = {"a": 1, "b": {"c": [1, 2], "d": None}, "gone": 3}
    new = {"a": 1, "b": {"c": [1, 3], "d": 0.5}, "added": 4}
    assert run_record.changes(old, new) == [("b.c", [1, 2], [1, 3]), ("b.d", None, 0.5)]


def test_check_resume_refuses_fixed_keys_and_returns_the_others(tmp_path):
    run_record.write(str(tmp_path), {"model": {}}, config=_config(), step=0, changed=[])
    assert run_record.check_resume(str(tmp_path), _config()) == []
    new = _config(batch_size=16, optim__peak_lr=3e-4, ema__encoder=(0.9, 1.0))
    assert run_record.check_resume(str(tmp_path), new) == [
        ("batch_size", 32, 16),
        ("ema.encoder", [0.996, 1.0], [0.9, 1.0]),
        ("optim.peak_lr", 0.001, 3e-4),
    ]
    with pytest.raises(cli.UserError) as e:
        run_record.check_resume(str(tmp_path), _config(model__variant="Ti", batch_size=16))
    message = str(e.value)
    assert 'model.variant "mu" (run) vs "Ti" (now)' in message
    assert "batch_size" not in message  # a change that may continue is not part of the error
    assert "\n" not in message


def test_write_keeps_every_start_and_converts_an_old_record(tmp_path):
    old = {"config": json.loads(_config().to_json()), "model": {"width": 1}, "jax": "0.4"}
    (tmp_path / "run.json").write_text(json.dumps(old))
    new = _config(batch_size=16)
    changed = run_record.check_resume(str(tmp_path), new)
    info = {"model": {"width": 1}}
    record = run_record.write(str(tmp_path), info, config=new, step=8, changed=changed)
    assert json.loads((tmp_path / "run.json").read_text()) == record
    first, second = record["starts"]
    assert first["step"] is None and first["config"]["batch_size"] == 32 and first["jax"] == "0.4"
    assert second["step"] == 8 and second["changed"] == {"batch_size": [32, 16]}
    assert record["config"]["batch_size"] == 16 and record["model"] == {"width": 1}


def test_no_record_no_comparison(tmp_path):
    assert run_record.read(str(tmp_path)) is None
    assert run_record.check_resume(str(tmp_path), ml_collections.ConfigDict({"a": 1})) == []

"""The encoder export (matpac_jax/inference/export.py): write, replace whole, read back, format versions."""

import json

import jax
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, SingleDeviceSharding
from jax.sharding import PartitionSpec as P

from matpac_jax.inference import export


def _params(seed, mesh=None):
    rng = np.random.default_rng(seed)
    tree = {
        "patch_embed": {"proj": {"kernel": rng.normal(size=(8, 4)).astype(np.float32)}},
        "student": {"blocks": {0: {"bias": rng.normal(size=(4,)).astype(np.float32)}}},
    }
    if mesh is None:
        return jax.device_put(tree)
    sharding = lambda x: NamedSharding(mesh, P("x") if x.shape[0] % mesh.size == 0 else P())
    return jax.device_put(tree, jax.tree.map(sharding, tree))


def _assert_trees_equal(got, want):
    got_leaves, want_leaves = jax.tree.leaves(got), jax.tree.leaves(want)
    assert len(got_leaves) == len(want_leaves)
    for x, y in zip(got_leaves, want_leaves):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_export_roundtrip_replaces_earlier_export(tmp_path):
    mesh = Mesh(np.array(jax.devices()), ("x",))
    config = {"front_end": {"n_mels": 80, "hop": 160}, "model": {"variant": "B", "patch": 16}}
    export.export_encoder(str(tmp_path), _params(5), {"old": True})
    params = _params(6, mesh)
    path = export.export_encoder(str(tmp_path), params, config)
    assert path == str(tmp_path / "export") and export.is_export(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no temp dirs left
    loaded, loaded_config = export.load_export(path)
    assert loaded_config == {**config, "format_version": export.FORMAT_VERSION}
    _assert_trees_equal(loaded, params)
    assert all(
        x.sharding == SingleDeviceSharding(jax.local_devices()[0]) for x in jax.tree.leaves(loaded)
    )
    with pytest.raises(TypeError, match="JSON-serialisable"):
        export.export_encoder(str(tmp_path), params, {"bad": object()})
    with pytest.raises(FileNotFoundError, match="not an encoder export"):
        export.load_export(str(tmp_path / "nowhere"))


def test_any_folder_and_format_versions(tmp_path):
    path = export.write_export(str(tmp_path / "a" / "enc"), _params(1), {"model": {}})
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["enc"]
    config_path = tmp_path / "a" / "enc" / export.CONFIG_NAME
    legacy = json.loads(config_path.read_text())
    del legacy["format_version"]  # written before versions: version 0, read the same
    config_path.write_text(json.dumps(legacy))
    assert export.load_export(path)[1] == {"model": {}}
    config_path.write_text(json.dumps({**legacy, "format_version": export.FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match="update matpac_jax"):
        export.load_export(path)

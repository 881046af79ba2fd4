"""Config defaults live in config/schema.yaml only: Snakemake's validate() fills them, nested ones included."""

from __future__ import annotations

import copy

import yaml
from conftest import REPO, TINY_CONFIG, snakemake

SCHEMA = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())


def defaulted_keys(schema: dict, config: dict):
    """``(mapping, key, default)`` for every schema property with a default, at every level of
    ``config`` (``additionalProperties`` entries such as ``datasets.<name>`` included)."""
    for key, sub in schema.get("properties", {}).items():
        if "default" in sub:
            yield config, key, sub["default"]
        if isinstance(config.get(key), dict):
            yield from defaulted_keys(sub, config[key])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict) and "properties" in extra:
        for key, value in config.items():
            if key not in schema.get("properties", {}) and isinstance(value, dict):
                yield from defaulted_keys(extra, value)


def shell_commands(workdir, configfile) -> list[str]:
    out = snakemake(workdir, "-n", "--printshellcmds", configfile=configfile).stdout
    return sorted(line.strip() for line in out.splitlines() if "python -m workflow_scripts." in line)


def test_schema_defaults_reach_the_rules(tmp_path):
    """The tiny DAG planned from a config that writes every default out (each key it omits) and from
    one that leaves them all to the schema (each key set to its default removed) runs the same commands."""
    explicit = yaml.safe_load(TINY_CONFIG.read_text())
    implicit = copy.deepcopy(explicit)
    keys = list(defaulted_keys(SCHEMA, explicit))
    for mapping, key, default in keys:
        mapping.setdefault(key, copy.deepcopy(default))
    for mapping, key, default in defaulted_keys(SCHEMA, implicit):
        if key in mapping and mapping[key] == default:
            del mapping[key]
    names = {key for _, key, _ in keys}
    assert {"amp", "group_by_image", "bias_lr_mult", "checkpoint_every", "batch_size", "weights_url"} <= names
    assert "amp" not in implicit["train"] and "downloads" not in implicit["datasets"]["shapes"]

    files = {}
    for name, cfg in (("explicit", explicit), ("implicit", implicit)):
        files[name] = tmp_path / f"{name}.yaml"
        files[name].write_text(yaml.safe_dump(cfg))
        (tmp_path / name).mkdir()
    commands = shell_commands(tmp_path / "explicit", files["explicit"])
    assert len(commands) >= 20 and any("workflow_scripts.train" in c for c in commands)
    assert shell_commands(tmp_path / "implicit", files["implicit"]) == commands

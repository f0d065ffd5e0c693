"""The command line speaks to users: every command says what it does and lists its --settings keys."""

from dataclasses import fields

import pytest

from detnas.cli import SETTINGS_KEYS, build_parser


def _subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices


def test_every_command_describes_itself():
    for name, p in _subcommands().items():
        assert p.description and len(p.description) > 60, name
        help_text = p.format_help()
        if "--settings" in help_text:
            assert "workflow/schemas/config.schema.yaml" in help_text, name


@pytest.mark.parametrize("command, cls", [
    ("pretrain", "detnas.stages.pretrain.ClassificationSettings"),
    ("finetune", "detnas.stages.finetune.DetectionSettings"),
    ("search", "detnas.stages.search.StageSearchSettings"),
])
def test_listed_settings_keys_are_the_stages(command, cls):
    import importlib

    module, name = cls.rsplit(".", 1)
    settings_cls = getattr(importlib.import_module(module), name)
    assert SETTINGS_KEYS[command] == [f.name for f in fields(settings_cls)]

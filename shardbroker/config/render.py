"""conf/broker.toml, written from the schema: every key, its comment and its default (or the
example value the schema gives). tests/unit/test_config.py checks the file is this text."""

from __future__ import annotations

import json
from typing import Any

from shardbroker.config.schema import Key, keys, sections
from shardbroker.config.units import format_size

HEADER = """\
# shardbroker broker node configuration. Every key is optional; the value shown is the
# built-in default unless the comment says otherwise. CLI flags override this file.
# Written from shardbroker/config/schema.py (python -m shardbroker.config > conf/broker.toml).
"""


def render() -> str:
    out = [HEADER]
    for section, cls in sections():
        out.append(f"\n[{section}]\n")
        for f, meta in keys(cls):
            for line in meta.doc.strip("\n").splitlines():
                out.append(f"# {line}".rstrip() + "\n")
            value = meta.example if meta.example is not None else f.default
            if value is f.default and callable(f.default_factory):
                value = f.default_factory()
            out.append(f"{f.name} = {_toml_value(value, meta)}\n")
    return "".join(out)


def _toml_value(value: Any, meta: Key) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if meta.octal:
        return oct(value)
    if meta.size:
        value = format_size(value)
    if isinstance(value, str | list):
        return json.dumps(value)  # TOML basic strings and arrays of them read the same
    return repr(value)

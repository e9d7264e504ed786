"""JSON schema of the ``--json`` document (``"schema": "shardbroker-bench/1"``) and a small
validator for the subset of JSON Schema it uses (type, required, properties,
additionalProperties, items, enum, const), so tests need no extra package.

Units: GB/s are 10^9 payload bytes per second; CPU figures are CPU-seconds per GB of payload
(receiver: the receiving processes; machine: all CPUs from /proc/stat, other work included);
``recv_calls_per_batch`` counts receive syscalls (or io_uring enters) where the receiver can
count them, else null; ``wakeups_per_batch`` is the receiving threads' voluntary context
switches per batch; latencies are microseconds from the publish call to its ack.
A figure that a contender cannot measure is null; a summary holds only the clean runs.
The ``sink`` entry is the bench senders' own ceiling, not a contender (``ratios.vs_sink``);
``<name>@base`` entries ran the ``--baseline`` broker (``options.baseline``; ``ratios.vs_base``
is this checkout's GB/s over its @base twin's).
"""

from __future__ import annotations

from typing import Any

from shardbroker.bench.result import METRICS

NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
STR_OR_NULL = {"type": ["string", "null"]}

SPREAD = {
    "type": "object",
    "required": ["median", "min", "max", "n"],
    "properties": {"median": NUM, "min": NUM, "max": NUM, "n": {"type": "integer"}},
    "additionalProperties": False,
}

RUN = {
    "type": "object",
    "required": ["contender", "scenario", "rep", "ok", "error", "bytes", "batches", "seconds",
                 "figures", "data_check", "extra"],
    "properties": {
        "contender": {"type": "string"},
        "scenario": {"type": "string"},
        "rep": {"type": "integer"},
        "ok": {"type": "boolean"},
        "error": STR_OR_NULL,
        "bytes": {"type": "integer"},
        "batches": {"type": "integer"},
        "seconds": NUM,
        "receiver_cpu_s": NUM_OR_NULL,
        "machine_cpu_s": NUM_OR_NULL,
        "recv_calls": {"type": ["integer", "null"]},
        "wakeups": {"type": ["integer", "null"]},
        "receiver_rss_mib": NUM_OR_NULL,
        "sender_cpu_util": NUM_OR_NULL,
        "offered_gbps": NUM_OR_NULL,
        "latency_us": {"type": ["object", "null"]},
        "figures": {"type": "object", "required": list(METRICS),
                    "properties": {m: NUM_OR_NULL for m in METRICS},
                    "additionalProperties": False},
        "data_check": {"type": "object"},
        "extra": {"type": "object"},
    },
    "additionalProperties": False,
}

CONTENDER = {
    "type": "object",
    "required": ["name", "description", "status", "skip_reason", "runs_ok", "runs_failed",
                 "summary", "ratios", "runs"],
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "status": {"enum": ["ok", "partial", "failed", "skipped"]},
        "skip_reason": STR_OR_NULL,
        "runs_ok": {"type": "integer"},
        "runs_failed": {"type": "integer"},
        "summary": {"type": "object", "properties": {m: SPREAD for m in METRICS},
                    "additionalProperties": False},
        # vs_sink: where the scenario ran the sink (the senders' ceiling); vs_base: a
        # contender with an @base twin (--baseline), this checkout's GB/s over the baseline's
        "ratios": {"type": "object", "properties": {"vs_limit": NUM_OR_NULL,
                                                    "vs_pyzmq": NUM_OR_NULL,
                                                    "vs_sink": NUM_OR_NULL,
                                                    "vs_base": NUM_OR_NULL},
                   "additionalProperties": False},
        "runs": {"type": "array", "items": RUN},
    },
    "additionalProperties": False,
}

SCENARIO = {
    "type": "object",
    "required": ["id", "title", "kind", "publishers", "receivers", "batch_bytes",
                 "message_size", "primary", "cpu_plan", "notes", "info", "contenders"],
    "properties": {
        "id": {"type": "string"},
        "title": {"type": "string"},
        "kind": {"enum": ["throughput", "latency"]},
        "publishers": {"type": "integer"},
        "receivers": {"type": "integer"},
        "batch_bytes": {"type": "integer"},
        "message_size": {"type": "integer"},
        "primary": {"type": "string"},
        "total_bytes": {"type": "integer"},
        "duration_s": NUM,
        "load_fraction": NUM,
        "cpu_plan": {"type": "object", "required": ["receivers", "publishers", "note"]},
        "notes": {"type": "array", "items": {"type": "string"}},
        "info": {"type": "object"},
        "contenders": {"type": "array", "items": CONTENDER},
    },
    "additionalProperties": False,
}

TARGET = {
    "type": "object",
    "required": ["id", "contender", "description", "value", "threshold", "comparison", "unit",
                 "met"],
    "properties": {
        "id": {"type": "string"}, "contender": {"type": "string"},
        "description": {"type": "string"}, "value": NUM_OR_NULL, "threshold": NUM,
        "comparison": {"enum": [">=", "<="]}, "unit": {"type": "string"},
        "met": {"type": ["boolean", "null"]},
    },
    "additionalProperties": False,
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "shardbroker bench result",
    "type": "object",
    "required": ["schema", "started", "finished", "date", "machine", "options", "environment",
                 "scenarios", "targets", "ok"],
    "properties": {
        "schema": {"const": "shardbroker-bench/1"},
        "started": {"type": "string"},
        "finished": {"type": "string"},
        "date": {"type": "string"},
        "machine": {"type": "object", "required": ["cpu_model", "cpus_online", "kernel",
                                                   "python"]},
        "options": {"type": "object", "required": ["repeat", "quick", "scenarios"]},
        "environment": {"type": "object"},
        "scenarios": {"type": "array", "items": SCENARIO},
        "targets": {"type": "array", "items": TARGET},
        "ok": {"type": "boolean"},
    },
    "additionalProperties": False,
}

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "boolean": (bool,),
    "integer": (int,), "number": (int, float), "null": (type(None),),
}


def _is(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any] = SCHEMA, path: str = "$") -> list[str]:
    """Problems found (empty: valid)."""
    errs: list[str] = []
    if "const" in schema and value != schema["const"]:
        errs.append(f"{path}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errs.append(f"{path}: {value!r} not one of {schema['enum']}")
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, t) for t in types):
            return errs + [f"{path}: expected {'/'.join(types)}, got {type(value).__name__}"]
    if isinstance(value, dict):
        for k in schema.get("required", []):
            if k not in value:
                errs.append(f"{path}: missing {k!r}")
        props = schema.get("properties", {})
        for k, v in value.items():
            if k in props:
                errs += validate(v, props[k], f"{path}.{k}")
            elif schema.get("additionalProperties") is False:
                errs.append(f"{path}: unexpected {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            errs += validate(v, schema["items"], f"{path}[{i}]")
    return errs

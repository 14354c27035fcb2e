"""Read an offline W&B run back from its ``.wandb`` file, without mocks and without the network.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic 0xBEE1, version) followed by LevelDB-log
framed records (32 KiB blocks; each record: CRC32 (4 bytes), length (2 bytes, little endian), type (1 byte:
full/first/middle/last)) whose payloads are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _payloads(data: bytes) -> list[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a W&B transaction log")
    pos, out, pending = HEADER, [], b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the tail of a block too short for a header is padding
            pos += left
            continue
        length = int.from_bytes(data[pos + 4:pos + 6], "little")
        kind = data[pos + 6]
        if kind == 0 and length == 0:
            pos += left
            continue
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            out.append(payload)
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            out.append(pending + payload)
    return out


@dataclass
class OfflineRun:
    run_id: str = ""
    group: str = ""
    job_type: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    exit_code: int | None = None  # set once the run was finished (W&B wrote its exit record)
    summary: dict[str, Any] = field(default_factory=dict)


def read_run(path: str | Path) -> OfflineRun:
    """The run record, the merged config, every history row and the summary of one ``run-*.wandb`` file."""
    from wandb.proto import wandb_internal_pb2

    run = OfflineRun()
    for payload in _payloads(Path(path).read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.group, run.job_type = r.run_id, r.run_group, r.job_type
            run.name, run.tags = r.display_name, list(r.tags)
            for item in r.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                run.config[item.key] = json.loads(item.value_json)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            run.history.append(row)
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return run


def offline_runs(root: str | Path) -> list[Path]:
    """Every ``.wandb`` file written under ``root``."""
    return sorted(Path(root).rglob("offline-run-*/run-*.wandb"))


def service_log(wandb_file: str | Path) -> Path:
    """The log of the W&B service (wandb-core) that wrote this run: one service, one log file."""
    return (Path(wandb_file).parent / "logs" / "debug-core.log").resolve()


def connected_to_a_running_service(wandb_file: str | Path) -> bool:
    """Whether the process that started this run used a service already running (W&B's ``WANDB_SERVICE``)
    instead of starting its own."""
    log = Path(wandb_file).parent / "logs" / "debug.log"
    return "existing wandb-core service via WANDB_SERVICE" in log.read_text(errors="replace")

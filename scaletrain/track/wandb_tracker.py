"""W&B tracking.

Mode `auto` (default): online if the user is logged in (WANDB_API_KEY set, or
a netrc entry for the W&B API host written by `wandb login`), otherwise
offline — no account and no network needed; `wandb sync runs/<name>/wandb/...`
uploads an offline run later. A WANDB_MODE set in the environment wins.
`tracking.wandb=false` turns W&B off; local files are always written.

The tracker never ends a run: when online logging is asked for but the W&B server cannot
be reached (a compute node without internet, an outage), it prints one warning line, logs
offline instead and says how to upload later (`wandb sync`). A run folder keeps its W&B
run id in `wandb_run_id.txt`, so a resumed run (`resume=auto`, or a sweep trial restarted
after its driver was killed) continues the same W&B run instead of starting a new one.

Only rank 0 tracks. Offline runs may not write `wandb-summary.json`, so the
record of a run is its `run-<id>.wandb` file; `read_offline_history` parses it
with the SDK's datastore reader (used by the tests).
"""
from __future__ import annotations

import glob
import json
import netrc
import os
import socket
import struct
import sys
import time
from typing import Any, Dict, Iterable, List, Optional
from urllib.parse import urlparse


def _logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    """Return the W&B mode to use: 'online', 'offline' or 'disabled'."""
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    if mode == "auto":
        return "online" if _logged_in() else "offline"
    return mode


ID_FILE = "wandb_run_id.txt"
PROBE_TIMEOUT_S = 5.0


def server_reachable(timeout: float = PROBE_TIMEOUT_S) -> Optional[str]:
    """None if the W&B server (WANDB_BASE_URL, default api.wandb.ai) accepts a TCP connection
    within `timeout` seconds, else the reason. A plain TCP connect: W&B's own client retries
    for minutes before it gives up (the failure this check avoids)."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as e:
        return f"{host}:{port}: {e.strerror or type(e).__name__}"


class Tracker:
    """Logs metrics and the robustness report to W&B (rank 0 only)."""

    def __init__(self, cfg, run_dir: str, config: Dict[str, Any], rank: int = 0, name: Optional[str] = None,
                 job_type: str = "train", resume_id: Optional[str] = None):
        self.run = None
        self.run_dir = run_dir
        self.mode = "disabled"
        if rank != 0 or not cfg.wandb:
            return
        self.mode = resolve_mode(cfg.mode)
        if self.mode == "disabled":
            return
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb
        self._wandb = wandb
        id_file = os.path.join(run_dir, ID_FILE)
        if resume_id is None and os.path.exists(id_file):
            with open(id_file) as f:
                resume_id = f.read().strip() or None
        kw = dict(project=cfg.project, entity=cfg.entity, group=cfg.group, tags=list(cfg.tags) or None,
                  name=name, config=config, dir=run_dir, job_type=job_type,
                  id=resume_id, resume="allow" if resume_id else None)
        if self.mode == "online":
            reason = server_reachable()
            if reason is None:
                try:
                    self.run = wandb.init(mode="online", settings=self._settings(init_timeout=60), **kw)
                except Exception as e:  # noqa: BLE001 - any failure of the server must not end the run
                    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            if self.run is None:
                self.mode = "offline"
                print(f"scaletrain: warning: W&B server unreachable ({reason}); logging offline to "
                      f"{os.path.join(run_dir, 'wandb')} - upload later with: wandb sync "
                      f"{os.path.join(run_dir, 'wandb', 'offline-run-*')}", file=sys.stderr, flush=True)
        if self.run is None:
            self.run = wandb.init(mode=self.mode, settings=self._settings(), **kw)
        os.makedirs(run_dir, exist_ok=True)
        with open(id_file + ".tmp", "w") as f:
            f.write(self.run.id)
        os.replace(id_file + ".tmp", id_file)

    def _settings(self, **extra):
        return self._wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True, **extra)

    @property
    def run_id(self) -> Optional[str]:
        return self.run.id if self.run is not None else None

    def log(self, metrics: Dict[str, Any], step: Optional[int] = None) -> None:
        if self.run is None:
            return
        self.run.log(metrics, step=step)

    def log_image(self, key: str, path: str, step: Optional[int] = None) -> None:
        """A PNG written by the run (e.g. Hebbian filters) as a W&B image."""
        if self.run is None:
            return
        self.run.log({key: self._wandb.Image(path)}, step=step)

    def alert(self, title: str, text: str, step: Optional[int] = None,
              metrics: Optional[Dict[str, float]] = None) -> None:
        """A training alert (e.g. catastrophic overfitting): logged as `alert/<title>` scalars and
        text in the history (readable offline), and as a W&B alert when the run is online."""
        if self.run is None:
            return
        key = "alert/" + "".join(c if c.isalnum() else "_" for c in title.lower())
        self.run.log({key: 1, f"{key}_text": text, **{f"{key}/{k}": v for k, v in (metrics or {}).items()}},
                     step=step)
        if self.mode == "online":
            try:
                self._wandb.alert(title=title, text=text, level=self._wandb.AlertLevel.WARN)
            except Exception as e:  # an alert must never stop training
                print(f"[scaletrain] W&B alert not sent: {e}", flush=True)

    def log_report(self, report: Dict[str, Any], step: Optional[int] = None, prefix: str = "eval") -> None:
        """Robustness results: scalars (history + summary), a table and a curve plot per attack."""
        if self.run is None:
            return
        wandb = self._wandb
        scalars = flatten_report(report, prefix)
        payload: Dict[str, Any] = dict(scalars)
        curves = dict(report.get("attacks", {}))
        for extra in ("autoattack", "worst_case"):
            if extra in report:
                curves[extra] = report[extra]
        rows = [[name, float(e), float(a)] for name, res in curves.items() for e, a in zip(res["eps"], res["acc"])]
        if rows:
            payload[f"{prefix}/robustness_table"] = wandb.Table(columns=["attack", "eps", "accuracy"], data=rows)
            names = list(curves)
            payload[f"{prefix}/robustness_curve"] = wandb.plot.line_series(
                xs=[curves[n]["eps"] for n in names], ys=[curves[n]["acc"] for n in names],
                keys=names, title="accuracy vs epsilon", xname="epsilon")
        self.run.log(payload, step=step)
        for k, v in scalars.items():
            self.run.summary[k] = v

    def finish(self) -> None:
        if self.run is not None:
            path = str(self.run.settings.sync_file) if self.mode == "offline" else None
            self.run.finish()
            self.run = None
            if path:
                wait_for_exit_record(path)


def flatten_report(report: Dict[str, Any], prefix: str = "eval") -> Dict[str, float]:
    """Scalars of a robustness report as flat W&B keys, e.g. eval/pgd/acc@0.2, eval/worst_case/auc,
    eval/noise/acc@0.1 (the suite's `scalar_metrics`; attack options like 'pgd:loss=cw' become
    'pgd_loss-cw' so keys stay plain)."""
    import math
    from ..evaluate.ensemble import scalar_metrics

    out: Dict[str, float] = {}
    for key, value in scalar_metrics(report).items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[f"{prefix}/{_plain_key(key)}"] = float(value)
    return out


def _plain_key(key: str) -> str:
    return key.replace(":", "_").replace(",", "_").replace("=", "-")


def find_offline_runs(run_dir: str) -> List[str]:
    return sorted(glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb")))


_BLOCK = 32768          # LevelDB-style log blocks used by W&B's transaction log
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _iter_log_records(path: str) -> Iterable[bytes]:
    """Records of a `.wandb` file.

    The file is a W&B header (':W&B', magic 0xBEE1, version) followed by a
    LevelDB-format log: 32 KiB blocks of chunks, each chunk a 7-byte header
    (crc32 uint32, length uint16, type uint8) then its bytes; a record spans
    FIRST/MIDDLE/LAST chunks or fits in one FULL chunk (leveldb doc/log_format.md).
    """
    with open(path, "rb") as f:
        buf = f.read()
    if buf[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = 7, b""
    while pos + 7 <= len(buf):
        left = _BLOCK - pos % _BLOCK
        if left < 7:                      # block trailer: zero padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", buf[pos:pos + 7])
        if kind == 0:                     # zero-filled remainder of a block
            pos += left
            continue
        data = buf[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == _FULL:
            yield data
        elif kind == _FIRST:
            pending = data
        elif kind == _MIDDLE:
            pending += data
        elif kind == _LAST:
            yield pending + data
            pending = b""


def wait_for_exit_record(wandb_file: str, timeout: float = 60.0) -> bool:
    """Wait until W&B's service has written the run's `exit` record to its `.wandb` file.
    `run.finish()` can return while the service still holds the file's tail: under load a just
    finished offline run was read back with no history at all (twice in one day on the 2-core CI
    machine), and a `wandb sync` started then would miss the data too. Returns whether the record
    appeared within `timeout` seconds; if not, warns and returns False (the run goes on)."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    deadline = time.time() + timeout
    while True:
        try:
            for data in _iter_log_records(wandb_file):
                rec = wandb_internal_pb2.Record()
                rec.ParseFromString(data)
                if rec.WhichOneof("record_type") == "exit":
                    return True
        except (OSError, ValueError, DecodeError):   # not created yet, or a half-written record
            pass
        if time.time() >= deadline:
            print(f"scaletrain: warning: W&B has not finished writing {wandb_file} after {timeout:.0f} s; "
                  "its last records may be missing", file=sys.stderr, flush=True)
            return False
        time.sleep(0.1)


def read_offline_history(wandb_file: str) -> List[Dict[str, Any]]:
    """Parse a run's `.wandb` file: returns its history rows as dicts."""
    from wandb.proto import wandb_internal_pb2

    rows: List[Dict[str, Any]] = []
    for data in _iter_log_records(wandb_file):
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in rec.history.item:
            key = item.key or "/".join(item.nested_key)
            try:
                row[key] = json.loads(item.value_json)
            except ValueError:
                row[key] = item.value_json
        rows.append(row)
    return rows

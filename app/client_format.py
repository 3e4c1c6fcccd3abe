"""Plain-text rendering for the runbook CLI: tables and aligned `key: value` lines.

Pure functions from the API's JSON to text, so what an operator reads is tested without a service.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

MISSING = "-"
FAILED_STATES = ("failed", "degraded")
# A failure message may carry a multi-line log tail; a table cell shows its first line, cut here.
FAILURE_CELL_CHARS = 60


def cell(value: object) -> str:
    """One value as table text: None as `-`, lists comma-joined, booleans as yes/no."""
    if value is None or value == "":
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(cell(item) for item in value) if value else MISSING
    return str(value)


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last column is not padded."""
    texts = [list(headers)] + [[cell(value) for value in row] for row in rows]
    widths = [max(len(line[column]) for line in texts) for column in range(len(headers))]
    lines = []
    for line in texts:
        padded = [text.ljust(width) for text, width in zip(line[:-1], widths, strict=False)]
        lines.append("  ".join([*padded, line[-1]]).rstrip())
    return "\n".join(lines)


def flatten(document: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested mappings as dotted keys (`status.last_failure.kind`), in the document's order."""
    pairs: list[tuple[str, str]] = []
    for key, value in document.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            pairs.extend(flatten(value, prefix=f"{name}."))
        elif isinstance(value, Mapping):
            pairs.append((name, MISSING))
        else:
            pairs.append((name, cell(value)))
    return pairs


def render_key_values(pairs: Sequence[tuple[str, str]]) -> str:
    """`key: value` lines with the values aligned; continuation lines indented under the value."""
    if not pairs:
        return ""
    width = max(len(key) for key, _ in pairs) + 1
    lines = []
    for key, value in pairs:
        first, *rest = value.splitlines() or [""]
        lines.append(f"{key + ':':<{width}} {first}".rstrip())
        lines.extend(f"{'':<{width}} {line}".rstrip() for line in rest)
    return "\n".join(lines)


def failure_summary(failure: Mapping[str, Any] | None) -> str:
    """`kind: first line of the message`, cut to fit a table cell."""
    if not failure:
        return MISSING
    message = str(failure.get("message") or "").strip()
    first_line = message.splitlines()[0] if message else ""
    text = f"{failure.get('kind')}: {first_line}" if first_line else str(failure.get("kind"))
    if len(text) > FAILURE_CELL_CHARS:
        return text[: FAILURE_CELL_CHARS - 3] + "..."
    return text


def models_table(models: Sequence[Mapping[str, Any]]) -> str:
    headers = ("ID", "STATE", "DESIRED", "PORT", "GPUS", "RESTARTS", "OOMS", "LAST FAILURE")
    rows = []
    for model in models:
        status = model.get("status") or {}
        rows.append(
            (
                model.get("id"),
                status.get("state"),
                status.get("desired_state"),
                status.get("port") or model.get("port"),
                status.get("gpu_ids"),
                status.get("restarts_total"),
                status.get("ooms_total"),
                failure_summary(status.get("last_failure")),
            )
        )
    return render_table(headers, rows)


def model_details(model: Mapping[str, Any]) -> str:
    """The spec's fields, then the status's, as `key: value` lines."""
    spec = {"id": model.get("id")} | {
        key: value for key, value in model.items() if key not in ("id", "status")
    }
    pairs = flatten(spec) + flatten(model.get("status") or {}, prefix="status.")
    return render_key_values(pairs)


def events_table(events: Sequence[Mapping[str, Any]]) -> str:
    headers = ("AT", "KIND", "FROM", "TO", "REASON")
    rows = [
        (
            event.get("at"),
            event.get("kind"),
            event.get("from_state"),
            event.get("to_state"),
            first_line(event.get("reason")),
        )
        for event in events
    ]
    return render_table(headers, rows)


def event_line(event: Mapping[str, Any]) -> str:
    """One event of `GET /events` as a line: time, model (`node` for node-wide events such as
    GPU alerts), kind, the transition if any, and the first line of the reason."""
    parts = [str(event.get("at") or MISSING), str(event.get("model_id") or "node")]
    parts.append(str(event.get("kind") or MISSING))
    if event.get("to_state"):
        parts.append(f"{event.get('from_state') or MISSING} -> {event['to_state']}")
    reason = first_line(event.get("reason"))
    if reason != MISSING:
        parts.append(reason)
    return "  ".join(parts)


def first_line(value: object) -> str:
    text = cell(value)
    return text.splitlines()[0] if text.strip() else MISSING


def gpus_report(document: Mapping[str, Any]) -> str:
    """The backend/status line, then one row per GPU."""
    header = f"backend: {document.get('backend')}  status: {document.get('status')}"
    if document.get("error"):
        header += f"  error: {document['error']}"
    headers = ("INDEX", "NAME", "TOTAL MiB", "FREE MiB", "RESERVED MiB", "MODELS", "ALERT")
    rows = []
    for gpu in document.get("gpus") or []:
        models = [f"{hold.get('model')} ({hold.get('state')})" for hold in gpu.get("models") or []]
        alert = "no"
        if gpu.get("low_memory_alert"):
            alert = f"low memory since {gpu['alert_since']}" if gpu.get("alert_since") else "yes"
        rows.append(
            (
                gpu.get("index"),
                gpu.get("name"),
                gpu.get("total_mib"),
                gpu.get("free_mib"),
                gpu.get("reserved_mib"),
                models,
                alert,
            )
        )
    return header + "\n" + render_table(headers, rows)


def nodes_table(document: Any) -> str:
    """One row per node of the cluster: alive, free memory, its models, last heartbeat."""
    headers = ("NODE", "ALIVE", "URL", "GPUS", "FREE MiB", "MODELS", "LAST HEARTBEAT")
    rows = [
        (
            node.get("name"),
            "yes" if node.get("alive") else "no",
            node.get("url"),
            len(node.get("gpus") or []),
            node.get("free_mib"),
            [f"{model.get('id')} ({model.get('state')})" for model in node.get("models") or []],
            node.get("last_heartbeat_at"),
        )
        for node in document or []
    ]
    return render_table(headers, rows)


def _pick(entry: Mapping[str, Any], *names: str) -> object:
    for name in names:
        if entry.get(name) is not None:
            return entry[name]
    return None


def agents_table(document: Any) -> str:
    """GET /agents as a table; accepts a bare list or `{"agents": [...]}`, and the field names
    the map itself uses (`adapter_name`, `base_ref`) as well as the API's."""
    entries = document.get("agents", []) if isinstance(document, Mapping) else document
    headers = ("AGENT", "MODEL", "ADAPTER", "FOUND", "STATE", "BASE URL")
    rows = []
    gateway_urls = {entry.get("gateway_url") for entry in entries or [] if entry.get("gateway_url")}
    for entry in entries or []:
        status = entry.get("status") if isinstance(entry.get("status"), Mapping) else {}
        rows.append(
            (
                _pick(entry, "agent", "name"),
                _pick(entry, "model_id", "model", "base_ref"),
                _pick(entry, "adapter", "adapter_name"),
                _pick(entry, "found", "adapter_found", "exists"),
                _pick(entry, "state") or _pick(status, "state"),
                _pick(entry, "base_url") or _pick(status, "base_url"),
            )
        )
    table = render_table(headers, rows)
    if len(gateway_urls) == 1:
        # Agents need no engine address: the gateway routes by the adapter's name.
        table += f"\nOpenAI endpoint for every agent: {gateway_urls.pop()} (model = ADAPTER)"
    return table


def can_start_report(document: Mapping[str, Any]) -> str:
    pairs = [("ok", cell(document.get("ok"))), ("reason", cell(document.get("reason")))]
    for key in ("code", "required_mib", "gpu_ids"):
        if key in document:
            pairs.append((key, cell(document.get(key))))
    for gpu in document.get("gpus") or []:
        label = f"gpu {gpu.get('index', gpu.get('gpu', '?'))}"
        figures = ", ".join(f"{k}={v}" for k, v in gpu.items() if k not in ("index", "gpu"))
        pairs.append((label, figures or MISSING))
    return render_key_values(pairs)


def adapters_table(adapters: Sequence[Mapping[str, Any]]) -> str:
    """GET /models/{id}/adapters: LOADED says whether the running engine serves the adapter,
    SINCE since when (`-` when the model is not running)."""
    headers = ("NAME", "PATH", "RANK", "LOADED", "SINCE")
    rows = [
        (
            adapter.get("name"),
            adapter.get("path"),
            adapter.get("rank"),
            adapter.get("loaded"),
            adapter.get("since"),
        )
        for adapter in adapters
    ]
    return render_table(headers, rows)


def adapter_added_line(
    model_id: str, name: str, adapters: Sequence[Mapping[str, Any]], *, created: bool
) -> str:
    """What POST /models/{id}/adapters did: 201 added (live when the running engine serves it
    now; else in the spec, which every launch applies), 200 already there."""
    entry = next((adapter for adapter in adapters if adapter.get("name") == name), {})
    path = entry.get("path") or MISSING
    if not created:
        return f"{model_id}: adapter {name} ({path}) already there"
    if entry.get("loaded"):
        return f"{model_id}: added adapter {name} ({path}), loaded on the running engine"
    return f"{model_id}: added adapter {name} ({path}) to the spec; loaded once the engine runs"


def status_line(model_id: str, status: dict[str, Any]) -> str:
    state = status.get("state")
    if state == "running":
        return f"{model_id}: running at {status.get('base_url')}"
    if state == "starting":
        return f"{model_id}: starting (pid {status.get('pid')}, port {status.get('port')})"
    if state in FAILED_STATES and status.get("last_failure"):
        failure = status["last_failure"]
        return f"{model_id}: {state}: {failure.get('kind')}: {failure.get('message')}"
    if state == "sleeping":
        return f"{model_id}: sleeping (pid {status.get('pid')}; the next request wakes it)"
    if status.get("desired_reason"):
        return f"{model_id}: {state} ({status['desired_reason']})"
    return f"{model_id}: {state}"


def api_error_message(response: httpx.Response) -> str:
    """`error [code] (HTTP n): message`, from `{"detail": {...}}`, FastAPI's validation list,
    a plain string detail, or a body that is not JSON at all (a proxy's error page)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail") if isinstance(body, dict) else None
    code: object = None
    figures: dict[str, Any] = {}
    if isinstance(detail, dict):
        code = detail.get("code")
        message = str(detail.get("message") or detail)
        figures = {
            key: value
            for key, value in detail.items()
            if key not in ("code", "message", "model_id", "errors")
            and isinstance(value, int | float | str | bool)
        }
    elif isinstance(detail, list):
        code = "invalid_request"
        message = "; ".join(
            f"{'.'.join(str(part) for part in item.get('loc', []))}: {item.get('msg')}"
            for item in detail
            if isinstance(item, dict)
        )
    elif isinstance(detail, str):
        message = detail
    else:
        message = response.text.strip()[:500] or response.reason_phrase
    label = f"error [{code}]" if code else "error"
    text = f"{label} (HTTP {response.status_code}): {message}"
    if figures:
        text += "\n  " + ", ".join(f"{key}={value}" for key, value in figures.items())
    return text

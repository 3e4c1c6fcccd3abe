// The operator console. It reads GET /models, /gpus and /ui/config once, then follows
// GET /events and re-reads only what an event names (one model, or the GPUs). The event stream
// is read with fetch (EventSource cannot send the bearer token) and resumed with Last-Event-ID.
"use strict";

(() => {
  const TOKEN_KEY = "gpu-orchestrator.token";
  const EVENTS_KEPT = 200;
  const LOG_LINES = 200;
  const LOG_POLL_MS = 1000;
  const ACTIVE_STATES = new Set(["starting", "running", "stopping", "sleeping"]);

  const $ = (id) => document.getElementById(id);
  const tbody = document.querySelector("#models tbody");
  const view = {
    config: null,
    lastEventId: null,
    retryMs: 2000,
    logModel: null,
    logTimer: null,
  };

  class Unauthorized extends Error {}

  // -- HTTP ---------------------------------------------------------------------------------
  function token() {
    return sessionStorage.getItem(TOKEN_KEY);
  }

  function headers(extra) {
    const all = Object.assign({}, extra);
    if (token()) all.Authorization = `Bearer ${token()}`;
    return all;
  }

  async function call(method, path, extraHeaders, signal) {
    const response = await fetch(path, {
      method,
      headers: headers(extraHeaders),
      cache: "no-store",
      signal,
    });
    if (response.status === 401) {
      askForToken();
      throw new Unauthorized();
    }
    return response;
  }

  async function errorText(response) {
    try {
      const detail = (await response.json()).detail;
      if (detail && detail.message) return `${detail.code}: ${detail.message}`;
      return JSON.stringify(detail);
    } catch (_error) {
      return `HTTP ${response.status}`;
    }
  }

  async function getJson(path) {
    const response = await call("GET", path);
    if (!response.ok) throw new Error(`GET ${path}: ${await errorText(response)}`);
    return response.json();
  }

  // One request at a time per key; a request asked for meanwhile runs once, after it, so an
  // older answer never overwrites a newer one.
  const inFlight = new Map();
  function coalesce(key, work) {
    const entry = inFlight.get(key);
    if (entry) {
      entry.again = true;
      return;
    }
    const next = { again: false };
    inFlight.set(key, next);
    work()
      .catch(report)
      .finally(() => {
        inFlight.delete(key);
        if (next.again) coalesce(key, work);
      });
  }

  // -- notices and the token ----------------------------------------------------------------
  function report(error) {
    if (error instanceof Unauthorized) return;
    notice(String(error.message || error));
  }

  function notice(text) {
    $("notice").textContent = text;
    $("notice").hidden = !text;
  }

  function setConnection(state) {
    $("connection").dataset.state = state;
    $("connection").textContent = state;
  }

  function askForToken() {
    setConnection("unauthorized");
    $("token-form").hidden = false;
    $("forget-token").hidden = true;
    $("token-input").focus();
  }

  // -- models -------------------------------------------------------------------------------
  const FIELDS = ["id", "state", "desired", "node", "since", "pid", "port", "gpus", "restarts", "ooms",
    "failure", "actions"];

  function rowOf(modelId) {
    return tbody.querySelector(`tr[data-model="${CSS.escape(modelId)}"]`);
  }

  function newRow(modelId) {
    const row = document.createElement("tr");
    row.dataset.model = modelId;
    for (const field of FIELDS) {
      const cell = document.createElement("td");
      cell.dataset.field = field;
      if (["pid", "port", "restarts", "ooms"].includes(field)) cell.className = "num";
      row.append(cell);
    }
    const actions = row.querySelector('[data-field="actions"]');
    actions.className = "actions";
    for (const action of ["start", "stop", "restart", "logs"]) {
      const button = document.createElement("button");
      button.type = "button";
      button.dataset.action = action;
      button.textContent = action[0].toUpperCase() + action.slice(1);
      actions.append(button);
    }
    const after = [...tbody.rows].find((other) => other.dataset.model > modelId);
    tbody.insertBefore(row, after || null);
    return row;
  }

  function text(row, field, value) {
    row.querySelector(`[data-field="${field}"]`).textContent =
      value === null || value === undefined || value === "" ? "-" : String(value);
  }

  function since(iso) {
    const moment = new Date(iso);
    return Number.isNaN(moment.getTime()) ? iso : moment.toLocaleString();
  }

  function renderStatus(modelId, status) {
    const row = rowOf(modelId) || newRow(modelId);
    row.dataset.state = status.state;
    text(row, "id", modelId);
    const badge = document.createElement("span");
    badge.className = "state";
    badge.dataset.state = status.state;
    badge.textContent = status.state;
    row.querySelector('[data-field="state"]').replaceChildren(badge);
    text(row, "desired", status.desired_state);
    text(row, "node", status.node);
    text(row, "since", since(status.since));
    row.querySelector('[data-field="since"]').title = status.since;
    text(row, "pid", status.pid);
    text(row, "port", status.port);
    text(row, "gpus", (status.gpu_ids || []).join(", "));
    text(row, "restarts", status.restarts_total);
    text(row, "ooms", status.ooms_total);
    renderFailure(row.querySelector('[data-field="failure"]'), status.last_failure);
    const wanted = status.desired_state === "running";
    row.querySelector('[data-action="start"]').disabled = wanted && ACTIVE_STATES.has(status.state);
    row.querySelector('[data-action="stop"]').disabled = !wanted && status.state === "stopped";
    $("no-models").hidden = tbody.rows.length > 0;
  }

  function renderFailure(cell, failure) {
    if (!failure) {
      cell.textContent = "-";
      return;
    }
    // The message carries the remedy, as the API and the CLI show it.
    const kind = document.createElement("span");
    kind.className = "failure-kind";
    kind.textContent = failure.kind;
    const message = document.createElement("span");
    message.className = "failure-message";
    message.textContent = failure.message;
    if (failure.at) message.title = failure.at;
    cell.replaceChildren(kind, message);
  }

  function removeModel(modelId) {
    const row = rowOf(modelId);
    if (row) row.remove();
    $("no-models").hidden = tbody.rows.length > 0;
    if (view.logModel === modelId) closeLog();
  }

  async function loadModels() {
    const models = await getJson("models");
    const seen = new Set(models.map((model) => model.id));
    for (const row of [...tbody.rows]) if (!seen.has(row.dataset.model)) row.remove();
    for (const model of models) renderStatus(model.id, model.status);
    $("no-models").hidden = models.length > 0;
  }

  function refreshModel(modelId) {
    coalesce(`model:${modelId}`, async () => {
      const response = await call("GET", `models/${encodeURIComponent(modelId)}`);
      if (response.status === 404) removeModel(modelId);
      else if (response.ok) renderStatus(modelId, (await response.json()).status);
      else throw new Error(await errorText(response));
    });
  }

  async function lifecycle(modelId, action) {
    const response = await call("POST", `models/${encodeURIComponent(modelId)}/${action}`);
    if (!response.ok) {
      notice(`${action} ${modelId}: ${await errorText(response)}`);
      return;
    }
    notice("");
    renderStatus(modelId, await response.json());
  }

  tbody.addEventListener("click", (event) => {
    const button = event.target.closest("button[data-action]");
    if (!button) return;
    const modelId = button.closest("tr").dataset.model;
    if (button.dataset.action === "logs") openLog(modelId);
    else lifecycle(modelId, button.dataset.action).catch(report);
  });

  // -- GPUs ---------------------------------------------------------------------------------
  function thresholdMib(gpu) {
    const config = view.config || {};
    let threshold = config.low_memory_threshold_mib || 0;
    if (config.low_memory_threshold_pct) {
      threshold = Math.max(threshold, (gpu.total_mib * config.low_memory_threshold_pct) / 100);
    }
    return threshold;
  }

  function segment(name, mib, total) {
    const part = document.createElement("span");
    part.className = name;
    part.style.width = `${total > 0 ? (100 * mib) / total : 0}%`;
    return part;
  }

  function renderGpu(gpu) {
    const box = document.createElement("div");
    box.className = "gpu";
    box.dataset.gpu = gpu.index;
    box.dataset.alert = String(Boolean(gpu.low_memory_alert));
    const total = gpu.total_mib;
    const reserved = Math.min(gpu.reserved_mib || 0, gpu.free_mib);
    const threshold = thresholdMib(gpu);
    const label = document.createElement("div");
    label.className = "gpu-label";
    label.textContent = `GPU ${gpu.index}: ${gpu.name || ""}`;
    const models = (gpu.models || []).map((hold) => `${hold.model} (${hold.state})`);
    if (models.length) {
      const held = document.createElement("span");
      held.className = "muted";
      held.textContent = models.join(", ");
      label.append(held);
    }
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.title = `${gpu.used_mib} MiB used, ${reserved} MiB reserved, ${gpu.free_mib} MiB free`;
    bar.append(segment("used", gpu.used_mib, total), segment("reserved", reserved, total),
      segment("free", 0, total));
    if (threshold > 0 && total > 0) {
      const marker = document.createElement("span");
      marker.className = "threshold";
      marker.style.left = `${(100 * (total - threshold)) / total}%`;
      marker.title = `alert when free memory stays under ${Math.round(threshold)} MiB`;
      bar.append(marker);
    }
    const figures = document.createElement("div");
    figures.className = "gpu-figures";
    figures.textContent = `used ${gpu.used_mib} MiB · reserved ${reserved} MiB · free ` +
      `${gpu.free_mib - reserved} of ${total} MiB` +
      (threshold > 0 ? ` · alert under ${Math.round(threshold)} MiB free` : "");
    if (gpu.low_memory_alert) {
      const alert = document.createElement("span");
      alert.className = "alert";
      alert.textContent = ` · LOW MEMORY since ${since(gpu.alert_since)}`;
      figures.append(alert);
    }
    box.append(label, bar, figures);
    return box;
  }

  function refreshGpus() {
    coalesce("gpus", async () => {
      const answer = await getJson("gpus");
      const trouble = answer.status === "available" ? "" : ` (${answer.status}: ${answer.error})`;
      $("gpu-backend").textContent = `${answer.backend}${trouble}`;
      $("gpus").replaceChildren(...(answer.gpus || []).map(renderGpu));
    });
  }

  // -- the log view -------------------------------------------------------------------------
  function openLog(modelId) {
    view.logModel = modelId;
    $("log-model").textContent = modelId;
    $("log").textContent = "";
    $("log-section").hidden = false;
    pollLog();
  }

  function closeLog() {
    view.logModel = null;
    clearTimeout(view.logTimer);
    $("log-section").hidden = true;
  }

  function pollLog() {
    clearTimeout(view.logTimer);
    const modelId = view.logModel;
    if (modelId === null) return;
    coalesce("log", async () => {
      try {
        const path = `models/${encodeURIComponent(modelId)}/logs?tail=${LOG_LINES}`;
        const response = await call("GET", path);
        if (view.logModel !== modelId) return;
        const pre = $("log");
        pre.textContent = response.ok ? await response.text() : await errorText(response);
        if ($("log-follow").checked) pre.scrollTop = pre.scrollHeight;
      } finally {
        clearTimeout(view.logTimer);
        if (view.logModel === modelId) view.logTimer = setTimeout(pollLog, LOG_POLL_MS);
      }
    });
  }

  $("log-close").addEventListener("click", closeLog);

  // -- events -------------------------------------------------------------------------------
  function showEvent(event) {
    const item = document.createElement("li");
    const kind = document.createElement("span");
    kind.className = "event-kind";
    kind.textContent = event.kind;
    const states = event.to_state ? ` ${event.from_state || "-"} -> ${event.to_state}` : "";
    item.append(`${since(event.at)} ${event.model_id || "node"} `, kind,
      `${states} ${event.reason || ""}`);
    const list = $("events");
    list.prepend(item);
    while (list.children.length > EVENTS_KEPT) list.lastElementChild.remove();
  }

  function onEvent(type, data) {
    if (type !== "message") return;
    const event = JSON.parse(data);
    showEvent(event);
    if (event.model_id) {
      refreshModel(event.model_id);
      if (event.model_id === view.logModel) pollLog();
    } else if (String(event.kind).startsWith("manifest")) {
      coalesce("models", loadModels);
    }
    refreshGpus();
  }

  // Server-Sent Events over a fetch body: lines, fields, a blank line ends a message.
  async function readEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let message = { type: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (message.id !== null) view.lastEventId = message.id;
          if (message.data.length) onEvent(message.type, message.data.join("\n"));
          message = { type: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") message.data.push(value);
        else if (field === "event") message.type = value;
        else if (field === "id") message.id = value;
        else if (field === "retry" && /^\d+$/.test(value)) view.retryMs = Number(value);
      }
    }
  }

  async function followEvents() {
    for (;;) {
      const connection = new AbortController();
      try {
        const extra = { Accept: "text/event-stream" };
        if (view.lastEventId !== null) extra["Last-Event-ID"] = view.lastEventId;
        const response = await call("GET", "events", extra, connection.signal);
        if (!response.ok) throw new Error(`GET events: ${await errorText(response)}`);
        setConnection("live");
        $("forget-token").hidden = !token();
        // The stream is subscribed once its headers are here: whatever happens from now on
        // arrives as an event. Without an id to resume from, read the state afresh.
        if (view.lastEventId === null) await loadAll();
        await readEvents(response.body);
      } catch (error) {
        connection.abort();
        if (error instanceof Unauthorized) return;
        report(error);
      }
      setConnection("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, view.retryMs));
    }
  }

  async function loadAll() {
    view.config = await getJson("ui/config");
    await loadModels();
    refreshGpus();
    notice("");
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
    $("token-input").value = "";
    $("token-form").hidden = true;
    setConnection("connecting");
    followEvents();
  });

  $("forget-token").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    window.location.reload();
  });

  followEvents();
})();

// shardctl status page: polls /api/status, draws /api/candles with plotly, posts shard commands.
// Every text from the server goes into the page through textContent (never innerHTML).
"use strict";
(() => {
  const STATUS_EVERY_MS = 1500;
  const CHART_EVERY_MS = 10000;
  const TOKEN_KEY = "shardctl.statusToken";
  const $ = (id) => document.getElementById(id);
  const rows = new Map();  // shard name -> {tr, cells, restart, toggle}
  let symbolsKey = "";
  let intervalsKey = "";
  let defaultSince = {};
  let chartTimer = null;

  // ---------------------------------------------------------------- formatting

  function duration(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    if (s < 86400) return `${Math.floor(s / 3600)}h ${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
    return `${Math.floor(s / 86400)}d ${Math.floor(s / 3600) % 24}h`;
  }
  const count = (n) => (n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US"));

  function show(text, kind) {
    const box = $("message");
    box.textContent = text;
    box.className = kind || "";
    box.hidden = !text;
  }

  // ---------------------------------------------------------------- token

  const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
  function tokenState() {
    $("token-state").textContent = token() ? "set for this tab" : "not set";
    $("forget").hidden = !token();
  }
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("token").value.trim();
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    $("token").value = "";
    tokenState();
    show(value ? "Token kept for this tab; the buttons will send it." : "Paste the status token first.",
         value ? "ok" : "error");
  });
  $("forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    tokenState();
    show("Token forgotten.", "ok");
  });

  // ---------------------------------------------------------------- shard table

  async function command(name, action, button) {
    button.disabled = true;
    show(`${action} ${name}…`, "");
    const headers = {};
    if (token()) headers["X-Shardctl-Token"] = token();
    try {
      const response = await fetch(`/api/shards/${encodeURIComponent(name)}/${action}`,
                                   {method: "POST", headers, cache: "no-store"});
      const body = await response.json().catch(() => ({}));
      if (!response.ok) {
        show(`${action} ${name} refused (${response.status}): ${body.error || response.statusText}`, "error");
        if (response.status === 403) $("token").focus();
      } else {
        const shard = body.shard || {};
        show(`${name}: ${shard.state}${shard.pid ? ` (pid ${shard.pid})` : ""}`, "ok");
      }
    } catch (error) {
      show(`${action} ${name} failed: ${error.message}`, "error");
    } finally {
      button.disabled = false;
      refreshStatus(false);
    }
  }

  function newRow(name) {
    const tr = document.createElement("tr");
    tr.dataset.shard = name;
    const cells = {};
    for (const key of ["name", "state", "pid", "uptime", "rate", "rows", "lag", "backlog", "error", "actions"]) {
      const td = document.createElement("td");
      td.className = `col-${key}`;
      if (["pid", "uptime", "rate", "rows", "lag", "backlog"].includes(key)) td.classList.add("num");
      tr.appendChild(td);
      cells[key] = td;
    }
    cells.name.textContent = name;
    const badge = document.createElement("span");
    const hosts = document.createElement("div");  // cluster mode: who streams the shard, who stands by
    hosts.className = "hosts muted";
    cells.state.append(badge, hosts);
    const restart = document.createElement("button");
    restart.className = "restart";
    restart.textContent = "Restart";
    restart.addEventListener("click", () => command(name, "restart", restart));
    const toggle = document.createElement("button");
    toggle.className = "toggle";
    toggle.addEventListener("click", () => command(name, toggle.dataset.action, toggle));
    cells.actions.append(restart, toggle);
    return {tr, cells, badge, hosts, restart, toggle};
  }

  function renderShards(data) {
    const body = document.querySelector("#shards tbody");
    const seen = new Set();
    for (const s of data.shards) {
      seen.add(s.name);
      let row = rows.get(s.name);
      if (!row) {
        row = newRow(s.name);
        rows.set(s.name, row);
      }
      body.appendChild(row.tr);  // keeps the server's order; moving a node keeps its listeners
      const c = row.cells;
      row.badge.textContent = s.state;
      row.badge.className = `state ${s.state}`;
      row.badge.title = s.reason || "";
      row.hosts.textContent = s.host_id ? `streamed by ${s.lease_owner || "nobody"}` +
        `${s.lease_epoch === null ? "" : ` (epoch ${s.lease_epoch})`} · standing by: ` +
        `${(s.standby_hosts || []).join(", ") || "none"}` : "";
      c.pid.textContent = s.pid === null ? "—" : String(s.pid);
      c.uptime.textContent = duration(s.uptime);
      c.rate.textContent = Number(s.ticks_per_second || 0).toFixed(1);
      c.rows.textContent = count(s.rows_written);
      c.lag.textContent = s.last_event_ts ? duration(data.now - s.last_event_ts) : "—";
      const stopped = s.disk_full ? " · DISK FULL" : s.journal_full ? " · FULL" : "";
      c.backlog.textContent = `${count(s.journal_backlog)} · ${duration(s.seconds_behind)}${stopped}`;
      c.backlog.title = "journal records not yet committed · age of the oldest";
      const error = s.last_error || (s.last_rollback ? "database went back in time: " + s.last_rollback : "") || (s.state === "FATAL" || s.state === "BACKOFF" ? s.reason : "") || "";
      c.error.textContent = error;
      c.error.title = error;
      const running = ["STARTING", "RUNNING", "BACKOFF"].includes(s.state);
      row.toggle.dataset.action = running ? "stop" : "start";
      row.toggle.textContent = running ? "Stop" : "Start";
    }
    for (const [name, row] of rows) {
      if (!seen.has(name)) {
        row.tr.remove();
        rows.delete(name);
      }
    }
    const sup = data.supervisor || {};
    const up = data.shards.filter((s) => s.state === "RUNNING").length;
    $("summary").textContent = `supervisor pid ${sup.pid} · ${up}/${data.shards.length} running` +
      `${sup.shutting_down ? " · shutting down" : ""} · updated ${new Date().toLocaleTimeString("en-GB")}`;
    $("summary").className = "muted";
  }

  // ---------------------------------------------------------------- symbol freshness

  const seconds = (v) => (v === null || v === undefined ? "—" : `${Number(v).toFixed(Math.abs(v) < 100 ? 1 : 0)}s`);

  // Each shard's freshness is columnar ({symbol: [...], last_tick_at: [...], ...}); stale symbols first.
  function renderSymbols(data) {
    const records = [];
    for (const s of data.shards) {
      const f = s.freshness;
      if (!f || !Array.isArray(f.symbol)) continue;
      f.symbol.forEach((symbol, i) => records.push({
        shard: s.name, symbol, last: f.last_tick_at[i], p50: f.delay_p50[i], p99: f.delay_p99[i],
        market: f.market[i], stale: f.stale[i], staleAfter: s.stale_after,
        slow: Boolean(f.slow && f.slow[i]), rate: f.rate ? f.rate[i] : null,
        normal: f.normal_rate ? f.normal_rate[i] : null}));
    }
    records.sort((a, b) => Number(b.stale) - Number(a.stale) || Number(b.slow) - Number(a.slow));
    const fragment = document.createDocumentFragment();
    for (const r of records) {
      const tr = document.createElement("tr");
      tr.dataset.symbol = r.symbol;
      if (r.stale) {
        tr.className = "stale";
        tr.title = `no tick for longer than stale_after (${r.staleAfter}s) while its market is ${r.market}`;
      } else if (r.slow) {
        tr.className = "slow";
        tr.title = `ticking at ${r.rate}/min, well below its normal ${r.normal}/min, while its market is ${r.market}`;
      }
      const cells = [["shard", r.shard], ["symbol", r.symbol],
                     ["age", r.last === null ? "never" : duration(data.now - r.last), true],
                     ["p50", seconds(r.p50), true], ["p99", seconds(r.p99), true],
                     ["rate", r.rate === null ? "—" : `${r.rate}/min`, true],
                     ["market", r.market], ["stale", r.stale ? "STALE" : r.slow ? "SLOW" : ""]];
      for (const [key, text, num] of cells) {
        const td = document.createElement("td");
        td.className = `col-${key}${num ? " num" : ""}${key === "market" ? ` ${r.market}` : ""}`;
        td.textContent = text;
        tr.appendChild(td);
      }
      fragment.appendChild(tr);
    }
    document.querySelector("#symbols tbody").replaceChildren(fragment);
    const stale = records.filter((r) => r.stale).length, slow = records.filter((r) => r.slow).length;
    $("symbols-note").textContent = `${records.length} symbol(s) · ${stale} stale` + (slow ? ` · ${slow} slow` : "");
    $("symbols-note").className = stale || slow ? "error-text" : "muted";
  }

  // ---------------------------------------------------------------- chart selects

  function fillSelect(select, groups, wanted) {
    const keep = wanted || select.value;
    select.replaceChildren();
    for (const [label, values] of groups) {
      const parent = label ? document.createElement("optgroup") : select;
      if (label) {
        parent.label = label;
        select.appendChild(parent);
      }
      for (const value of values) {
        const option = document.createElement("option");
        option.value = value;
        option.textContent = value;
        parent.appendChild(option);
      }
    }
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }

  function renderSelects(data) {
    const params = new URLSearchParams(location.search);
    const firstTime = !symbolsKey;
    const sKey = JSON.stringify(data.symbols);
    const iKey = JSON.stringify(data.intervals);
    defaultSince = data.default_since || {};
    if (sKey !== symbolsKey) {
      symbolsKey = sKey;
      fillSelect($("symbol"), Object.entries(data.symbols), firstTime ? params.get("symbol") : null);
    }
    if (iKey !== intervalsKey) {
      intervalsKey = iKey;
      const wanted = firstTime ? params.get("interval") || (data.intervals.includes("1m") ? "1m" : null) : null;
      fillSelect($("interval"), [["", data.intervals]], wanted);
    }
    if (firstTime) {
      const since = params.get("since") || defaultSince[$("interval").value];
      if (since) setSince(since);
      refreshChart();
    }
  }

  function setSince(value) {
    const select = $("since");
    if (![...select.options].some((o) => o.value === value)) {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = value;
      select.appendChild(option);
    }
    select.value = value;
  }

  // ---------------------------------------------------------------- chart

  async function refreshChart() {
    clearTimeout(chartTimer);
    chartTimer = setTimeout(refreshChart, CHART_EVERY_MS);
    const symbol = $("symbol").value;
    const interval = $("interval").value;
    const since = $("since").value;
    if (!symbol || !interval) return;
    const note = $("chart-note");
    const query = new URLSearchParams({symbol, interval, since});
    try {
      const response = await fetch(`/api/candles?${query}`, {cache: "no-store"});
      const data = await response.json();
      if (!response.ok) {
        note.textContent = data.error || `HTTP ${response.status}`;
        return;
      }
      if (!window.Plotly) {
        note.textContent = "the chart library (plotly.min.js) did not load";
        return;
      }
      const trace = {
        type: "candlestick", name: symbol, x: data.bucket,
        open: data.open, high: data.high, low: data.low, close: data.close,
        increasing: {line: {color: "#1a7f37"}}, decreasing: {line: {color: "#cf222e"}},
      };
      const layout = {
        margin: {l: 60, r: 20, t: 30, b: 40}, showlegend: false, uirevision: `${symbol} ${interval}`,
        title: {text: `${symbol} · ${interval} candles (${data.table})`, font: {size: 14}, x: 0.01},
        xaxis: {type: "date", rangeslider: {visible: false}},
        yaxis: {title: {text: "price"}, fixedrange: false},
        paper_bgcolor: "#ffffff", plot_bgcolor: "#ffffff",
      };
      await window.Plotly.react("chart", [trace], layout, {displaylogo: false, responsive: true});
      note.textContent = data.bucket.length
        ? `${data.bucket.length} candle(s); last ${new Date(data.bucket[data.bucket.length - 1]).toISOString()}`
        : `no ${interval} candles for ${symbol} in the last ${since} yet`;
    } catch (error) {
      note.textContent = `cannot load candles: ${error.message}`;
    }
  }

  for (const id of ["symbol", "since"]) $(id).addEventListener("change", refreshChart);
  $("interval").addEventListener("change", () => {
    const since = defaultSince[$("interval").value];
    if (since) setSince(since);
    refreshChart();
  });

  // ---------------------------------------------------------------- status loop

  let statusTimer = null;
  async function refreshStatus(schedule = true) {
    if (schedule) statusTimer = setTimeout(refreshStatus, STATUS_EVERY_MS);
    try {
      const response = await fetch("/api/status", {cache: "no-store"});
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const data = await response.json();
      renderShards(data);
      renderSymbols(data);
      renderSelects(data);
    } catch (error) {
      $("summary").textContent = `cannot reach the supervisor (${error.message}); retrying`;
      $("summary").className = "error-text";
    }
  }

  tokenState();
  refreshStatus();
  window.shardctlStatusTimer = () => statusTimer;
})();

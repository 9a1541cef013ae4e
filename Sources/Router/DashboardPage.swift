/// The dashboard's page, script and style, compiled into the binary: an installed router needs no data file,
/// and the page fetches nothing but its own three files and the JSON API (docs/DASHBOARD.md) from the
/// router that served it, so it works on a management network without internet access. The charts are
/// drawn as SVG by the script below (no chart library).
enum DashboardPage {
    static let html = #"""
    <!DOCTYPE html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>patronus-router dashboard</title>
    <link rel="stylesheet" href="/dashboard.css">
    <script src="/dashboard.js" defer></script>
    </head>
    <body>
    <header>
      <h1>patronus-router <span id="local">…</span></h1>
      <div id="summary">loading…</div>
      <div class="legend"><span class="dot s-up"></span>up <span class="dot s-degraded"></span>degraded
        <span class="dot s-down"></span>down · charts: last 60 min, updated every 5 s · read-only</div>
    </header>
    <div id="banner" hidden></div>
    <main>
      <section id="sites"><noscript>The dashboard draws with JavaScript; without it, use
        <a href="/api/v1/status">/api/v1/status</a>.</noscript></section>
      <section class="panel"><h2>Which path each class takes now</h2><div id="selections"></div></section>
      <section class="panel"><h2>Failover events (last 60 min)</h2><div id="timeline"></div><div id="failovers"></div></section>
    </main>
    </body>
    </html>

    """#

    static let style = #"""
    :root { --up: #2e9d4a; --degraded: #e0a100; --down: #d0342c; --ink: #1d2330; --muted: #6b7385; --line: #e2e5ec; }
    * { box-sizing: border-box; }
    body { margin: 0; font: 14px/1.4 system-ui, "DejaVu Sans", sans-serif; color: var(--ink); background: #f4f6fa; }
    header { padding: 14px 24px; background: #1d2330; color: #fff; }
    header h1 { margin: 0; font-size: 20px; font-weight: 600; }
    header h1 span { font-weight: 400; color: #b9c2d6; }
    #summary { margin-top: 4px; color: #dfe5f2; }
    .legend { margin-top: 4px; color: #b9c2d6; font-size: 12px; }
    #banner { margin: 12px 24px 0; padding: 10px 14px; background: #fde8e7; border: 1px solid var(--down); border-radius: 6px; }
    main { padding: 12px 24px 24px; }
    h2 { font-size: 16px; margin: 0 0 8px; }
    .site, .panel { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 12px 16px; margin-bottom: 14px; }
    .site h2 .meta { font-weight: 400; color: var(--muted); font-size: 13px; margin-left: 8px; }
    .path { border-top: 1px solid var(--line); padding: 10px 0 4px; }
    .path-head { display: flex; flex-wrap: wrap; gap: 6px 18px; align-items: baseline; }
    .path-name { font-weight: 600; font-size: 15px; }
    .path-status { font-weight: 600; text-transform: uppercase; font-size: 12px; }
    .num { color: var(--muted); }
    .num b { color: var(--ink); font-weight: 600; }
    .charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(290px, 1fr)); gap: 8px; margin-top: 6px; }
    .chart-box { border: 1px solid var(--line); border-radius: 6px; padding: 4px 6px 2px; }
    .chart-title { font-size: 12px; color: var(--muted); }
    svg { display: block; width: 100%; height: auto; }
    svg text { font: 10px system-ui, "DejaVu Sans", sans-serif; }
    svg text:not([fill]) { fill: var(--muted); }
    .dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin: 0 4px 0 8px; vertical-align: -1px; }
    .s-up { color: var(--up); } .dot.s-up { background: var(--up); }
    .s-degraded { color: var(--degraded); } .dot.s-degraded { background: var(--degraded); }
    .s-down { color: var(--down); } .dot.s-down { background: var(--down); }
    .s-unknown { color: var(--muted); } .dot.s-unknown { background: var(--muted); }
    table { border-collapse: collapse; width: 100%; }
    th, td { text-align: left; padding: 4px 10px 4px 0; border-bottom: 1px solid var(--line); font-variant-numeric: tabular-nums; }
    th { color: var(--muted); font-weight: 500; font-size: 12px; }
    .empty { color: var(--muted); }

    """#

    static let script = #"""
    "use strict";
    // patronus-router dashboard: polls the router's read-only JSON API (docs/DASHBOARD.md) every 5 s and draws
    // sites, paths, charts, selections and failovers. No library and no other host: everything comes from here.
    const SVG = "http://www.w3.org/2000/svg";
    const MINUTES = 60;
    const COLORS = { latency: "#2b6cb0", jitter: "#9f7aea", loss: "#d0342c", tx: "#2e9d4a", rx: "#dd6b20", score: "#1d2330" };

    function h(tag, attrs, ...children) {
      const node = document.createElement(tag);
      for (const [k, v] of Object.entries(attrs || {})) {
        if (k === "text") node.textContent = v; else if (v !== undefined && v !== null) node.setAttribute(k, v);
      }
      for (const child of children) if (child) node.append(child);
      return node;
    }
    function s(tag, attrs, text) {
      const node = document.createElementNS(SVG, tag);
      for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
      if (text !== undefined) node.textContent = text;
      return node;
    }
    const time = text => Date.parse(text.replace(" ", "T") + "Z");
    const hhmm = ms => new Date(ms).toISOString().slice(11, 16);
    const fmt = (v, digits) => v === undefined || v === null ? "n/a" : Number(v).toFixed(digits === undefined ? 1 : digits);
    // Time ticks on whole minutes (1, 2, 5, 10, 15 or 30 apart), at most `most` of them in [t0, t1].
    function ticks(t0, t1, most) {
      const step = [1, 2, 5, 10, 15, 30, 60].map(m => m * 60000).find(st => (t1 - t0) / st <= most) || 3600000;
      const out = [];
      for (let t = Math.ceil(t0 / step) * step; t <= t1; t += step) out.push(t);
      return out;
    }
    const statusClass = st => "s-" + (["up", "degraded", "down"].includes(st) ? st : "unknown");

    async function getJSON(url) {
      const response = await fetch(url, { cache: "no-store" });
      if (!response.ok) throw new Error(url + " answered " + response.status + ": " + (await response.text()).trim());
      return response.json();
    }

    // A line chart over [t0, t1]: one polyline per series, broken where a value is missing.
    function chart(title, unit, series, t0, t1, fixedMax) {
      const W = 300, H = 120, L = 34, R = 6, T = 8, B = 18;
      let max = fixedMax || 0, points = 0;
      for (const line of series) for (const p of line.values) if (p.v !== null && p.v !== undefined) max = Math.max(max, p.v);
      if (!fixedMax) max = max > 0 ? max * 1.15 : 1;
      const x = t => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
      const y = v => T + (H - T - B) * (1 - v / max);
      const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title });
      for (let i = 0; i <= 2; i++) {
        const v = max * i / 2;
        svg.append(s("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), stroke: "#e2e5ec" }));
        svg.append(s("text", { x: L - 4, y: y(v) + 3, "text-anchor": "end" }, v >= 100 ? v.toFixed(0) : v.toFixed(v >= 10 ? 1 : 2)));
      }
      for (const t of ticks(t0, t1, 4)) {
        svg.append(s("line", { x1: x(t), x2: x(t), y1: H - B, y2: H - B + 3, stroke: "#aab2c5" }));
        svg.append(s("text", { x: x(t), y: H - 4, "text-anchor": "middle" }, hhmm(t)));
      }
      series.forEach((line, index) => {
        let run = [];
        const flush = () => {
          if (run.length === 1) svg.append(s("circle", { cx: run[0][0], cy: run[0][1], r: 1.8, fill: line.color }));
          if (run.length > 1) svg.append(s("polyline", { points: run.map(p => p.join(",")).join(" "), fill: "none",
                                                           stroke: line.color, "stroke-width": 1.5 }));
          run = [];
        };
        for (const p of line.values) {
          if (p.v === null || p.v === undefined || p.t < t0) { flush(); continue; }
          run.push([x(p.t).toFixed(1), y(Math.min(p.v, max)).toFixed(1)]);
          points++;
        }
        flush();
        svg.append(s("text", { x: L + 4 + index * 90, y: T + 9, fill: line.color }, line.name));
      });
      svg.setAttribute("data-points", points);
      return h("div", { class: "chart-box" }, h("div", { class: "chart-title", text: title + " (" + unit + ")" }), svg);
    }

    function pathCharts(path, history, t0, t1) {
      const samples = (history && history.samples) || [];
      const series = key => samples.map(p => ({ t: time(p.time), v: p[key] }));
      const box = h("div", { class: "charts", "data-path-charts": path.name || String(path.id) });
      box.append(chart("Latency and jitter", "ms", [{ name: "latency", color: COLORS.latency, values: series("latency_ms") },
                                                    { name: "jitter", color: COLORS.jitter, values: series("jitter_ms") }], t0, t1));
      box.append(chart("Loss", "%", [{ name: "loss", color: COLORS.loss, values: series("packet_loss_pct") }], t0, t1));
      box.append(chart("Throughput", "Mbit/s", [{ name: "transmit", color: COLORS.tx, values: series("throughput_tx_mbps") },
                                                { name: "receive", color: COLORS.rx, values: series("throughput_rx_mbps") }], t0, t1));
      box.append(chart("Score", "0-100", [{ name: "score", color: COLORS.score, values: series("score") }], t0, t1, 100));
      return box;
    }

    function renderSites(status, histories, t0, t1) {
      const container = document.getElementById("sites");
      container.replaceChildren();
      const sites = new Map();
      for (const site of status.active_sites) sites.set(site.id, { site, paths: [] });
      for (const path of status.paths) {
        if (!sites.has(path.dst_site)) sites.set(path.dst_site, { site: { id: path.dst_site, name: path.dst_name, status: "inactive" }, paths: [] });
        sites.get(path.dst_site).paths.push(path);
      }
      if (sites.size === 0) container.append(h("div", { class: "site empty", text: "No remote site heard yet." }));
      for (const { site, paths } of sites.values()) {
        const up = paths.filter(p => p.status === "up").length;
        const section = h("section", { class: "site", "data-site": site.name, "data-site-status": site.status },
          h("h2", { text: site.name }, h("span", { class: "meta",
            text: `${site.status} · ${site.overlay_address || ""} · ${up}/${paths.length} paths up · last seen ${site.last_seen || "?"} UTC` })));
        if (paths.length === 0) section.append(h("div", { class: "empty", text: "No path to this site yet." }));
        for (const path of paths) {
          const name = path.name || `path ${path.id}`;
          const row = h("div", { class: "path", "data-path": name, "data-path-id": path.id, "data-status": path.status });
          const num = (label, value) => { const n = h("span", { class: "num", text: label + " " }); n.append(h("b", { text: value })); return n; };
          row.append(h("div", { class: "path-head" },
            h("span", { class: "path-name" }, h("span", { class: "dot " + statusClass(path.status) }), name),
            h("span", { class: "path-status " + statusClass(path.status), text: path.status }),
            num("latency", fmt(path.latency_ms) + " ms"), num("jitter", fmt(path.jitter_ms) + " ms"),
            num("loss", fmt(path.packet_loss_pct, 2) + " %"), num("score", fmt(path.score)),
            num("throughput", fmt(path.throughput_tx_mbps, 2) + " / " + fmt(path.throughput_rx_mbps, 2) + " Mbit/s"),
            num("bandwidth", [[path.bandwidth_mbps, "up"], [path.download_bandwidth_mbps, "down"]]
              .map(([v, d]) => (v === undefined ? "not measured" : fmt(v) + " Mbit/s") + " " + d).join(", ")),
            h("span", { class: "num", text: `${path.wg_interface} via ${path.local_uplink} → ${path.remote_endpoint}` })));
          row.append(pathCharts(path, histories[path.id], t0, t1));
          section.append(row);
        }
        container.append(section);
      }
    }

    function renderSelections(selections, status) {
      const container = document.getElementById("selections");
      const statusOf = new Map(status.paths.map(p => [p.name, p.status]));
      const rows = selections.selections;
      if (rows.length === 0) { container.replaceChildren(h("div", { class: "empty", text: "No class is steered yet." })); return; }
      const table = h("table", {}, h("tr", {}, h("th", { text: "class" }), h("th", { text: "site" }), h("th", { text: "path" })));
      for (const sel of rows) {
        const st = statusOf.get(sel.path);
        table.append(h("tr", { "data-selection": sel.policy + "|" + sel.site, "data-selected-path": sel.path },
          h("td", { text: sel.policy }), h("td", { text: sel.site }),
          h("td", {}, h("span", { class: "dot " + statusClass(st) }), sel.path,
            ...(sel.copy_path ? [h("span", { class: "copy", "data-copy-path": sel.copy_path, text: " + a copy of each packet by " + sel.copy_path })] : []))));
      }
      container.replaceChildren(table);
    }

    function renderFailovers(failovers, t0, t1) {
      const events = failovers.events;
      const W = 900, H = 54, L = 10, R = 10;
      const x = t => L + (W - L - R) * (t - t0) / Math.max(1, t1 - t0);
      const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "timeline", "data-events": events.length });
      svg.append(s("line", { x1: L, x2: W - R, y1: 26, y2: 26, stroke: "#aab2c5" }));
      for (const t of ticks(t0, t1, 12)) {
        svg.append(s("line", { x1: x(t), x2: x(t), y1: 22, y2: 30, stroke: "#aab2c5" }));
        svg.append(s("text", { x: x(t), y: 46, "text-anchor": "middle" }, hhmm(t)));
      }
      for (const e of events) {
        const marker = s("circle", { cx: x(time(e.time)), cy: 26, r: 6, fill: "#d0342c", "fill-opacity": 0.75 });
        marker.append(s("title", {}, `${e.time} UTC ${e.policy} to ${e.dst_name || "?"}: ${e.from_name || "-"} → ${e.to_name || "-"} (${e.reason})`));
        svg.append(marker);
      }
      document.getElementById("timeline").replaceChildren(svg);
      const container = document.getElementById("failovers");
      if (events.length === 0) { container.replaceChildren(h("div", { class: "empty", text: "No failover in the last hour." })); return; }
      const table = h("table", {}, h("tr", {}, ...["time (UTC)", "class", "site", "from", "to", "reason", "detection", "switch"]
        .map(t => h("th", { text: t }))));
      for (const e of events) {
        table.append(h("tr", { "data-failover": e.time },
          h("td", { text: e.time }), h("td", { text: e.policy }), h("td", { text: e.dst_name || "?" }),
          h("td", { text: e.from_name || "-" }), h("td", { text: e.to_name || "-" }), h("td", { text: e.reason }),
          h("td", { text: e.detection_ms === undefined ? "n/a" : fmt(e.detection_ms) + " ms" }),
          h("td", { text: e.switch_ms === undefined ? "n/a" : fmt(e.switch_ms, 3) + " ms" })));
      }
      container.replaceChildren(table);
    }

    function banner(message) {
      const node = document.getElementById("banner");
      node.hidden = !message;
      node.textContent = message || "";
    }

    async function refresh() {
      try {
        const [status, selections, failovers] = await Promise.all([
          getJSON("/api/v1/status"), getJSON("/api/v1/selections"), getJSON(`/api/v1/failovers?minutes=${MINUTES}`)]);
        const histories = {};
        await Promise.all(status.paths.map(async p => {
          histories[p.id] = await getJSON(`/api/v1/metrics?path=${p.id}&minutes=${MINUTES}`);
        }));
        // The last hour, or less while the router is younger: from the first row (at least 5 min), so a
        // fresh start does not squeeze its data into the right edge.
        const t1 = time(status.generated_at);
        let first = t1;
        for (const h of Object.values(histories)) if (h.samples.length) first = Math.min(first, time(h.samples[0].time));
        const t0 = Math.max(t1 - MINUTES * 60000, Math.min(first, t1 - 5 * 60000));
        document.getElementById("local").textContent = status.local_site ? "· " + status.local_site.name : "";
        const c = status.path_counts;
        document.getElementById("summary").textContent = `${status.active_sites.length} active remote sites · ` +
          `${c.total} paths: ${c.up} up, ${c.degraded} degraded, ${c.down} down · as of ${status.generated_at} UTC`;
        renderSites(status, histories, t0, t1);
        renderSelections(selections, status);
        renderFailovers(failovers, t0, t1);
        banner(null);
        document.body.setAttribute("data-updated", status.generated_at);
      } catch (error) {
        banner("Cannot read the router's status: " + error.message + ". Retrying every 5 s.");
      }
    }
    refresh();
    setInterval(refresh, 5000);

    """#
}

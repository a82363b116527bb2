/* OpenDT dashboard: reads the twin's JSON API every few seconds and renders it. Plain JS, no build step;
   charts are uPlot (vendored, see vendor/README.md). Every text from the API is set with textContent.
   For tests: each chart container carries data-points="<non-null points drawn>", the status list has
   <dd data-key="status">, <body data-ticks="<completed refreshes>">. ?refresh=<seconds> sets the period. */
"use strict";

(function () {
  const params = new URLSearchParams(window.location.search);
  const REFRESH_MS = Math.max(1, Number(params.get("refresh")) || 5) * 1000;
  const TARGET_POINTS = 720; /* per line: the step of /api/power and /api/carbon is chosen for about this */
  const STEPS_S = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  const WHATIF_DEFAULT_RANGE_MS = 6 * 3600 * 1000;
  const COLORS = {
    measured: "#1f77b4",
    simulated: "#d62728",
    baseline: "#7f7f7f",
    whatif: "#2ca02c",
    intensity: "#8c564b",
    emission: "#9467bd",
    extra: ["#ff7f0e", "#17becf", "#e377c2", "#bcbd22"],
  };
  const PATCH_KEYS = [
    "cpu.coreSpeed",
    "cpu.coreCount",
    "count",
    "memory.memorySize",
    "cpuPowerModel.maxPower",
    "cpuPowerModel.idlePower",
    "cpuPowerModel.calibrationFactor",
    "cpuPowerModel.modelType",
  ];

  const $ = (id) => document.getElementById(id);
  const view = {
    stepS: 60,
    ticks: 0,
    topologyDoc: "",
    whatifTouched: false,
    simulatedRange: null,
    timeRange: null /* [lo, hi] in s: the power chart's x range, which the carbon chart shares */,
  };
  const charts = new Map();

  /* ---------- small helpers ---------- */

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = String(v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  function isNum(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  function fmtNum(v, digits) {
    if (!isNum(v)) return "—";
    return v.toLocaleString("en-US", { maximumFractionDigits: digits === undefined ? 1 : digits });
  }

  function fmtPct(v, signed) {
    if (!isNum(v)) return "—";
    const s = fmtNum(v, 2) + " %";
    return signed && v > 0 ? "+" + s : s;
  }

  const MAX_DATE_MS = 8.64e15; /* beyond this a JS Date is invalid */

  function iso(ms) {
    if (!isNum(ms)) return "—";
    if (Math.abs(ms) > MAX_DATE_MS) return String(ms);
    return new Date(ms).toISOString().replace(/\.000Z$/, "Z");
  }

  function fmtDuration(s) {
    if (!isNum(s)) return "—";
    const t = Math.round(s);
    const h = Math.floor(t / 3600);
    const m = Math.floor((t % 3600) / 60);
    const sec = t % 60;
    return (h ? h + "h " : "") + (h || m ? String(m).padStart(h ? 2 : 1, "0") + "m " : "") + sec + "s";
  }

  /** A step in seconds as a reader says it: "60 s", "5 min", "1 h". */
  function fmtStep(s) {
    if (!isNum(s)) return "step";
    if (s % 3600 === 0) return s / 3600 + " h";
    if (s % 60 === 0) return s / 60 + " min";
    return s + " s";
  }

  /** A calibrated parameter with its unit: "× 1.2 of physical" for a scale axis, "36 W", "4.5". */
  function fmtParam(v, unit) {
    if (!isNum(v)) return fmtValue(v);
    if (unit === "× physical") return "× " + fmtNum(v, 4) + " of the physical value";
    return fmtNum(v, 4) + (unit ? " " + unit : "");
  }

  function fmtValue(v) {
    if (isNum(v)) return fmtNum(v, 4);
    if (v === null || v === undefined) return "—";
    return typeof v === "object" ? JSON.stringify(v) : String(v);
  }

  async function getJSON(path) {
    const resp = await fetch(path, { headers: { Accept: "application/json" }, cache: "no-store" });
    let body = null;
    try {
      body = await resp.json();
    } catch (e) {
      body = null;
    }
    return { status: resp.status, ok: resp.ok, body: body };
  }

  function errorText(resp) {
    const msg = resp.body && resp.body.error ? resp.body.error : "no JSON error message";
    return "HTTP " + resp.status + ": " + msg;
  }

  function setBanner(text) {
    const b = $("api-error");
    b.hidden = !text;
    b.textContent = text || "";
  }

  function safely(name, fn) {
    try {
      fn();
      return null;
    } catch (e) {
      console.error("dashboard: rendering " + name + " failed", e);
      return name + ": " + e.message;
    }
  }

  /* ---------- charts ---------- */

  /** Series of [[epoch_ms, value], …] → uPlot's aligned columns (x in s, null where a series has none). */
  function align(list) {
    const ts = new Set();
    for (const s of list) for (const p of s) ts.add(p[0]);
    const xs = Array.from(ts).sort((a, b) => a - b);
    const index = new Map(xs.map((t, i) => [t, i]));
    const ys = list.map((s) => {
      const y = new Array(xs.length).fill(null);
      for (const p of s) y[index.get(p[0])] = isNum(p[1]) ? p[1] : null;
      return y;
    });
    return [xs.map((t) => t / 1000)].concat(ys);
  }

  function chartWidth(container) {
    return Math.max(320, Math.floor(container.clientWidth || container.parentElement.clientWidth || 600));
  }

  /* x tick labels in 24-hour UTC (uPlot's default is 12-hour am/pm): tick step, then the label formats */
  const TIME_TICKS = [
    [3600 * 24 * 365, "{YYYY}", null, null, null, null, null, null, 1],
    [3600 * 24 * 28, "{MMM}", "\n{YYYY}", null, null, null, null, null, 1],
    [3600 * 24, "{MM}-{DD}", "\n{YYYY}", null, null, null, null, null, 1],
    [3600, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
    [60, "{HH}:{mm}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
    [1, "{HH}:{mm}:{ss}", "\n{YYYY}-{MM}-{DD}", null, "\n{MM}-{DD}", null, null, null, 1],
  ];

  function chartOptions(container, defs, opts) {
    const scales = { x: { time: true } };
    const axes = [{ stroke: "#667085", values: TIME_TICKS }];
    const seen = [];
    const many = new Set(defs.map((d) => d.scale || "y")).size > 2;
    for (const d of defs) {
      const scale = d.scale || "y";
      if (seen.includes(scale)) continue;
      seen.push(scale);
      scales[scale] = { auto: true };
      /* every scale its own axis (a third calibrated parameter was drawn against none), left and right in
         turn, in its line's colour when there are more than two */
      axes.push({
        scale: scale,
        side: seen.length % 2 === 1 ? 3 : 1,
        label: d.axisLabel || d.unit || "",
        size: 70,
        stroke: many ? d.stroke : "#667085",
        grid: { show: seen.length === 1 },
        values: (u, splits) => splits.map((v) => fmtNum(v, 2)),
      });
    }
    return {
      width: chartWidth(container),
      height: opts.height || 260,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"),
      scales: scales,
      axes: axes,
      legend: { live: true },
      hooks: {
        /* the x range drawn, for tests and for the charts that share it */
        setScale: [
          (u, key) => {
            if (key !== "x") return;
            container.dataset.xMin = isNum(u.scales.x.min) ? String(u.scales.x.min) : "";
            container.dataset.xMax = isNum(u.scales.x.max) ? String(u.scales.x.max) : "";
          },
        ],
      },
      cursor: { drag: { x: true, y: false } },
      series: [{ label: "time (UTC)", value: "{YYYY}-{MM}-{DD} {HH}:{mm}" }].concat(
        defs.map((d) => ({
          label: d.label,
          stroke: d.stroke,
          width: d.width || 1.5,
          dash: d.dash,
          scale: d.scale || "y",
          spanGaps: true,
          points: { show: false },
          value: (u, v) =>
            v === null || v === undefined ? "—" : fmtNum(v, 2) + (d.unit ? " " + d.unit : ""),
        })),
      ),
    };
  }

  /** Draw (or update) the chart in element ``id``; sets its data-points to the non-null values drawn. */
  function drawChart(id, defs, list, opts) {
    const container = $(id);
    const data = align(list);
    let points = 0;
    for (const ys of data.slice(1)) for (const v of ys) if (v !== null) points += 1;
    const key = JSON.stringify(defs.map((d) => [d.label, d.scale || "y", d.unit || ""]));
    let entry = charts.get(id);
    if (entry && entry.key !== key) {
      entry.plot.destroy();
      charts.delete(id);
      entry = undefined;
    }
    if (entry) {
      entry.plot.setData(data);
    } else {
      entry = {
        key: key,
        height: opts.height || 260,
        plot: new uPlot(chartOptions(container, defs, opts), data, container),
      };
      charts.set(id, entry);
    }
    if (opts.shareTime && view.timeRange) {
      /* the power and carbon charts span the instants' time range, so the two line up instant by instant */
      entry.plot.setScale("x", { min: view.timeRange[0], max: view.timeRange[1] });
    }
    container.dataset.points = String(points);
    container.dataset.empty = opts.empty || "no data yet";
    return points;
  }

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const [id, entry] of charts) {
        entry.plot.setSize({ width: chartWidth($(id)), height: entry.height });
      }
    }, 150);
  });

  /* ---------- status ---------- */

  function renderStatus(s) {
    const badge = $("status-badge");
    badge.textContent = s.status;
    badge.dataset.status = s.status;
    document.body.dataset.status = s.status;

    const replay = s.replay || {};
    const sim = s.simulation || {};
    const win = s.windows || {};
    const counters = s.counters || {};
    const wl = s.workload || {};
    const topo = s.topology || {};
    /* the bar follows the twin (windows durable over the workload's span), not the replay: at --speed max
       the replay is done long before the windows are simulated */
    const share = (t, lo, hi) => (hi > lo ? Math.min(1, Math.max(0, (t - lo) / (hi - lo))) : 1);
    let progress = null;
    if (sim.done) progress = 1;
    else if (isNum(sim.last_window_end_ms) && isNum(wl.start_ms) && isNum(wl.end_ms))
      progress = share(sim.last_window_end_ms, wl.start_ms, wl.end_ms);
    else if (isNum(wl.start_ms) && isNum(wl.end_ms)) progress = 0;
    let replayShare = null;
    if (isNum(replay.trace_ms) && isNum(replay.start_ms) && isNum(replay.end_ms))
      replayShare = share(replay.trace_ms, replay.start_ms, replay.end_ms);
    if (replay.done) replayShare = 1;
    $("replay-bar").style.width = progress === null ? "0" : (progress * 100).toFixed(1) + "%";
    $("replay-bar").parentElement.dataset.progress = progress === null ? "" : progress.toFixed(4);

    const rows = [
      ["status", "Status", s.status],
      ["run_id", "Run", s.run_id || "—"],
      ["uptime", "Uptime", fmtDuration(s.uptime_s)],
      [
        "workload",
        "Workload",
        wl.name ? wl.name + " (" + fmtNum(wl.tasks, 0) + " tasks, " + fmtNum(wl.hosts, 0) + " hosts)" : "—",
      ],
      [
        "replay",
        "Replay",
        replayShare === null
          ? "—"
          : fmtPct(replayShare * 100) +
            (replay.done ? ", sent" : "") +
            " — trace " +
            iso(replay.trace_ms) +
            (isNum(replay.lag_s) ? ", lag " + fmtNum(replay.lag_s, 1) + " s" : ""),
      ],
      ["watermark", "Watermark", iso(s.watermark_ms)],
      [
        "windows",
        "Windows",
        fmtNum(sim.windows_simulated ?? counters.windows_simulated, 0) +
          " simulated, " +
          fmtNum(sim.windows_failed ?? counters.windows_failed, 0) +
          " failed, " +
          fmtNum(sim.windows_durable, 0) +
          " durable" +
          (progress === null ? "" : ", " + fmtPct(progress * 100) + " of the trace") +
          (sim.done ? " (all done)" : ""),
      ],
      [
        "latency",
        "Window latency",
        "p50 " + fmtNum(sim.latency_p50_s, 3) + " s, p95 " + fmtNum(sim.latency_p95_s, 3) + " s",
      ],
      [
        "events",
        "Events",
        fmtNum(win.events, 0) +
          " (" +
          fmtNum(win.late, 0) +
          " late, " +
          fmtNum(win.duplicates, 0) +
          " duplicates, " +
          fmtNum(counters.malformed_messages, 0) +
          " malformed)",
      ],
      [
        "topology",
        "Topology",
        isNum(topo.version) ? "v" + topo.version + " (" + topo.source + ": " + topo.reason + ")" : "—",
      ],
    ];
    if (s.calibration) {
      const c = s.calibration;
      rows.push([
        "calibration",
        "Calibration",
        fmtNum(c.rounds, 0) +
          " rounds, " +
          fmtNum(c.applied, 0) +
          " applied, " +
          fmtNum(c.failed, 0) +
          " failed",
      ]);
    }
    if (s.kafka && s.kafka.bootstrap_servers) rows.push(["kafka", "Kafka", s.kafka.bootstrap_servers]);
    const dl = $("status");
    dl.replaceChildren(
      ...rows.flatMap(([key, label, value]) => [
        el("dt", { text: label }),
        el("dd", { "data-key": key, text: value }),
      ]),
    );
  }

  /* ---------- power and carbon ---------- */

  function rangeQuery(status, withEnd) {
    const q = new URLSearchParams({ step_s: String(view.stepS) });
    const replay = status.replay || {};
    /* Measured data is known up front (the replay stands in for the datacenter): show only what has been
       "sent" so far, i.e. up to the replay's trace time. */
    if (withEnd && isNum(replay.trace_ms) && !replay.done) q.set("end", String(replay.trace_ms + 1));
    return "?" + q.toString();
  }

  function chooseStep(body) {
    const span = (Date.parse(body.end) - Date.parse(body.start)) / 1000;
    if (!isNum(span) || span <= 0) return;
    const want = span / TARGET_POINTS;
    view.stepS = STEPS_S.find((s) => s >= want) || STEPS_S[STEPS_S.length - 1];
  }

  function metric(label, value, key) {
    return el("span", { "data-key": key }, label + " ", el("b", { text: value }));
  }

  function renderPower(resp) {
    const box = $("power-metrics");
    if (!resp.ok || !resp.body) {
      box.replaceChildren(el("span", { class: "error", text: errorText(resp) }));
      return;
    }
    const b = resp.body;
    chooseStep(b);
    const m = b.metrics || {};
    box.replaceChildren(
      metric("MAPE", fmtPct(m.mape_pct), "mape"),
      metric("energy error", fmtPct(m.energy_error_pct, true), "energy_error"),
      metric("matched points", fmtNum(m.points, 0), "points"),
      metric("step", fmtNum(b.step_s, 0) + " s", "step"),
      /* a twin still waiting for its first window has no range (the API then answers the epoch) */
      metric(
        "range",
        (b.simulated || []).length || (b.measured || []).length
          ? iso(Date.parse(b.start)) + " → " + iso(Date.parse(b.end))
          : "no data yet",
        "range",
      ),
    );
    const sim = b.simulated || [];
    if (sim.length) view.simulatedRange = [sim[0][0], sim[sim.length - 1][0]];
    const firsts = [b.measured || [], sim].filter((l) => l.length);
    view.timeRange = firsts.length
      ? [Math.min(...firsts.map((l) => l[0][0])) / 1000, Math.max(...firsts.map((l) => l[l.length - 1][0])) / 1000]
      : null;
    /* the twin's mean power per step (energy over time, as the report plots): its instant at a trace's end,
       after the last task, would read as a drop */
    const simMean = b.simulated_mean || sim;
    drawChart(
      "chart-power",
      [
        { label: "measured", stroke: COLORS.measured, unit: "W" },
        { label: "simulated", stroke: COLORS.simulated, unit: "W" },
      ],
      [b.measured || [], simMean],
      { empty: "no power data yet", shareTime: true },
    );
    prefillWhatif();
  }

  function renderCarbon(resp) {
    const box = $("carbon-metrics");
    if (!resp.ok || !resp.body) {
      box.replaceChildren(el("span", { class: "error", text: errorText(resp) }));
      return;
    }
    const b = resp.body;
    const ci = b.carbon_intensity || [];
    const em = b.carbon_emission || [];
    /* no point: no carbon intensity received for that time, so the emission is unknown (never 0) */
    const total = em.length ? em.reduce((sum, p) => sum + (isNum(p[1]) ? p[1] : 0), 0) : null;
    const mean = ci.length ? ci.reduce((sum, p) => sum + (isNum(p[1]) ? p[1] : 0), 0) / ci.length : null;
    box.replaceChildren(
      metric("emitted", total === null ? "unknown" : fmtNum(total / 1000, 3) + " kg CO2", "emitted"),
      metric("mean intensity", mean === null ? "unknown" : fmtNum(mean, 1) + " gCO2/kWh", "mean_intensity"),
    );
    drawChart(
      "chart-carbon",
      [
        { label: "carbon intensity", stroke: COLORS.intensity, unit: "gCO2/kWh", scale: "ci" },
        {
          label: "emission (gCO2 per " + fmtStep(b.step_s) + ")",
          stroke: COLORS.emission,
          unit: "gCO2",
          axisLabel: "gCO2 per " + fmtStep(b.step_s),
          scale: "em",
        },
      ],
      [ci, em],
      { empty: "no carbon intensity received yet: emissions unknown", shareTime: true },
    );
  }

  /* ---------- topology ---------- */

  function flatten(obj, prefix, out) {
    for (const [k, v] of Object.entries(obj || {})) {
      const path = prefix ? prefix + "." + k : k;
      if (v !== null && typeof v === "object" && !Array.isArray(v)) flatten(v, path, out);
      else out[path] = v;
    }
    return out;
  }

  function hostSpecs(topology) {
    const specs = new Map();
    ((topology && topology.clusters) || []).forEach((c, ci) => {
      const cluster = c.name || "#" + ci;
      (c.hosts || []).forEach((h, hi) => {
        const host = h.name || "#" + hi;
        specs.set(cluster + "\u0000" + host, { cluster: cluster, host: host, flat: flatten(h, "", {}) });
      });
    });
    return specs;
  }

  const TOPOLOGY_COLUMNS = [
    ["count", "count"],
    ["cpu.coreCount", "cores"],
    ["cpu.coreSpeed", "core MHz"],
    ["memory.memorySize", "memory MiB"],
    ["cpuPowerModel.modelType", "power model"],
    ["cpuPowerModel.idlePower", "idle W"],
    ["cpuPowerModel.maxPower", "max W"],
    ["cpuPowerModel.calibrationFactor", "calib. factor"],
  ];

  function same(a, b) {
    return JSON.stringify(a) === JSON.stringify(b);
  }

  function renderTopology(resp) {
    const meta = $("topology-meta");
    const box = $("topology");
    if (!resp.ok || !resp.body) {
      meta.textContent = errorText(resp);
      box.replaceChildren();
      view.topologyDoc = "";
      return;
    }
    const doc = JSON.stringify(resp.body);
    if (doc === view.topologyDoc) return;
    view.topologyDoc = doc;
    const sim = resp.body.simulated || {};
    const phys = hostSpecs(resp.body.physical);
    const simulated = hostSpecs(sim.topology);
    const keys = Array.from(phys.keys()).concat(Array.from(simulated.keys()).filter((k) => !phys.has(k)));
    const shown = new Set(TOPOLOGY_COLUMNS.map((c) => c[0]));
    let changed = 0;

    const head = el(
      "tr",
      {},
      el("th", { class: "text", text: "cluster / host" }),
      ...TOPOLOGY_COLUMNS.map((c) => el("th", { text: c[1], title: c[0] })),
      el("th", { class: "text", text: "other changes" }),
    );
    const rows = keys.map((key) => {
      const p = phys.get(key);
      const s = simulated.get(key);
      const any = p || s;
      const tr = el("tr", { "data-host": any.cluster + "/" + any.host });
      if (!p) tr.className = "added";
      if (!s) tr.className = "removed";
      tr.append(
        el("td", {
          class: "text",
          text: any.cluster + " / " + any.host + (!p ? " (added)" : !s ? " (removed)" : ""),
        }),
      );
      for (const [path] of TOPOLOGY_COLUMNS) {
        const pv = p ? p.flat[path] : undefined;
        const sv = s ? s.flat[path] : undefined;
        if (p && s && !same(pv, sv)) {
          changed += 1;
          tr.append(
            el("td", {
              class: "diff",
              title: "physical " + fmtValue(pv) + ", simulated " + fmtValue(sv),
              text: fmtValue(pv) + " → " + fmtValue(sv),
            }),
          );
        } else {
          tr.append(el("td", { text: fmtValue(p ? pv : sv) }));
        }
      }
      const other = [];
      if (p && s) {
        const paths = new Set(Object.keys(p.flat).concat(Object.keys(s.flat)));
        for (const path of paths) {
          if (shown.has(path) || path === "name" || same(p.flat[path], s.flat[path])) continue;
          other.push(path + ": " + fmtValue(p.flat[path]) + " → " + fmtValue(s.flat[path]));
        }
      }
      changed += other.length;
      tr.append(el("td", { class: other.length ? "text diff" : "text", text: other.join("; ") }));
      return tr;
    });
    const hosts = (specs) =>
      Array.from(specs.values()).reduce((n, h) => n + (isNum(h.flat.count) ? h.flat.count : 1), 0);
    meta.textContent =
      "simulated v" +
      fmtValue(sim.version) +
      " (" +
      fmtValue(sim.source) +
      ": " +
      fmtValue(sim.reason) +
      ") — " +
      hosts(phys) +
      " physical hosts, " +
      hosts(simulated) +
      " simulated; " +
      (changed ? changed + " difference" + (changed === 1 ? "" : "s") + " highlighted" : "identical");
    box.dataset.differences = String(changed);
    box.replaceChildren(
      el("table", { class: "grid", id: "topology-table" }, el("thead", {}, head), el("tbody", {}, ...rows)),
    );
    fillPatchKeys(keys.map((k) => phys.get(k) || simulated.get(k)));
  }

  function fillPatchKeys(specs) {
    const list = $("patch-keys");
    const keys = PATCH_KEYS.slice();
    for (const s of specs) {
      keys.push("clusters[" + s.cluster + "].hosts[" + s.host + "].count");
      keys.push("clusters[" + s.cluster + "].hosts[" + s.host + "].cpu.coreSpeed");
    }
    list.replaceChildren(...keys.map((k) => el("option", { value: k })));
  }

  /* ---------- calibration ---------- */

  function renderCalibration(resp) {
    const box = $("calibration");
    const chart = $("chart-calibration");
    if (resp.status === 404) {
      box.dataset.state = "disabled";
      chart.hidden = true;
      const why = resp.body && resp.body.error ? resp.body.error : "calibration.enabled is false";
      box.replaceChildren(
        el("p", { class: "muted", text: "Calibration is not running on this twin: " + why + "." }),
      );
      return;
    }
    if (!resp.ok || !resp.body) {
      box.dataset.state = "error";
      chart.hidden = true;
      box.replaceChildren(el("p", { class: "error", text: errorText(resp) }));
      return;
    }
    const c = resp.body;
    box.dataset.state = "enabled";
    const last = c.last_round || null;
    const series = Array.isArray(c.series) ? c.series : [];
    const lastEffect = series.length
      ? series[series.length - 1].in_effect || {}
      : (last && last.in_effect) || {};
    const items = [
      [
        "Rounds",
        fmtNum(c.rounds, 0) +
          " (" +
          fmtNum(c.applied, 0) +
          " applied, " +
          fmtNum(c.skipped, 0) +
          " skipped, " +
          fmtNum(c.failed, 0) +
          " failed, " +
          fmtNum(c.pending, 0) +
          " pending)",
      ],
      ["Every / lookback", fmtDuration(c.every_s) + " / " + fmtDuration(c.lookback_s)],
      ["Metric", fmtValue(c.metric)],
      ["Axes", Array.isArray(c.axes) ? c.axes.join(", ") : "—"],
    ];
    if (last) {
      items.push([
        "Last round",
        "#" +
          fmtValue(last.round) +
          " at " +
          iso(last.time_ms) +
          ": " +
          fmtValue(last.status) +
          (last.reason ? " (" + last.reason + ")" : ""),
      ]);
      items.push([
        "Score",
        "incumbent " + fmtNum(last.incumbent_score, 3) + ", winner " + fmtNum(last.winner_score, 3),
      ]);
    }
    const units = c.axis_units || {};
    for (const [path, value] of Object.entries(lastEffect))
      items.push(["In effect: " + path, fmtParam(value, units[path])]);
    // what the data cannot tell apart: the values within the noise threshold of the best (latest round)
    for (const [path, iv] of Object.entries(c.intervals || {}))
      items.push([
        "Within noise: " + path,
        fmtParam(iv.lo, units[path]) +
          " … " +
          fmtParam(iv.hi, units[path]) +
          (isNum(iv.physical) ? " (physical " + fmtParam(iv.physical, units[path]) + ")" : ""),
      ]);
    box.replaceChildren(
      el("dl", { class: "kv" }, ...items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    );

    const paths = [];
    for (const r of series) {
      for (const [path, v] of Object.entries(r.in_effect || {}))
        if (isNum(v) && !paths.includes(path)) paths.push(path);
    }
    if (!paths.length) {
      chart.hidden = true;
      chart.dataset.points = "0";
      return;
    }
    chart.hidden = false;
    drawChart(
      "chart-calibration",
      paths.map((path, i) => ({
        label: path,
        stroke: COLORS.extra[i % COLORS.extra.length],
        scale: "p" + i,
        unit: units[path] === "× physical" ? "× physical" : units[path] || "",
        // the leaf (and its unit): a whole path does not fit beside the chart
        axisLabel: path.split(".").pop() + (units[path] ? " (" + units[path] + ")" : ""),
      })),
      paths.map((path) =>
        series.filter((r) => isNum((r.in_effect || {})[path])).map((r) => [r.time_ms, r.in_effect[path]]),
      ),
      { height: 180, empty: "no calibration rounds yet" },
    );
  }

  /* ---------- optimizer ---------- */

  function renderOptimizer(resp) {
    const box = $("optimizer");
    const accept = $("optimizer-accept");
    if (resp.status === 404) {
      box.dataset.state = "disabled";
      accept.hidden = true;
      const why = resp.body && resp.body.error ? resp.body.error : "optimizer.enabled is false";
      box.replaceChildren(el("p", { class: "muted", text: "The optimizer is not running on this twin: " + why + "." }));
      return;
    }
    if (!resp.ok || !resp.body) {
      box.dataset.state = "error";
      accept.hidden = true;
      box.replaceChildren(el("p", { class: "error", text: errorText(resp) }));
      return;
    }
    const o = resp.body;
    box.dataset.state = "enabled";
    const counts = o.counts || {};
    const best = o.best || null;
    const diff = Array.isArray(o.diff_vs_current) ? o.diff_vs_current : [];
    const items = [
      ["Status", fmtValue(o.status) + " (" + fmtValue(o.strategy) + ", every " + fmtNum(o.every_windows, 0) + " windows)"],
      [
        "Rounds",
        fmtNum(o.cycle_count, 0) +
          " (" +
          Object.entries(counts)
            .filter(([, n]) => n)
            .map(([k, n]) => fmtNum(n, 0) + " " + k)
            .join(", ") +
          ")",
      ],
      ["SLOs", Object.entries(o.slo_targets || {}).map(([k, v]) => k + " " + fmtValue(v)).join(", ") || "—"],
      ["Kept proposal", best ? "round " + fmtValue(best.round) + ", score " + fmtNum(o.window_best_score, 3) : "none"],
    ];
    for (const c of diff)
      items.push([
        "Change: " + fmtValue(c.path),
        fmtValue(c.before) + " → " + fmtValue(c.after) + (c.conflict ? " (changed since the proposal)" : ""),
      ]);
    const plan = o.plan || null;
    if (plan) {
      items.push(["Plan", "round " + fmtValue(plan.round) + ", " + fmtValue(plan.status)]);
      const f = plan.forecast;
      if (f && f.error) items.push(["Plan forecast", "not available: " + f.error]);
      else if (f && f.energy_kwh)
        items.push([
          "Plan forecast",
          iso(f.start_ms) + " → " + iso(f.end_ms) + ": " + fmtNum(f.energy_kwh.plan, 3) + " kWh vs the twin's " +
            fmtNum(f.energy_kwh.twin, 3) + " kWh (" + fmtPct(f.energy_pct, true) + ")",
        ]);
    }
    box.replaceChildren(
      el("dl", { class: "kv" }, ...items.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])),
    );
    accept.hidden = !(best && diff.length);
  }

  async function acceptProposal() {
    const out = $("optimizer-result");
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    const token = $("whatif-token").value.trim();
    if (token) headers.Authorization = "Bearer " + token;
    out.hidden = false;
    try {
      const resp = await fetch("/api/optimizer/accept", { method: "POST", headers: headers, body: "{}" });
      let body = null;
      try {
        body = await resp.json();
      } catch (e) {
        body = null;
      }
      out.textContent = resp.ok && body
        ? body.plan
          ? "accepted as the plan (round " + fmtValue(body.round) + "): " + fmtValue(body.applies)
          : "accepted: topology version " + fmtValue(body.version) + ", " + fmtValue(body.applies)
        : "not accepted: " + errorText({ status: resp.status, body: body });
      out.dataset.status = String(resp.status);
    } catch (e) {
      out.textContent = "not accepted: request failed: " + e.message;
      out.dataset.status = "0";
    }
  }

  /* ---------- what-if ---------- */

  function addPatchRow(key, value) {
    const row = el(
      "div",
      { class: "patch-row" },
      el("input", {
        class: "patch-key",
        type: "text",
        list: "patch-keys",
        placeholder: "parameter, e.g. cpu.coreSpeed",
        "aria-label": "parameter path",
        value: key || "",
      }),
      el("input", {
        class: "patch-value",
        type: "text",
        placeholder: "value, e.g. 2800",
        "aria-label": "value",
        value: value || "",
      }),
      el("button", { type: "button", class: "patch-remove", title: "remove", text: "✕" }),
    );
    row.querySelector(".patch-remove").addEventListener("click", () => row.remove());
    $("patch-rows").append(row);
    return row;
  }

  /** A typed value: JSON when it parses (2800, 1.5, true, "x"), else the text itself (e.g. linear). */
  function parseValue(text) {
    try {
      return JSON.parse(text);
    } catch (e) {
      return text;
    }
  }

  function prefillWhatif() {
    const start = $("whatif-start");
    const end = $("whatif-end");
    if (view.whatifTouched || !view.simulatedRange || start.value || end.value) return;
    const [lo, hi] = view.simulatedRange;
    start.value = iso(Math.max(lo, hi - WHATIF_DEFAULT_RANGE_MS));
    end.value = iso(hi);
  }

  function clearWhatifError() {
    const box = $("whatif-error");
    box.hidden = true;
    box.textContent = "";
    delete box.dataset.status;
    delete box.dataset.field;
    for (const input of document.querySelectorAll("#whatif-form input.invalid"))
      input.classList.remove("invalid");
  }

  function markField(field) {
    if (!field) return;
    const byField = {
      start: "whatif-start",
      end: "whatif-end",
      Authorization: "whatif-token",
      token: "whatif-token",
    };
    if (byField[field]) {
      $(byField[field]).classList.add("invalid");
      return;
    }
    let marked = false;
    for (const row of document.querySelectorAll("#patch-rows .patch-row")) {
      const key = row.querySelector(".patch-key").value.trim();
      if (
        key &&
        (field === key ||
          field === "patch." + key ||
          field === "patch[" + key + "]" ||
          field.endsWith("." + key))
      ) {
        row.querySelector(".patch-key").classList.add("invalid");
        row.querySelector(".patch-value").classList.add("invalid");
        marked = true;
      }
    }
    if (!marked && field.startsWith("patch")) {
      for (const input of document.querySelectorAll("#patch-rows input")) input.classList.add("invalid");
    }
  }

  function showWhatifError(status, body, retryAfter) {
    const box = $("whatif-error");
    const message = body && body.error ? body.error : "no JSON error message";
    let text = (status ? "HTTP " + status + ": " : "") + message;
    if (body && body.field) text += " (field: " + body.field + ")";
    if (status === 404 && !(body && body.field))
      text += " — is the what-if endpoint available on this daemon?";
    if (status === 429) text += retryAfter ? " — retry after " + retryAfter + " s" : " — try again later";
    box.textContent = text;
    box.dataset.status = String(status);
    box.dataset.field = (body && body.field) || "";
    box.hidden = false;
    markField(body && body.field);
  }

  function collectPatch() {
    const patch = {};
    for (const row of document.querySelectorAll("#patch-rows .patch-row")) {
      const key = row.querySelector(".patch-key").value.trim();
      const raw = row.querySelector(".patch-value").value.trim();
      if (!key && !raw) continue;
      if (!key) return { error: "a value without a parameter path", field: "patch" };
      if (!raw)
        return { error: "no value for " + key + " (type one: the grey text is only an example)", field: key };
      if (Object.prototype.hasOwnProperty.call(patch, key))
        return { error: key + " given twice", field: key };
      patch[key] = parseValue(raw);
    }
    return { patch: patch };
  }

  async function submitWhatif(event) {
    event.preventDefault();
    clearWhatifError();
    const start = $("whatif-start").value.trim();
    const end = $("whatif-end").value.trim();
    if (!start) return showWhatifError(0, { error: "start is required", field: "start" });
    if (!end) return showWhatifError(0, { error: "end is required", field: "end" });
    const collected = collectPatch();
    if (collected.error) return showWhatifError(0, collected);
    const headers = { "Content-Type": "application/json", Accept: "application/json" };
    const token = $("whatif-token").value.trim();
    if (token) headers.Authorization = "Bearer " + token;
    const button = $("whatif-submit");
    button.disabled = true;
    $("whatif-busy").hidden = false;
    const form = $("whatif-form");
    form.dataset.state = "running";
    try {
      const resp = await fetch("/api/whatif", {
        method: "POST",
        headers: headers,
        body: JSON.stringify({ start: start, end: end, patch: collected.patch }),
      });
      let body = null;
      try {
        body = await resp.json();
      } catch (e) {
        body = null;
      }
      if (!resp.ok || !body) {
        form.dataset.state = "error";
        showWhatifError(resp.status, body, resp.headers.get("Retry-After"));
        return;
      }
      renderWhatif(body);
      form.dataset.state = "done";
    } catch (e) {
      form.dataset.state = "error";
      showWhatifError(0, { error: "request failed: " + e.message });
    } finally {
      button.disabled = false;
      $("whatif-busy").hidden = true;
    }
  }

  function renderWhatif(b) {
    const result = $("whatif-result");
    result.hidden = false; /* before drawing: the chart takes its width from the container */
    const totals = b.totals || {};
    const delta = b.delta || {};
    const cols = ["measured", "baseline", "whatif"];
    const rows = [
      ["energy_kwh", "energy (kWh)", "energy_pct", 3],
      ["carbon_kg", "carbon (kg CO2)", "carbon_pct", 3],
      ["peak_w", "peak power (W)", "peak_pct", 1],
      ["mean_w", "mean power (W)", null, 1],
    ];
    const ratio = (key) => {
      const w = (totals.whatif || {})[key];
      const base = (totals.baseline || {})[key];
      return isNum(w) && isNum(base) && base !== 0 ? (w / base - 1) * 100 : null;
    };
    const table = $("whatif-totals");
    table.replaceChildren(
      el(
        "thead",
        {},
        el(
          "tr",
          {},
          el("th", {
            text:
              b.start +
              " → " +
              b.end +
              " (step " +
              fmtNum(b.step_s, 0) +
              " s, " +
              fmtNum(b.elapsed_s, 2) +
              " s)",
          }),
          el("th", { text: "measured" }),
          el("th", { text: "baseline" }),
          el("th", { text: "what-if" }),
          el("th", { text: "Δ what-if vs baseline" }),
        ),
      ),
      el(
        "tbody",
        {},
        ...rows.map(([key, label, dkey, digits]) => {
          const d = dkey ? delta[dkey] : ratio(key);
          return el(
            "tr",
            { "data-key": key },
            el("td", { text: label }),
            ...cols.map((c) => el("td", { text: fmtNum((totals[c] || {})[key], digits) })),
            el("td", { class: isNum(d) ? (d > 0 ? "pos" : d < 0 ? "neg" : "") : "", text: fmtPct(d, true) }),
          );
        }),
      ),
    );
    const changes = Array.isArray(b.changes) ? b.changes : [];
    $("whatif-changes").replaceChildren(
      ...(changes.length
        ? [
            el("b", { text: "Changes: " }),
            changes.map((c) => c.path + ": " + fmtValue(c.before) + " → " + fmtValue(c.after)).join("; "),
          ]
        : []),
    );
    const s = b.series || {};
    drawChart(
      "chart-whatif",
      [
        { label: "measured", stroke: COLORS.measured, unit: "W" },
        { label: "baseline", stroke: COLORS.baseline, unit: "W", dash: [6, 4] },
        { label: "what-if", stroke: COLORS.whatif, unit: "W", width: 2 },
      ],
      [s.measured || [], s.baseline || [], s.whatif || []],
      { empty: "the what-if returned no points" },
    );
  }

  /* ---------- refresh loop ---------- */

  async function fetchRange(path, status) {
    const resp = await getJSON(path + rangeQuery(status, true));
    /* e.g. the trace time before the first data point: fall back to the default range */
    return resp.status === 400 ? getJSON(path + rangeQuery(status, false)) : resp;
  }

  async function tick() {
    try {
      const status = await getJSON("/api/status");
      if (!status.ok || !status.body) throw new Error("/api/status answered " + errorText(status));
      const [power, carbon, topology, calibration, optimizer] = await Promise.all([
        fetchRange("/api/power", status.body),
        fetchRange("/api/carbon", status.body),
        getJSON("/api/topology"),
        getJSON("/api/calibration"),
        getJSON("/api/optimizer?limit=1"),
      ]);
      const problems = [
        safely("status", () => renderStatus(status.body)),
        safely("power", () => renderPower(power)),
        safely("carbon", () => renderCarbon(carbon)),
        safely("topology", () => renderTopology(topology)),
        safely("calibration", () => renderCalibration(calibration)),
        safely("optimizer", () => renderOptimizer(optimizer)),
      ].filter((p) => p);
      setBanner(problems.length ? "Dashboard error — " + problems.join("; ") : null);
      view.ticks += 1;
      document.body.dataset.ticks = String(view.ticks);
      $("updated").textContent =
        "updated " + new Date().toISOString().slice(11, 19) + " UTC (every " + REFRESH_MS / 1000 + " s)";
    } catch (e) {
      const badge = $("status-badge");
      badge.textContent = "unreachable";
      badge.dataset.status = "unreachable";
      setBanner("The twin's API is unreachable or failing: " + e.message);
    } finally {
      window.setTimeout(tick, REFRESH_MS);
    }
  }

  function init() {
    if (typeof uPlot === "undefined") {
      setBanner("The chart library (static/vendor/uPlot.iife.min.js) did not load.");
      return;
    }
    addPatchRow("cpu.coreSpeed", "");
    fillPatchKeys([]);
    $("patch-add").addEventListener("click", () => addPatchRow("", "").querySelector(".patch-key").focus());
    $("whatif-form").addEventListener("submit", submitWhatif);
    $("optimizer-accept").addEventListener("click", acceptProposal);
    for (const id of ["whatif-start", "whatif-end"]) {
      $(id).addEventListener("input", () => {
        view.whatifTouched = true;
      });
    }
    tick();
  }

  /* for tests: render a given status or power answer (as a refresh would) */
  window.opendtDashboard = {
    renderStatus: renderStatus,
    renderPower: renderPower,
    renderCalibration: renderCalibration,
    renderOptimizer: renderOptimizer,
  };

  init();
})();

// The live chart of GET /chart: history from GET /candles, then the WebSocket feed with
// `since`, so no candle is missing between the two (docs: docs/protocol.md "The chart").
// What the chart holds is kept in `window.chartState` for people and for the browser test.
(() => {
  "use strict";
  const config = window.STREAMER_CHART;
  const $ = (id) => document.getElementById(id);
  const state = (window.chartState = {
    symbol: null, interval: null, status: "starting", reconnects: 0,
    loadMs: null, lastDelayMs: null, candles: {}, received: [], errors: [],
    bars: () => [],
  });

  function notice(text) {
    $("notice").textContent = text;
    $("notice").hidden = false;
    $("status").textContent = "";
  }

  function choose() {
    const params = new URLSearchParams(location.search);
    const pick = (name, options) => {
      const asked = params.get(name);
      return options.includes(asked) ? asked : options[0];
    };
    state.symbol = pick("symbol", config.symbols);
    state.interval = pick("interval", config.intervals.map((i) => i.label));
    for (const [id, options, chosen] of [
      ["symbol", config.symbols, state.symbol],
      ["interval", config.intervals.map((i) => i.label), state.interval],
    ]) {
      const select = $(id);
      for (const value of options) select.add(new Option(value, value, false, value === chosen));
      select.addEventListener("change", () => {
        params.set(id, select.value);
        location.search = params.toString(); // the URL holds the choice: shareable
      });
    }
  }

  const headers = {};
  if (config.auth) {
    const bytes = new TextEncoder().encode(config.auth);
    headers.Authorization = "Basic " + btoa(String.fromCharCode(...bytes));
  }

  let candleSeries, volumeSeries, markers;
  let newestTimestamp = null;
  const GAP = "#f6c343";
  // A candle whose trades may be incomplete (`gap: true`) is drawn in the gap colour.
  const bar = (c) => (c.gap
    ? { time: c.timestamp / 1000, open: c.open, high: c.high, low: c.low, close: c.close,
        color: GAP, wickColor: GAP, borderColor: GAP }
    : { time: c.timestamp / 1000, open: c.open, high: c.high, low: c.low, close: c.close });
  const volumeBar = (c) => ({ time: c.timestamp / 1000, value: c.volume,
                              color: c.close >= c.open ? "#26a69a80" : "#ef535080" });

  function draw() {
    const LC = window.LightweightCharts;
    const chart = LC.createChart($("chart"), {
      autoSize: true,
      layout: { background: { color: "#131722" }, textColor: "#d1d4dc" },
      grid: { vertLines: { color: "#1e222d" }, horzLines: { color: "#1e222d" } },
      timeScale: { timeVisible: true, secondsVisible: true },
    });
    candleSeries = chart.addSeries(LC.CandlestickSeries, {
      upColor: "#26a69a", downColor: "#ef5350", borderVisible: false,
      wickUpColor: "#26a69a", wickDownColor: "#ef5350",
    });
    volumeSeries = chart.addSeries(LC.HistogramSeries, {
      priceFormat: { type: "volume" }, priceScaleId: "",
    });
    volumeSeries.priceScale().applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    markers = LC.createSeriesMarkers(candleSeries, []);
    state.bars = () => candleSeries.data();
  }

  // One marker at the start of each run of gap candles.
  function mark() {
    const ordered = Object.values(state.candles).sort((a, b) => a.timestamp - b.timestamp);
    const starts = ordered.filter((c, i) => c.gap && !(i > 0 && ordered[i - 1].gap));
    markers.setMarkers(starts.map((c) => ({
      time: c.timestamp / 1000, position: "aboveBar", color: GAP, shape: "arrowDown", text: "gap",
    })));
  }

  function lastTimestamp() {
    let last = null;
    for (const c of Object.values(state.candles)) {
      if (c.closed && (last === null || c.timestamp > last)) last = c.timestamp;
    }
    return last;
  }

  // A candle for this series: new, a revision (replaces its bar), or in progress (moves the
  // last bar). A copy already shown (same or lower revision) changes nothing.
  function apply(c, live) {
    if (c.symbol !== state.symbol || c.interval_label !== state.interval) return false;
    const shown = state.candles[c.timestamp];
    if (shown && shown.closed && (!c.closed || c.revision <= shown.revision)) return false;
    const newest = newestTimestamp === null || c.timestamp >= newestTimestamp;
    if (newest) newestTimestamp = c.timestamp;
    state.candles[c.timestamp] = c;
    if (live) {
      if (newest || shown) {
        candleSeries.update(bar(c), !newest);
        volumeSeries.update(volumeBar(c), !newest);
      } else {
        // A bar between two drawn ones: its candle came after a later one (after a restart of
        // publish the in-progress candles follow the live tail while the closed ones catch
        // up). The library updates only the last bar or an existing one: draw all again.
        redraw();
      }
      if (c.gap || (shown && shown.gap)) mark();
      state.received.push({ timestamp: c.timestamp, revision: c.revision, closed: c.closed,
                            at: Date.now() });
      if (state.received.length > 5000) state.received.splice(0, 1000);
      // A revision is late by nature: the delay shown is that of new candles.
      if (c.closed && c.revision === 0) state.lastDelayMs = Date.now() - (c.timestamp + c.interval);
    }
    return true;
  }

  function status() {
    const delay = state.lastDelayMs === null ? "–" : `${state.lastDelayMs} ms`;
    $("status").innerHTML = "";
    const dot = document.createElement("span");
    dot.className = `state-${state.status}`;
    dot.textContent = `● ${state.status}`;
    $("status").append(dot, ` · last candle ${delay} after its end · reconnects ${state.reconnects}`);
  }

  async function history() {
    const params = new URLSearchParams({
      symbol: state.symbol, interval: state.interval, limit: String(config.history),
    });
    const response = await fetch(`/candles?${params}`, { headers });
    if (!response.ok) throw new Error(`GET /candles: HTTP ${response.status}`);
    const { candles } = await response.json();
    for (const c of candles) apply(c, false);
    const ordered = Object.values(state.candles).sort((a, b) => a.timestamp - b.timestamp);
    // The price axis shows as many decimals as the symbol's prices have (0.7494, not 0.75).
    const decimals = Math.min(8, Math.max(2, ...ordered.slice(-50).map((c) => {
      const text = String(c.close);
      return text.includes("e-") ? 8 : (text.split(".")[1] || "").length;
    })));
    candleSeries.applyOptions({
      priceFormat: { type: "price", precision: decimals, minMove: 10 ** -decimals },
    });
    redraw();
  }

  function redraw() {
    const ordered = Object.values(state.candles).sort((a, b) => a.timestamp - b.timestamp);
    candleSeries.setData(ordered.map(bar));
    volumeSeries.setData(ordered.map(volumeBar));
    mark();
  }

  let delay = 500;
  function connect() {
    const url = new URL("/", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.username = url.password = url.search = "";
    if (config.auth) url.searchParams.set("auth", config.auth);
    const ws = new WebSocket(url);
    ws.onopen = () => {
      const op = { op: "subscribe", args: [`${state.interval}.${state.symbol}`] };
      // From the newest candle held, back by the revision window: a candle that closed before
      // it may have been revised since the history was read (or while reconnecting); the copies
      // sent again with the same revision change nothing.
      const last = lastTimestamp();
      if (last !== null) op.since = Math.max(0, last - config.revisable_ms);
      else op.history = config.history;
      ws.send(JSON.stringify(op));
      state.status = "live";
      delay = 500;
      status();
    };
    ws.onmessage = (event) => {
      const message = JSON.parse(event.data);
      if (!Array.isArray(message)) {
        if (message.success === false) state.errors.push(message.ret_msg);
        return;
      }
      for (const c of message) apply(c, true);
      status();
    };
    ws.onclose = () => {
      state.status = "reconnecting";
      state.reconnects += 1;
      status();
      setTimeout(connect, delay); // resumes with `since`: nothing missed while away
      delay = Math.min(delay * 2, 10000);
    };
  }

  async function main() {
    if (!window.LightweightCharts) {
      state.status = "no-library";
      notice("The chart library (lightweight-charts) is not installed on this server. "
        + "Install it with `make install` (it needs npm), or `npm ci --prefix publish/static`, "
        + "then reload.");
      return;
    }
    if (!config.symbols.length || !config.intervals.length) {
      state.status = "no-series";
      notice("No candles yet: no series to show. Reload once the pipeline has written some.");
      return;
    }
    choose();
    draw();
    state.status = "loading";
    status();
    try {
      await history();
    } catch (error) {
      state.status = "error";
      state.errors.push(String(error));
      status();
    }
    requestAnimationFrame(() => {
      state.loadMs = Math.round(performance.now());
    });
    connect();
  }

  main();
})();

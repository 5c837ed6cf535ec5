// Live job page: the server rendered the backlog up to data-last-seq; the websocket resumes
// after it, so a reconnect neither skips nor repeats an event.
(function () {
  const cfg = document.getElementById("job-config");
  if (!cfg) return;
  const jobId = cfg.dataset.jobId;
  let lastSeq = parseInt(cfg.dataset.lastSeq || "0", 10);
  const log = document.getElementById("job-log");
  const wsState = document.getElementById("ws-state");
  const curves = JSON.parse(document.getElementById("loss-curve-data").textContent);
  const ENDED = ["completed", "failed", "cancelled", "paused"];
  let chart = null;
  const initial = document.getElementById("job-status");
  let finished = !!initial && ENDED.includes(initial.textContent.trim());

  function setState(s, text) { wsState.dataset.state = s; wsState.textContent = text; }

  function drawChart() {
    if (chart || !window.Chart) return;
    chart = new Chart(document.getElementById("loss-chart"), {
      type: "line",
      data: { datasets: [
        { label: "training loss", data: curves.train.map(p => ({ x: p.step, y: p.loss })), borderColor: "#4f7cff", tension: 0.2, pointRadius: 2 },
        { label: "validation loss", data: curves.eval.map(p => ({ x: p.step, y: p.eval_loss })), borderColor: "#e8833a",
          backgroundColor: "#e8833a", tension: 0.2, pointRadius: 4, hidden: false },
      ] },
      options: { animation: false, maintainAspectRatio: false, parsing: false,
                 scales: { x: { type: "linear", title: { display: true, text: "step" } }, y: { title: { display: true, text: "loss" } } } },
    });
  }

  function appendLog(e) {
    const line = document.createElement("span");
    line.className = e.level;
    line.dataset.seq = e.seq;
    const t = e.created_at ? new Date(e.created_at).toISOString().substring(11, 19) : "";
    line.textContent = `[${t}] ${e.message}\n`;
    log.appendChild(line);
    log.scrollTop = log.scrollHeight;
  }

  let statusSeq = 0;  // seq of the last status event shown

  function refreshSummary() {
    if (window.htmx) htmx.ajax("GET", cfg.dataset.summaryUrl, { target: "#job-summary", swap: "outerHTML" });
  }

  let lastHeard = Date.now();

  function plot(series, x, y) {
    drawChart();
    if (!chart) return;
    const data = chart.data.datasets[series].data;
    while (data.length && data[data.length - 1].x >= x) data.pop();  // resumed from a checkpoint
    data.push({ x: x, y: y });
    chart.update("none");
  }

  function setText(id, text) { const el = document.getElementById(id); if (el) el.textContent = text; }

  function handle(e) {
    lastHeard = Date.now();
    if (e.seq <= lastSeq) return;  // already shown
    lastSeq = e.seq;
    appendLog(e);
    if (e.type === "metric" && e.data.eval_loss !== undefined) {
      plot(1, e.data.step, e.data.eval_loss);
      setText("job-eval-loss", e.data.eval_loss.toFixed(4));
      setText("job-best-eval", e.data.best_eval_loss.toFixed(4));
    } else if (e.type === "metric") {
      const m = e.data;
      plot(0, m.step, m.loss);
      setText("job-lr", m.learning_rate.toExponential(2));
      if (m.seconds_per_step && m.total_steps) setText("job-eta", `${Math.round((m.total_steps - m.step) * m.seconds_per_step)} s`);
      const progress = document.getElementById("job-progress");
      if (progress && m.total_steps) progress.value = (100 * m.step) / m.total_steps;
      const steps = document.getElementById("job-steps");
      if (steps) steps.textContent = `${m.step}/${m.total_steps}`;
      const loss = document.getElementById("job-loss");
      if (loss) loss.textContent = m.loss.toFixed(4);
      const tps = document.getElementById("job-tps");
      if (tps) tps.textContent = Math.round(m.tokens_per_second);
    } else if (e.data && e.data.checkpoint_step !== undefined) {
      if (window.htmx) htmx.trigger(document.body, "nexus:checkpoint");  // the checkpoints table reloads itself
      refreshSummary();
    } else if (e.type === "status") {
      statusSeq = e.seq;
      refreshSummary();
      if (ENDED.includes(e.data.status)) {
        finished = true;
        if (live) live.close();
        setState("closed", "finished");
      }
    }
  }

  let live = null;
  function connect() {
    live = window.nexusLive("training", jobId, {
      after: lastSeq,
      onEvent: handle,
      onState(state, text, ws) {
        if (state === "live") {
          window.nexusJobSocket = ws;  // lets a test (or the console) drop the connection to check resuming
          window.nexusConnects = (window.nexusConnects || 0) + 1;
          setState("live", "live");
        } else if (!finished) {
          setState("reconnecting", text);
        }
      },
    });
  }

  // A push the channel layer dropped is filled in by the server when the next event arrives; if
  // nothing arrives for a while (e.g. the final status was lost), ask the events API directly.
  setInterval(() => {
    if (finished || Date.now() - lastHeard < 15000) return;
    lastHeard = Date.now();
    fetch(`/api/v1/finetune/jobs/${jobId}/events?after=${lastSeq}`, { credentials: "same-origin" })
      .then(r => r.ok ? r.json() : { results: [] })
      .then(body => body.results.forEach(handle))
      .catch(() => {});
  }, 5000);

  // Resume on a paused job (or any control) swaps the summary in: follow the job again if it is live.
  document.body.addEventListener("htmx:afterSwap", () => {
    const summary = document.getElementById("job-summary");
    if (summary && parseInt(summary.dataset.seq || "0", 10) < statusSeq) {
      refreshSummary();  // rendered before a status change this page has already seen: ask again
      return;
    }
    const status = document.getElementById("job-status");
    if (finished && status && !ENDED.includes(status.textContent.trim())) {
      finished = false;
      connect();
    }
  });

  window.addEventListener("load", () => {
    drawChart();
    if (finished) setState("closed", "finished"); else connect();
  });
})();

// Live job page: the server rendered the backlog up to data-last-seq; the websocket resumes
// after it, so a reconnect neither skips nor repeats an event.
(function () {
  const cfg = document.getElementById("job-config");
  if (!cfg) return;
  const jobId = cfg.dataset.jobId;
  let lastSeq = parseInt(cfg.dataset.lastSeq || "0", 10);
  const log = document.getElementById("job-log");
  const wsState = document.getElementById("ws-state");
  const points = JSON.parse(document.getElementById("loss-curve-data").textContent);
  let chart = null;
  const initial = document.getElementById("job-status");
  let finished = !!initial && ["completed", "failed", "cancelled", "paused"].includes(initial.textContent.trim());

  function setState(s, text) { wsState.dataset.state = s; wsState.textContent = text; }

  function drawChart() {
    if (chart || !window.Chart) return;
    chart = new Chart(document.getElementById("loss-chart"), {
      type: "line",
      data: { datasets: [
        { label: "training loss", data: points.map(p => ({ x: p.step, y: p.loss })), borderColor: "#4f7cff", tension: 0.2, pointRadius: 2 },
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

  function refreshSummary() {
    if (window.htmx) htmx.ajax("GET", cfg.dataset.summaryUrl, { target: "#job-summary", swap: "outerHTML" });
  }

  let lastHeard = Date.now();

  function handle(e) {
    lastHeard = Date.now();
    if (e.seq <= lastSeq) return;  // already shown
    lastSeq = e.seq;
    appendLog(e);
    if (e.type === "metric") {
      const m = e.data;
      drawChart();
      if (chart) {
        const data = chart.data.datasets[0].data;
        while (data.length && data[data.length - 1].x >= m.step) data.pop();  // resumed from a checkpoint
        data.push({ x: m.step, y: m.loss });
        chart.update("none");
      }
      const progress = document.getElementById("job-progress");
      if (progress && m.total_steps) progress.value = (100 * m.step) / m.total_steps;
      const steps = document.getElementById("job-steps");
      if (steps) steps.textContent = `${m.step}/${m.total_steps}`;
      const loss = document.getElementById("job-loss");
      if (loss) loss.textContent = m.loss.toFixed(4);
      const tps = document.getElementById("job-tps");
      if (tps) tps.textContent = Math.round(m.tokens_per_second);
    } else if (e.type === "status") {
      refreshSummary();
      if (["completed", "failed", "cancelled", "paused"].includes(e.data.status)) {
        finished = true;
        if (window.nexusJobSocket) window.nexusJobSocket.close();
      }
    }
  }

  function connect(delay) {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${proto}://${location.host}/ws/finetune/training/${jobId}/?after=${lastSeq}`);
    window.nexusJobSocket = ws;  // lets a test (or the console) drop the connection to check resuming
    ws.onopen = () => { delay = 500; window.nexusConnects = (window.nexusConnects || 0) + 1; setState("live", "live"); };
    ws.onmessage = (msg) => handle(JSON.parse(msg.data));
    ws.onclose = () => {
      if (finished) { setState("closed", "finished"); return; }
      setState("reconnecting", "reconnecting…");
      setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
    };
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

  window.addEventListener("load", () => {
    drawChart();
    if (finished) setState("closed", "finished"); else connect(500);
  });
})();

// Evaluation pages (see also the benchmark parts at the end). A session page whose run is queued or running follows it over
// ws/finetune/comparison/<id>/ (live.js): progress moves the bar, each comparison the run finishes
// reloads its own block (htmx), a status event reloads the status. The rating flow takes keyboard
// shortcuts: 1 = A is better, 2 = tie, 3 = B is better, Enter submits (Ctrl+Enter in the reason box).
(function () {
  const ENDED = ["completed", "failed", "cancelled"];

  function followSession() {
    const el = document.getElementById("session-live");
    if (!el || !el.dataset.active || !window.nexusLive) return;
    const state = document.getElementById("ws-state");
    function setState(name, text) {
      if (!state) return;
      state.dataset.state = name;
      state.textContent = text;
    }
    function set(id, value) {
      const node = document.getElementById(id);
      if (node) node.textContent = value;
    }
    window.nexusSessionEvents = [];  // every event applied, in order (tests read it)
    setState("connecting", "connecting…");
    const live = window.nexusLive("comparison", el.dataset.sessionId, {
      after: Number(el.dataset.lastSeq || 0),
      onEvent(e) {
        window.nexusSessionEvents.push(e.seq);
        const data = e.data || {};
        if (typeof data.progress === "number") {
          const percent = Math.round(100 * data.progress);
          const bar = document.getElementById("session-progress");
          if (bar) bar.value = percent;
          set("session-percent", `${percent}%`);
          if (typeof data.done === "number") set("session-done", data.done);
          if (e.message) set("session-stage", e.message);
        }
        const block = data.comparison_id && document.getElementById(`comparison-${data.comparison_id}`);
        // only a block still waiting: a finished one may hold a rating being typed
        if (block && block.dataset.status === "pending" && window.htmx) {
          htmx.ajax("GET", block.dataset.url, { target: `#${block.id}`, swap: "outerHTML" });
        }
        if (e.type === "status") {
          const status = document.getElementById("session-status");
          if (status && window.htmx) htmx.ajax("GET", status.dataset.url, { target: "#session-status", swap: "outerHTML" });
          if (ENDED.includes(data.status)) {
            live.close();
            setState("closed", "");
          }
        }
      },
      onState(name, text) { setState(name, name === "live" ? "live" : text); },
    });
  }

  function ratingKeys(e) {
    const flow = document.getElementById("rate-flow");
    const form = flow && flow.querySelector("form[data-rating-form]");
    if (!form) return;
    const target = e.target;
    const typing = target && (target.tagName === "TEXTAREA" || (target.tagName === "INPUT" && target.type === "text"));
    if (e.key === "Enter") {
      if ((typing && !(e.ctrlKey || e.metaKey)) || (target && target.tagName === "BUTTON")) return;
      e.preventDefault();
      form.requestSubmit();
      return;
    }
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    const value = { 1: "A", 2: "tie", 3: "B" }[e.key];
    const radio = value && form.querySelector(`input[name=preferred][value="${value}"]`);
    if (radio) {
      radio.checked = true;
      e.preventDefault();
    }
  }

  // A running benchmark job (its region follows ws/finetune/benchmark/<id>/ through live.js): the
  // stage names the benchmark being run; a benchmark that finishes (an event naming its result)
  // reloads the results below the bar.
  function benchmarkEvent(ev) {
    const e = ev.detail || {};
    const data = e.data || {};
    if (ev.target.id !== "benchmark-body") return;
    const current = document.getElementById("benchmark-current");
    if (current && data.benchmark && e.message) current.textContent = e.message;
    const results = document.getElementById("benchmark-results");
    if (results && data.result && window.htmx) {
      htmx.ajax("GET", results.dataset.url, { target: "#benchmark-results", swap: "outerHTML" });
    }
  }

  // The benchmark runner's estimate: seconds per item per model measured here x the items asked
  // for x the models (2 with an adapter: base and base + adapter), over the ticked suites.
  function duration(seconds) {
    if (seconds < 90) return `about ${Math.max(1, Math.round(seconds))} s`;
    if (seconds < 90 * 60) return `about ${Math.round(seconds / 60)} min`;
    return `about ${(seconds / 3600).toFixed(1)} h`;
  }

  function runnerEstimate() {
    const form = document.getElementById("benchmark-form");
    if (!form) return;
    const adapter = form.querySelector("select[name=adapter]");
    const models = adapter && adapter.value ? 2 : 1;
    let total = 0, measured = 0, unmeasured = [];
    form.querySelectorAll("tr.suite").forEach((row) => {
      const box = row.querySelector("input[name=suite]");
      const samples = row.querySelector("input.samples");
      const cell = row.querySelector(".suite-estimate");
      const per = parseFloat(row.dataset.perItem);
      const typed = parseInt(samples && samples.value, 10);
      const items = typed > 0 ? typed : parseInt(row.dataset.size, 10) || 0;
      if (Number.isNaN(per)) {
        cell.textContent = "no run measured here yet";
        if (box && box.checked) unmeasured.push(row.querySelector(".suite-label").textContent.trim());
        return;
      }
      const seconds = per * items * models;
      cell.textContent = `${duration(seconds)} (${items} items × ${models} model${models > 1 ? "s" : ""})`;
      if (box && box.checked) { total += seconds; measured += 1; }
    });
    const out = document.getElementById("benchmark-estimate");
    if (!measured && !unmeasured.length) {
      out.textContent = "Tick benchmarks to see how long they should take.";
      return;
    }
    let text = measured ? `Estimated: ${duration(total)} of model time for ${measured} benchmark${measured > 1 ? "s" : ""}` : "";
    if (unmeasured.length) text += `${text ? "; " : ""}${unmeasured.join(", ")}: no run measured here yet`;
    out.textContent = `${text}.`;
  }

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("benchmark-form");
    if (!form) return;
    form.addEventListener("input", runnerEstimate);
    form.addEventListener("change", runnerEstimate);
    runnerEstimate();
  });
  document.addEventListener("nexus:live-event", benchmarkEvent);
  document.addEventListener("DOMContentLoaded", followSession);
  document.addEventListener("keydown", ratingKeys);
})();

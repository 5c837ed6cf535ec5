// Evaluation pages. A session page whose run is queued or running follows it over
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

  document.addEventListener("DOMContentLoaded", followSession);
  document.addEventListener("keydown", ratingKeys);
})();

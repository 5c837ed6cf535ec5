// One live channel per job row, the same for every kind: ws/finetune/<kind>/<id>/?after=<seq>
// replays the events after `seq` from the database, then streams new ones in order. A reconnect
// resumes after the last event applied, so nothing is skipped or repeated. Code 4503 means the
// server's message broker is unreachable: its reason is shown and the page keeps trying.
(function () {
  window.nexusLive = function (kind, id, { onEvent, onState, after = 0 } = {}) {
    let lastSeq = after;
    let ws = null;
    let closed = false;
    function connect(delay) {
      if (closed) return;
      const proto = location.protocol === "https:" ? "wss" : "ws";
      ws = new WebSocket(`${proto}://${location.host}/ws/finetune/${kind}/${id}/?after=${lastSeq}`);
      ws.onopen = () => { delay = 1000; if (onState) onState("live", "", ws); };
      ws.onmessage = (msg) => {
        const e = JSON.parse(msg.data);
        if (e.seq <= lastSeq) return;
        lastSeq = e.seq;
        if (onEvent) onEvent(e);
      };
      ws.onclose = (e) => {
        if (closed) return;
        if (onState) onState("reconnecting", e.code === 4503 && e.reason ? e.reason : "reconnecting…");
        setTimeout(() => connect(Math.min(delay * 2, 10000)), delay);
      };
    }
    connect(1000);
    return { close() { closed = true; if (ws) ws.close(); }, lastSeq: () => lastSeq, socket: () => ws };
  };

  // Pages mark a live region: <div data-live-kind="dataset" data-live-id="7" data-live-url="...">.
  // Each event with progress moves its bar; a status event reloads the region (a GET of its URL);
  // every event is also dispatched on the region as a "nexus:live-event" DOM event.
  const followed = {};
  function followRegions() {
    document.querySelectorAll("[data-live-kind]").forEach((el) => {
      const key = `${el.dataset.liveKind}-${el.dataset.liveId}`;
      if (followed[key] || el.dataset.liveActive !== "1") return;
      followed[key] = window.nexusLive(el.dataset.liveKind, el.dataset.liveId, {
        onEvent(e) {
          const region = document.getElementById(el.id);
          if (!region) return;
          if (e.data && typeof e.data.progress === "number") {
            const bar = region.querySelector("[data-live-progress]");
            const percent = e.data.progress <= 1 && el.dataset.liveKind !== "dataset" ? 100 * e.data.progress : e.data.progress;
            if (bar) bar.value = percent;
            const label = region.querySelector("[data-live-percent]");
            if (label) label.textContent = `${Math.round(percent)}%`;
            const stage = region.querySelector("[data-live-stage]");
            if (stage && e.data.stage) stage.textContent = e.data.stage;
          }
          if (e.type === "status" && window.htmx) {
            htmx.ajax("GET", region.dataset.liveUrl, { target: `#${region.id}`, swap: "outerHTML" });
          }
          (window.nexusLiveEvents = window.nexusLiveEvents || []).push(e);  // tests read it
          // a page may do more with its events (evaluation.js: a finished benchmark reloads the results)
          region.dispatchEvent(new CustomEvent("nexus:live-event", { detail: e, bubbles: true }));
        },
        onState(state, text) {
          const region = document.getElementById(el.id);
          const note = region && region.querySelector("[data-live-state]");
          if (note) note.textContent = state === "live" ? "" : text;
        },
      });
    });
    // a region swapped out for one that is no longer active stops following
    Object.keys(followed).forEach((key) => {
      const [kind, id] = key.split("-");
      const el = document.querySelector(`[data-live-kind="${kind}"][data-live-id="${id}"]`);
      if (!el || el.dataset.liveActive !== "1") { followed[key].close(); delete followed[key]; }
    });
  }
  document.addEventListener("DOMContentLoaded", followRegions);
  document.addEventListener("htmx:afterSwap", followRegions);
})();

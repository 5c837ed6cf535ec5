// Adapter page: the export dialog, and live progress for every export still in progress. Each
// active row follows ws/finetune/export/<id>/ (backlog from the database, then live events); when
// a status event says the export ended, the exports table reloads itself through htmx.
(function () {
  const ENDED = ["completed", "failed"];
  const sockets = {};  // export id -> its live channel (nexusLive)
  const lastSeq = {};  // export id -> last event seq applied (a reconnect resumes after it)
  let lastHeard = Date.now();
  window.nexusExportProgress = [];  // every progress value shown, in order (tests read it)

  function reloadTable() {
    const table = document.getElementById("exports");
    if (table && window.htmx) htmx.ajax("GET", table.dataset.url, { target: "#exports", swap: "outerHTML" });
  }

  function show(id, e) {
    const row = document.getElementById(`export-${id}`);
    if (!row) return;
    if (e.data && e.data.progress !== undefined) {
      const bar = row.querySelector(".export-progress");
      if (bar) bar.value = e.data.progress;
      const percent = row.querySelector(".export-percent");
      if (percent) percent.textContent = `${Math.round(100 * e.data.progress)}%`;
      const stage = row.querySelector(".export-stage");
      if (stage) stage.textContent = e.data.stage || "";
      window.nexusExportProgress.push(e.data.progress);
    }
    if (e.type === "status" && e.data && e.data.status) {
      row.dataset.status = e.data.status;
      const badge = row.querySelector(".export-status");
      if (badge) { badge.textContent = e.data.status; badge.className = `badge ${e.data.status} export-status`; }
    }
  }

  function follow(id) {
    if (sockets[id]) return;
    sockets[id] = window.nexusLive("export", id, {
      after: lastSeq[id] || 0,
      onEvent(e) {
        lastHeard = Date.now();
        if (e.seq <= (lastSeq[id] || 0)) return;
        lastSeq[id] = e.seq;
        show(id, e);
        if (e.type === "status" && ENDED.includes(e.data.status)) {
          sockets[id].close();
          delete sockets[id];
          reloadTable();
        }
      },
      onState(state, text) {  // e.g. the server's message broker is unreachable: say so, it keeps trying
        const stage = document.querySelector(`#export-${id} .export-stage`);
        if (state !== "live" && stage && text) stage.textContent = text;
      },
    });
  }

  function followActive() {
    document.querySelectorAll("#exports tr[data-active]").forEach((row) => follow(row.dataset.exportId));
  }

  // A final status lost between the worker and this page: after a quiet spell, ask the server.
  setInterval(() => {
    if (!document.querySelector("#exports tr[data-active]") || Date.now() - lastHeard < 20000) return;
    lastHeard = Date.now();
    reloadTable();
  }, 5000);

  // The dialog: a modal with JavaScript; without it the link reloads the page with the dialog open.
  const dialog = document.getElementById("export-dialog");
  function syncQuantization() {
    const form = document.getElementById("export-form");
    if (!form) return;
    const kind = form.querySelector("input[name=kind]:checked");
    const select = form.querySelector("select[name=quantization]");
    if (select) select.disabled = !kind || kind.value !== "model_gguf";
  }
  if (dialog) {
    document.querySelectorAll("[data-dialog=export-dialog]").forEach((link) => link.addEventListener("click", (ev) => {
      ev.preventDefault();
      if (dialog.open) dialog.close();  // opened inline by ?export=1: reopen as a modal
      const error = document.getElementById("export-error");
      if (error) error.remove();
      dialog.showModal();
    }));
    dialog.addEventListener("click", (ev) => {
      if (ev.target.closest("[data-close-dialog]")) { ev.preventDefault(); dialog.close(); }
    });
    dialog.addEventListener("change", syncQuantization);
    // the server says the export was queued (its row is in the swapped-in table)
    document.body.addEventListener("nexus:export-created", () => dialog.close());
  }

  document.body.addEventListener("htmx:afterSwap", () => { followActive(); syncQuantization(); });
  syncQuantization();
  followActive();
})();

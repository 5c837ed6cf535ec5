// Distillation pages. The new-job form: one prompt source shown at a time, a saved connection
// hides the typed-teacher fields, "Start from" fills the template editor (its preview and the cost
// estimate are htmx partials). The job page: counts, bars and the log follow the job over its
// websocket (live.js) from the metric events; a status event reloads the status and the review table.
(function () {
  function setup_form() {
    const form = document.getElementById("distill-form");
    if (!form || form.dataset.ready) return;
    form.dataset.ready = "1";
    form.classList.add("js");

    const panels = [...form.querySelectorAll(".source-panel")];
    function showSource() {
      const checked = form.querySelector("input[name=source]:checked");
      const value = checked ? checked.value : "prompts";
      panels.forEach((p) => { p.hidden = p.dataset.source !== value; });
    }
    form.querySelectorAll("input[name=source]").forEach((r) => r.addEventListener("change", showSource));
    showSource();

    // a teacher block shows what its choice needs: nothing more for a saved connection, the
    // deployment for a deployed model, else model, address and key
    function field(name) { return form.elements[name]; }
    function show(name, on) {
      const el = field(name);
      const label = el && el.closest("label");
      if (label) label.hidden = !on;
    }
    function showBlock(block) {
      const p = block.dataset.prefix;
      const saved = field(`${p}connection`) ? !!field(`${p}connection`).value : false;
      const deployed = field(`${p}provider`).value === "deployed";
      show(`${p}provider`, !saved);
      show(`${p}deployment`, !saved && deployed);
      ["model", "base_url", "api_key"].forEach((n) => show(`${p}${n}`, !saved && !deployed));
    }
    const blocks = [...form.querySelectorAll(".teacher-block")];
    blocks.forEach((block) => {
      block.querySelectorAll("select").forEach((s) => s.addEventListener("change", () => { showBlock(block); showQuality(); }));
      showBlock(block);
    });

    // teachers 2-4: hidden until "Add another teacher"; "remove" empties and hides one
    const extra = blocks.filter((b) => Number(b.dataset.block) > 1);
    extra.forEach((b) => { if (b.dataset.empty) b.hidden = true; });
    const add = document.getElementById("add-teacher");
    function teachers() { return 1 + extra.filter((b) => !b.hidden).length; }
    function changed() { form.dispatchEvent(new Event("change", { bubbles: true })); }
    add.hidden = false;
    add.addEventListener("click", () => {
      const next = extra.find((b) => b.hidden);
      if (next) { next.hidden = false; showBlock(next); }
      showQuality();
      changed();
    });
    form.querySelectorAll(".remove-teacher").forEach((button) => button.addEventListener("click", () => {
      const block = button.closest(".teacher-block");
      block.querySelectorAll("input, select").forEach((el) => {
        if (el.tagName === "SELECT") el.selectedIndex = 0; else el.value = "";
      });
      block.hidden = true;
      showBlock(block);
      showQuality();
      changed();
    }));

    // the multi-teacher choice with 2+ teachers; the judge when something needs one; the pivot
    // language for back_translate
    const multi = document.getElementById("multi-teacher");
    const judgeRow = field("judge").closest("label");
    const judgeBlock = document.getElementById("judge-block");
    function showQuality() {
      const n = teachers();
      multi.hidden = n < 2;
      add.hidden = n >= extra.length + 1;
      const best = (form.querySelector("input[name=multi_teacher]:checked") || {}).value !== "round_robin";
      const needed = parseFloat(field("quality_threshold").value || "0") > 0 || (n > 1 && best);
      judgeRow.hidden = !needed;
      judgeBlock.hidden = !needed || field("judge").value !== "typed";
      showBlock(judgeBlock);
      const mode = form.querySelector("input[name=mode]:checked");
      document.getElementById("pivot-language").hidden = !mode || mode.value !== "back_translate";
    }
    form.addEventListener("input", showQuality);
    form.addEventListener("change", showQuality);
    showQuality();

    const templates = JSON.parse(document.getElementById("distill-templates").textContent);
    const select = form.elements.template;
    const description = document.getElementById("template-description");
    select.addEventListener("change", () => {
      const t = templates.find((x) => String(x.id) === select.value);
      form.elements.template_prompt.value = t ? t.prompt : "";
      form.elements.template_variables.value = t ? t.variables : "";
      form.elements.template_system_prompt.value = t ? t.system_prompt : "";
      description.textContent = t ? t.description : "";
      if (window.htmx) htmx.trigger(document.body, "nexus:template-loaded");
    });
  }

  function setup_job() {
    const cfg = document.getElementById("distill-config-data");
    if (!cfg) return;
    const jobId = cfg.dataset.jobId;
    let lastSeq = parseInt(cfg.dataset.lastSeq || "0", 10);
    const log = document.getElementById("distill-log");
    const wsState = document.getElementById("ws-state");
    const ENDED = ["completed", "failed", "cancelled"];
    const labels = JSON.parse(document.getElementById("distill-reason-labels").textContent);
    let finished = ENDED.includes(document.getElementById("distill-status").dataset.status);
    let statusSeq = 0;
    let lastHeard = Date.now();
    let live = null;
    window.nexusDistillMetrics = 0;  // tests read how many live counts were applied

    function setState(s, text) { wsState.dataset.state = s; wsState.textContent = text; }

    function setCount(region, name, value) {
      region.querySelectorAll(`[data-count="${name}"]`).forEach((el) => { el.textContent = value; });
    }

    function el(tag, attrs, text) {
      const node = document.createElement(tag);
      Object.entries(attrs || {}).forEach(([k, v]) => node.setAttribute(k, v));
      if (text !== undefined) node.textContent = text;
      return node;
    }

    function money(x) { return `$${Number(x).toFixed(4)}`; }

    function apply(c) {
      const region = document.getElementById("distill-status");
      if (!region || typeof c.accepted !== "number") return;
      const total = c.num_items + (c.prompts_to_generate || 0);
      const decided = c.accepted + c.rejected;
      const percent = total ? (100 * decided) / total : 0;
      const bar = document.getElementById("distill-progress");
      if (bar) bar.value = percent;
      const label = document.getElementById("distill-percent");
      if (label) label.textContent = `${Math.round(percent)}%`;
      const values = { decided, total, pending: Math.max(0, total - decided), generated: c.generated,
        accepted: c.accepted, rejected: c.rejected, requests: c.requests, tokens_in: c.tokens_in,
        tokens_out: c.tokens_out, cost_usd: money(c.cost_usd) };
      Object.entries(values).forEach(([k, v]) => setCount(region, k, v));
      ["accepted", "rejected"].forEach((k) => {
        const seg = region.querySelector(`[data-split="${k}"]`);
        if (seg) seg.style.width = `${total ? (100 * c[k]) / total : 0}%`;
      });

      const reasons = document.getElementById("distill-reasons");
      const entries = Object.entries(c.rejected_by_reason || {}).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
      const most = Math.max(1, ...entries.map((e) => e[1]));
      reasons.replaceChildren();
      entries.forEach(([key, n]) => {
        const row = el("a", { class: "reason-row", "data-reason": key,
          href: `${cfg.dataset.statusUrl}?status=rejected&reason=${key}#review`,
          "hx-get": `${cfg.dataset.itemsUrl}?status=rejected&reason=${key}`, "hx-target": "#distill-items", "hx-swap": "outerHTML" });
        row.append(el("span", { class: "reason-label" }, labels[key] || key));
        const track = el("span", { class: "reason-bar" });
        track.append(el("span", { style: `width:${(100 * n) / most}%` }));
        row.append(track, el("span", { class: "reason-count" }, n));
        reasons.append(row);
      });
      if (!entries.length) reasons.append(el("span", { class: "muted" }, "none"));
      if (window.htmx) htmx.process(reasons);

      const body = document.querySelector("#distill-teachers tbody");
      if (body && c.teachers) {
        body.replaceChildren(...c.teachers.map((t) => {
          const tr = el("tr");
          const name = el("td", {}, t.teacher);
          if (t.role === "judge") name.append(" ", el("span", { class: "muted" }, "judge"));
          tr.append(name, el("td", {}, t.requests), el("td", {}, t.tokens_in), el("td", {}, t.tokens_out), el("td", {}, money(t.cost_usd)));
          return tr;
        }));
      }
      window.nexusDistillMetrics += 1;
    }

    function appendLog(e) {
      if (!e.message) return;
      const line = el("span", { class: e.level, "data-seq": e.seq });
      const t = e.created_at ? new Date(e.created_at).toISOString().substring(11, 19) : "";
      line.textContent = `[${t}] ${e.message}\n`;
      log.appendChild(line);
      log.scrollTop = log.scrollHeight;
    }

    let itemsAt = Date.now();
    function refreshItems() {
      const items = document.getElementById("distill-items");
      if (!items || !window.htmx) return;
      itemsAt = Date.now();
      htmx.ajax("GET", items.dataset.url, { target: "#distill-items", swap: "outerHTML" });
    }

    function refresh() {
      if (!window.htmx) return;
      htmx.ajax("GET", cfg.dataset.statusUrl, { target: "#distill-status", swap: "outerHTML" });
      refreshItems();
    }

    // while answers come in, the review table follows every few seconds (not under the pointer)
    function maybeRefreshItems() {
      const items = document.getElementById("distill-items");
      if (items && Date.now() - itemsAt > 5000 && !items.matches(":hover")) refreshItems();
    }

    function handle(e) {
      lastHeard = Date.now();
      if (e.seq <= lastSeq) return;
      lastSeq = e.seq;
      if (e.type !== "metric") appendLog(e);
      if (e.data && typeof e.data.accepted === "number") apply(e.data);
      if (e.type === "metric") maybeRefreshItems();
      if (e.type === "status") {
        statusSeq = e.seq;
        refresh();
        if (ENDED.includes(e.data.status)) finish();
      }
    }

    function connect() {
      live = window.nexusLive("distillation", jobId, {
        after: lastSeq,
        onEvent: handle,
        onState(state, text, ws) {
          if (state === "live") { window.nexusJobSocket = ws; setState("live", "live"); }
          else if (!finished) setState("reconnecting", text);
        },
      });
    }

    // a push the channel layer dropped: ask the events API when nothing came for a while
    setInterval(() => {
      if (finished || Date.now() - lastHeard < 15000) return;
      lastHeard = Date.now();
      fetch(`/api/v1/finetune/distillation/jobs/${jobId}/events?after=${lastSeq}`, { credentials: "same-origin" })
        .then((r) => (r.ok ? r.json() : { results: [] }))
        .then((body) => body.results.forEach(handle))
        .catch(() => {});
    }, 5000);

    function finish() {
      finished = true;
      if (live) live.close();
      setState("closed", "finished");
    }

    // a status partial rendered before a status change this page has seen is stale: ask again;
    // a fresh one that says the job ended ends the following
    document.body.addEventListener("htmx:afterSwap", () => {
      const region = document.getElementById("distill-status");
      if (!region) return;
      if (parseInt(region.dataset.seq || "0", 10) < statusSeq) {
        htmx.ajax("GET", cfg.dataset.statusUrl, { target: "#distill-status", swap: "outerHTML" });
      } else if (!finished && ENDED.includes(region.dataset.status)) {
        finish();
      }
    });

    if (finished) setState("closed", "finished"); else connect();
  }

  function init() { setup_form(); setup_job(); }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();

// The new-job wizard. Without JavaScript the form is one long page; with it, one step shows at a
// time with Back/Next and the step indicator, a preset fills the LoRA and training fields, and
// choosing a dataset preselects its "val" split as validation data.
(function () {
  function init() {
    const form = document.querySelector("form[data-wizard]");
    if (!form || form.dataset.wizardReady) return;
    form.dataset.wizardReady = "1";
    const steps = [...form.querySelectorAll("fieldset.wizard-step")];
    const items = [...form.querySelectorAll(".wizard-steps li")];
    const nav = form.querySelector(".wizard-nav");
    const back = nav.querySelector("[data-wizard-back]");
    const next = nav.querySelector("[data-wizard-next]");
    const aside = form.querySelector(".wizard-aside");
    let current = 1;

    function show(n) {
      current = Math.min(Math.max(n, 1), steps.length);
      steps.forEach((s) => { s.hidden = Number(s.dataset.step) !== current; });
      items.forEach((li) => {
        const step = Number(li.dataset.step);
        li.classList.toggle("current", step === current);
        li.classList.toggle("done", step < current);
        if (step === current) li.setAttribute("aria-current", "step"); else li.removeAttribute("aria-current");
      });
      back.hidden = current === 1;
      next.hidden = current === steps.length;
      if (aside) aside.hidden = !aside.dataset.steps.split(" ").includes(String(current));
      form.classList.toggle("with-aside", aside && !aside.hidden);
      form.dataset.currentStep = current;
      if (window.htmx) steps[current - 1].querySelectorAll("[data-refresh-on-show]").forEach((el) => htmx.trigger(el, "refresh"));
    }

    // the browser's own checks (required, numbers), step by step up to the one asked for
    function go(n) {
      for (let s = current; s < n; s++) {
        const bad = [...steps[s - 1].querySelectorAll("input, select, textarea")].find((el) => el.willValidate && !el.validity.valid);
        if (bad) { show(s); bad.reportValidity(); return; }
      }
      show(n);
      window.scrollTo({ top: 0 });
    }

    back.addEventListener("click", () => go(current - 1));
    next.addEventListener("click", () => go(current + 1));
    form.addEventListener("click", (e) => {
      const link = e.target.closest("[data-goto-step]");
      if (!link) return;
      e.preventDefault();
      go(Number(link.dataset.gotoStep));
    });
    // Enter in a field moves on instead of submitting from the middle of the wizard
    form.addEventListener("keydown", (e) => {
      if (e.key !== "Enter" || e.target.tagName !== "INPUT" || current === steps.length) return;
      e.preventDefault();
      go(current + 1);
    });
    // a submit that the browser stops shows the step holding the first bad field
    form.addEventListener("invalid", (e) => {
      const step = e.target.closest("fieldset.wizard-step");
      if (step && step.hidden) show(Number(step.dataset.step));
    }, true);

    // presets: the defaults, then the preset's own fields
    const presets = JSON.parse(document.getElementById("wizard-presets").textContent);
    const defaults = JSON.parse(document.getElementById("wizard-defaults").textContent);
    const presetSelect = form.elements.preset;
    const presetDescription = document.getElementById("preset-description");
    function setField(name, value) {
      const el = form.elements[name];
      if (!el || !(name in defaults)) return;
      if (el.type === "checkbox") el.checked = !!value;
      else el.value = Array.isArray(value) ? value.join(", ") : value;
    }
    presetSelect.addEventListener("change", () => {
      const preset = presets.find((p) => String(p.id) === presetSelect.value);
      const values = { ...defaults };
      if (preset) {
        Object.assign(values, preset.lora_config, preset.training_config);
        const qlora = preset.qlora_config || {};
        values.qlora = "enabled" in qlora ? !!qlora.enabled : defaults.qlora;
      }
      Object.entries(values).forEach(([name, value]) => setField(name, value));
      presetDescription.textContent = preset ? preset.description || "" : "";
    });

    // a dataset's "val" split becomes the validation data, unless one was chosen by hand
    const evalSelect = form.elements.eval_dataset;
    let datasetChanged = false;
    if (evalSelect) {
      evalSelect.addEventListener("change", () => { evalSelect.dataset.touched = "1"; });
      form.elements.dataset.addEventListener("change", () => { datasetChanged = true; });
      document.body.addEventListener("htmx:afterSwap", (e) => {
        const summary = e.detail.target.querySelector && e.detail.target.querySelector("[data-val-dataset]");
        if (!summary || !datasetChanged || evalSelect.dataset.touched) return;
        evalSelect.value = summary.dataset.valDataset;
      });
    }

    form.classList.add("wizard-js");
    nav.hidden = false;
    show(Number(form.dataset.initialStep) || 1);
  }

  document.addEventListener("DOMContentLoaded", init);
  if (document.readyState !== "loading") init();
})();

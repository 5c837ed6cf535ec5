// Drag-and-drop and an upload progress bar; without JavaScript the form posts as usual.
(function () {
  const form = document.getElementById("upload-form");
  if (!form) return;
  const zone = document.getElementById("drop-zone");
  const input = form.querySelector("input[type=file]");
  const label = document.getElementById("drop-name");
  const show = () => { label.textContent = input.files.length ? `${input.files[0].name} (${Math.round(input.files[0].size / 1024)} KB)` : ""; };
  input.addEventListener("change", show);
  ["dragenter", "dragover"].forEach(t => zone.addEventListener(t, e => { e.preventDefault(); zone.classList.add("over"); }));
  ["dragleave", "drop"].forEach(t => zone.addEventListener(t, e => { e.preventDefault(); zone.classList.remove("over"); }));
  zone.addEventListener("drop", e => { if (e.dataTransfer.files.length) { input.files = e.dataTransfer.files; show(); } });

  form.addEventListener("submit", e => {
    if (!window.XMLHttpRequest || !input.files.length) return;
    e.preventDefault();
    const xhr = new XMLHttpRequest();
    const bar = document.getElementById("upload-bar");
    const pct = document.getElementById("upload-pct");
    const err = document.getElementById("upload-error");
    document.getElementById("upload-progress").hidden = false;
    err.hidden = true;
    xhr.upload.onprogress = ev => {
      if (!ev.lengthComputable) return;
      const p = Math.round((100 * ev.loaded) / ev.total);
      bar.value = p; pct.textContent = `${p}%`;
    };
    xhr.onload = () => {
      if (xhr.responseURL && xhr.responseURL !== location.href && xhr.status < 400) { location.href = xhr.responseURL; return; }
      document.open(); document.write(xhr.responseText); document.close();  // the form with its errors
    };
    xhr.onerror = () => { err.textContent = "The upload failed (connection lost). Try again."; err.hidden = false; };
    xhr.open("POST", form.action || location.href);
    xhr.send(new FormData(form));
  });
})();

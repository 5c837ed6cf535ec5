// Chat with a deployment through its OpenAI-compatible proxy, streaming: read the SSE chunks and
// append each piece of text as it arrives; then show which arm served and how fast.
(function () {
  const form = document.getElementById("chat-form");
  if (!form) return;
  const log = document.getElementById("chat-log");
  const input = document.getElementById("chat-input");
  const send = document.getElementById("chat-send");
  const history = [];

  function bubble(role, text) {
    const div = document.createElement("div");
    div.className = "chat-msg " + role;
    const body = document.createElement("div");
    body.className = "chat-text";
    body.textContent = text;
    div.appendChild(body);
    log.appendChild(div);
    return div;
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const text = input.value.trim();
    if (!text) return;
    input.value = "";
    send.disabled = true;
    history.push({ role: "user", content: text });
    bubble("user", text);
    const reply = bubble("assistant", "");
    const out = reply.querySelector(".chat-text");
    const meta = document.createElement("div");
    meta.className = "chat-meta muted";
    reply.appendChild(meta);
    const started = performance.now();
    let firstAt = null, chunks = 0, usage = null, answer = "";
    try {
      const resp = await fetch(form.dataset.endpoint, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRFToken": form.dataset.csrf },
        body: JSON.stringify({ messages: history, stream: true,
                               max_tokens: parseInt(document.getElementById("chat-max-tokens").value || "128", 10) }),
      });
      const arm = resp.headers.get("X-Nexus-Arm") || "?";
      if (!resp.ok) {
        let message = resp.status + " " + resp.statusText;
        try { message = (await resp.json()).error.message; } catch (e) { /* not JSON */ }
        meta.textContent = "error: " + message;
        reply.classList.add("error");
        return;
      }
      const reader = resp.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        const lines = buffer.split("\n");
        buffer = lines.pop();
        for (const line of lines) {
          if (!line.startsWith("data:")) continue;
          const data = line.slice(5).trim();
          if (!data || data === "[DONE]") continue;
          let chunk;
          try { chunk = JSON.parse(data); } catch (e) { continue; }
          if (chunk.usage) usage = chunk.usage;
          const piece = ((chunk.choices || [])[0] || {}).delta?.content || "";
          if (piece) {
            if (firstAt === null) firstAt = performance.now();
            chunks += 1;
            answer += piece;
            out.textContent = answer;
          }
        }
      }
      const seconds = (performance.now() - started) / 1000;
      const tokens = usage ? usage.completion_tokens : chunks;
      const genSeconds = firstAt === null ? seconds : (performance.now() - firstAt) / 1000;
      const tps = genSeconds > 0 && tokens > 1 ? (tokens - 1) / genSeconds : tokens / seconds;
      history.push({ role: "assistant", content: answer });
      reply.dataset.arm = arm;
      meta.textContent = "arm " + arm + " · " + tokens + " tokens · " + seconds.toFixed(2) + " s · "
        + tps.toFixed(1) + " tokens/s";
    } catch (e) {
      meta.textContent = "error: " + e;
      reply.classList.add("error");
    } finally {
      send.disabled = false;
      input.focus();
    }
  });
})();

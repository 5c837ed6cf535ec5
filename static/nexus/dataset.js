// Draws the token histogram of a dataset (also after htmx swaps the status partial in).
(function () {
  function draw() {
    const data = document.getElementById("token-histogram-data");
    const canvas = document.getElementById("token-histogram");
    if (!data || !canvas || canvas.dataset.drawn || !window.Chart) return;
    const h = JSON.parse(data.textContent);
    const labels = h.counts.map((_, i) => `${h.edges[i]}–${h.edges[i + 1] - 1}`);
    new Chart(canvas, {
      type: "bar",
      data: { labels, datasets: [{ label: "examples", data: h.counts, backgroundColor: "#4f7cff" }] },
      options: { animation: false, maintainAspectRatio: false, plugins: { legend: { display: false } },
                 scales: { x: { title: { display: true, text: "tokens per example" } }, y: { beginAtZero: true } } },
    });
    canvas.dataset.drawn = "1";
  }
  document.addEventListener("DOMContentLoaded", draw);
  document.addEventListener("htmx:afterSwap", draw);
  window.addEventListener("load", draw);
})();

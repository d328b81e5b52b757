// The schedule form: while the cron expression or the time zone is typed, what it means and its
// next five runs. The preview's URL comes from the script tag's data-url (no inline script:
// the Content-Security-Policy allows none).
(function () {
  const url = document.currentScript.dataset.url;
  const cron = document.getElementById("id_cron");
  const zone = document.getElementById("id_timezone");
  if (!cron || !url) return;
  const box = document.createElement("div");
  box.id = "cron-preview";
  box.className = "help";
  box.setAttribute("aria-live", "polite");
  cron.parentNode.appendChild(box);
  let timer = null;
  // The form already names what is wrong with the values it was sent back with: the preview
  // does not say it a second time until one of them is changed.
  const rejected = [cron, zone].some(field => field && field.closest(".errors, .form-row.errors"));
  let edited = false;
  function show(data) {
    box.textContent = "";
    const line = document.createElement("div");
    if (!data.ok && rejected && !edited) return;
    if (!data.ok) {
      line.className = "errornote";
      line.textContent = data.error;
      box.appendChild(line);
      return;
    }
    line.appendChild(document.createElement("strong")).textContent = data.description;
    box.appendChild(line);
    const next = document.createElement("div");
    next.textContent = "Next runs: " + data.next.join(", ");
    box.appendChild(next);
  }
  function refresh() {
    const query = new URLSearchParams({cron: cron.value, timezone: zone ? zone.value : "UTC"});
    fetch(url + "?" + query, {credentials: "same-origin"})
      .then(r => r.json()).then(show).catch(() => { box.textContent = ""; });
  }
  function later() { edited = true; clearTimeout(timer); timer = setTimeout(refresh, 250); }
  cron.addEventListener("input", later);
  if (zone) zone.addEventListener("input", later);
  if (cron.value) refresh();
})();

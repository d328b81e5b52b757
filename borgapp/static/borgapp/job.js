// The job page follows its job (borgapp's job API) until it ends, then reloads to show the
// result. A file rather than an inline script: the Content-Security-Policy allows no inline code.
// The bar shows borg's own percent where borg gives one; for a backup, an estimate from the
// previous archive of its set (data-expected-bytes), with the time left; no bar otherwise.
(function () {
  var root = document.getElementById("content-main");
  if (!root || root.dataset.finished === "1") { return; }
  var started = Date.now();
  var expected = parseInt(root.dataset.expectedBytes || "0", 10);
  function human(n) {
    if (n === null || n === undefined) { return "–"; }
    var units = ["B", "kB", "MB", "GB", "TB"], i = 0;
    while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
    return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
  }
  function duration(seconds) {
    seconds = Math.round(seconds);
    if (seconds < 90) { return seconds + " s"; }
    if (seconds < 5400) { return Math.round(seconds / 60) + " min"; }
    return (seconds / 3600).toFixed(1) + " h";
  }
  function show(percent, estimated, elapsed) {
    document.getElementById("job-progress").hidden = false;
    document.querySelector("#job-bar rect").setAttribute("width", percent.toFixed(0) + "%");
    document.getElementById("job-percent").textContent =
      (estimated ? "about " : "") + percent.toFixed(0) + " %";
    var eta = document.getElementById("job-eta");
    eta.textContent = estimated && percent > 1 && percent < 100 ?
      "(about " + duration(elapsed * (100 - percent) / percent) + " left, judged by the previous archive)" : "";
  }
  function tick() {
    fetch(root.dataset.api, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json(); })
      .then(function (job) {
        var status = document.getElementById("job-status");
        status.textContent = job.status;
        status.className = "oc-badge oc-" + job.status;
        var since = job.started_at ? Date.parse(job.started_at) : started;
        var elapsed = (Date.now() - since) / 1000;
        if (job.progress_percent !== null) {
          show(job.progress_percent, false, elapsed);
        } else if (expected > 0 && job.progress_bytes) {
          show(Math.min(99, 100 * job.progress_bytes / expected), true, elapsed);
        }
        document.getElementById("job-bytes").textContent = human(job.progress_bytes);
        document.getElementById("job-files").textContent =
          job.progress_files === null ? "–" : job.progress_files.toLocaleString("en-US");
        document.getElementById("job-path").textContent = job.progress_path || job.progress_message || "";
        document.getElementById("job-elapsed").textContent = duration(elapsed);
        if (["succeeded", "warning", "failed", "interrupted", "cancelled", "skipped"].indexOf(job.status) >= 0) {
          window.location.reload();  // show the result, the error and the log
        } else {
          setTimeout(tick, 1000);
        }
      })
      .catch(function () { setTimeout(tick, 3000); });
  }
  tick();
})();

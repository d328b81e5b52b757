// The archive's folder tree. Not read yet: it starts reading the file list by itself (the
// button stays for a browser without scripts), says how far it is, and opens the tree when
// done. Read: the files ticked for an extract are remembered across folders (per archive, for
// this browser tab) and sent together. A file, not inline: the CSP allows no inline code.
(function () {
  var loader = document.getElementById("load-listing");
  if (loader) {
    var status = document.getElementById("listing-status");
    loader.hidden = true;
    status.textContent = "Reading the file list from borg…";
    fetch(window.location.pathname, {method: "POST", body: new FormData(loader),
      credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (r) { return r.json().then(function (body) { return [r.ok, body]; }); })
      .then(function (answer) {
        if (!answer[0]) { throw new Error(answer[1].error || "could not start"); }
        follow(answer[1].api);
      })
      .catch(function (error) {
        status.textContent = "The file list could not be read: " + error.message;
        loader.hidden = false;
      });
    function follow(api) {
      fetch(api, {credentials: "same-origin", headers: {"Accept": "application/json"}})
        .then(function (r) { return r.json(); })
        .then(function (job) {
          if (job.status === "succeeded") { window.location.reload(); return; }
          if (["failed", "interrupted", "cancelled", "skipped"].indexOf(job.status) >= 0) {
            status.textContent = "Reading the file list " + job.status + ": " + (job.error_message || "");
            loader.hidden = false;
            return;
          }
          var files = job.progress_files ? ": " + job.progress_files.toLocaleString("en-US") + " entries so far" : "";
          status.textContent = "Reading the file list from borg (" + job.status + ")" + files + "…";
          setTimeout(function () { follow(api); }, 1000);
        })
        .catch(function () { setTimeout(function () { follow(api); }, 3000); });
    }
    return;
  }
  var form = document.getElementById("selection-form");
  if (!form || !window.sessionStorage) { return; }
  var key = "oc-selection-" + form.dataset.archive;
  var chosen = JSON.parse(sessionStorage.getItem(key) || "[]");
  var boxes = form.querySelectorAll("input[type=checkbox][name=path]");
  var count = document.getElementById("selection-count");
  var clear = document.getElementById("selection-clear");
  function save() {
    sessionStorage.setItem(key, JSON.stringify(chosen));
    if (count) { count.textContent = chosen.length ? chosen.length + " selected, in any folder" : ""; }
    if (clear) { clear.hidden = !chosen.length; }
  }
  boxes.forEach(function (box) {
    box.checked = chosen.indexOf(box.value) >= 0;
    box.addEventListener("change", function () {
      chosen = chosen.filter(function (p) { return p !== box.value; });
      if (box.checked) { chosen.push(box.value); }
      save();
    });
  });
  if (clear) {
    clear.addEventListener("click", function (event) {
      event.preventDefault();
      chosen = [];
      boxes.forEach(function (box) { box.checked = false; });
      save();
    });
  }
  form.addEventListener("submit", function () {
    var here = Array.prototype.map.call(boxes, function (box) { return box.value; });
    chosen.forEach(function (path) {
      if (here.indexOf(path) >= 0) { return; }  // its box is on this page and sends itself
      var hidden = document.createElement("input");
      hidden.type = "hidden"; hidden.name = "path"; hidden.value = path;
      form.appendChild(hidden);
    });
    sessionStorage.removeItem(key);
  });
  save();
})();

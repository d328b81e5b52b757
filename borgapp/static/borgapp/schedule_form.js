// The schedule form shows the fields of the chosen operation only: each operation's fieldset
// carries the classes oc-op and oc-op-<operation> (ScheduleAdmin.fieldsets). A file, not an
// inline script: the Content-Security-Policy allows none.
(function () {
  const operation = document.getElementById("id_operation");
  if (!operation) return;
  function show() {
    document.querySelectorAll("fieldset.oc-op").forEach(function (set) {
      set.hidden = !set.classList.contains("oc-op-" + operation.value);
    });
  }
  operation.addEventListener("change", show);
  show();
})();

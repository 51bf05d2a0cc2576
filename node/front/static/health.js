// Refreshes the health page: fetches the server-rendered fragment every 2 s and swaps it in.
(function () {
  "use strict";
  var main = document.getElementById("swarm");
  var live = document.getElementById("live");
  var busy = false;
  function refresh() {
    if (busy) return;
    busy = true;
    fetch("/api/swarm/fragment", { cache: "no-store" })
      .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.text(); })
      .then(function (html) {
        main.innerHTML = html;
        live.textContent = "live";
        live.className = "live";
      })
      .catch(function (e) {
        live.textContent = "node unreachable (" + e.message + ")";
        live.className = "live down";
      })
      .then(function () { busy = false; });
  }
  setInterval(refresh, 2000);
})();

// Progressive enhancement: the overview's numbers follow the daemon's live feed (one snapshot
// a second over /live). Without JavaScript the page is complete as served; reload to refresh.
(function () {
  "use strict";
  var cells = document.querySelectorAll("[data-live]");
  var pickAll = document.getElementById("select-all");
  if (pickAll) {
    pickAll.addEventListener("change", function () {
      document.querySelectorAll("input.pick").forEach(function (box) { box.checked = pickAll.checked; });
    });
  }
  if (!cells.length || !window.WebSocket) { return; }
  function lookup(snap, path) {
    var parts = path.split(".");
    if (parts[0] === "rung") {  // rung.<topic>.<field>: topics may contain dots
      var field = parts[parts.length - 1], topic = parts.slice(1, -1).join(".");
      var rung = (snap.rungs || []).find(function (r) { return r.topic === topic; });
      return rung ? rung[field] : undefined;
    }
    var value = snap;
    for (var i = 0; i < parts.length && value !== undefined && value !== null; i++) { value = value[parts[i]]; }
    return value;
  }
  function show(cell, value) {
    if (value === undefined || value === null) { return; }
    if (cell.dataset.live === "bus.up") {
      cell.textContent = value ? "up" : "down";
      cell.className = value ? "good" : "bad";
      return;
    }
    if (cell.dataset.live === "cache.bytes") {
      var units = ["Bytes", "KiB", "MiB", "GiB", "TiB"], n = Number(value), i = 0;
      while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
      cell.textContent = i ? n.toFixed(1) + " " + units[i] : n + " Bytes";
      return;
    }
    cell.textContent = String(value);
  }
  function connect() {
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + "/live");
    ws.onmessage = function (message) {
      var snap = JSON.parse(message.data);
      cells.forEach(function (cell) { show(cell, lookup(snap, cell.dataset.live)); });
      document.body.dataset.liveAt = snap.at || "";
    };
    ws.onclose = function () { setTimeout(connect, 3000); };
  }
  connect();
})();

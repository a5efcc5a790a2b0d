// statekit serve: keeps the page current without a reload, and filters lists as you type.
// Twice a second it asks /api/version; when the store changed, it fetches this page's
// content again (X-Statekit-Partial) and swaps it in. Nothing else is fetched.
(function () {
  "use strict";
  var body = document.body;
  var main = document.getElementById("main");
  var live = document.getElementById("live");
  var search = document.getElementById("search");
  var version = body.getAttribute("data-version");
  var every = parseInt(body.getAttribute("data-poll"), 10) || 500;

  function filter() {
    if (!search) return;
    var words = search.value.toLowerCase().trim().split(/\s+/).filter(Boolean);
    var rows = main.querySelectorAll("table.filterable tbody tr");
    var shown = 0;
    rows.forEach(function (row) {
      var text = row.getAttribute("data-search") || "";
      var ok = words.every(function (w) { return text.indexOf(w) !== -1; });
      row.hidden = !ok;
      if (ok) shown += 1;
    });
    var none = document.getElementById("no-match");
    if (none) none.hidden = shown > 0 || rows.length === 0;
  }

  function say(text, ok) {
    live.textContent = text;
    live.className = ok ? "live" : "live off";
  }

  function time() {
    return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }

  function refresh() {
    return fetch(location.pathname + location.search, {
      headers: { "X-Statekit-Partial": "1" }, cache: "no-store", credentials: "same-origin"
    }).then(function (response) {
      // a server error keeps what is shown (and says offline); an episode deleted, a bad
      // filter: the page shows what the server says (404, 400)
      if (response.status >= 500) throw new Error("status " + response.status);
      return response.text().then(function (html) {
        main.innerHTML = html;
        version = response.headers.get("X-Statekit-Version") || version;
        body.setAttribute("data-version", version);
        filter();
      });
    });
  }

  function tick() {
    fetch("/api/version", { cache: "no-store", credentials: "same-origin" })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.json();
      })
      .then(function (data) {
        if (data.version !== version) return refresh().then(function () { say("live · updated " + time(), true); });
        say("live · checked " + time(), true);
      })
      .catch(function () { say("offline · retrying", false); })
      .then(function () { setTimeout(tick, every); });
  }

  if (search) {
    search.addEventListener("input", filter);
    filter();
  }
  if (main && live) setTimeout(tick, every);
})();

// chainsync console: refreshes the part of a page marked data-refresh (the overview) in place.
// No state is kept in the browser; the session lives in an HttpOnly cookie the script never sees.
(function () {
  "use strict";
  var live = document.querySelector("[data-refresh]");
  if (!live) return;
  var every = parseInt(live.getAttribute("data-refresh"), 10) || 5000;
  function tick() {
    if (document.hidden) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.redirected && r.url.indexOf("/admin/login") !== -1) {
          window.location.href = r.url;
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (text) {
        if (!text) return;
        var doc = new DOMParser().parseFromString(text, "text/html");
        var fresh = doc.querySelector("[data-refresh]");
        var active = document.activeElement && document.activeElement.id;
        if (fresh) live.replaceChildren.apply(live, Array.prototype.slice.call(fresh.childNodes));
        if (active) {
          var again = document.getElementById(active);
          if (again) again.focus();
        }
      })
      .catch(function () {});
  }
  setInterval(tick, every);
})();

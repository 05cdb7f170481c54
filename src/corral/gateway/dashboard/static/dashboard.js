// corral dashboard: the little the server cannot do. Ages and the duration bars of
// running runs tick between updates; a stream that fails because the session ended sends
// the page to the login form; the log view follows new lines while it is scrolled to the
// bottom; a trigger's prompt is cleared once the run is queued; a field being edited
// survives a live update.
(function () {
  "use strict";
  var skew = 0;

  function readSkew() {
    var meta = document.querySelector('meta[name="corral-now"]');
    var server = meta ? Date.parse(meta.getAttribute("content")) : NaN;
    skew = isNaN(server) ? 0 : server - Date.now();
  }

  function human(seconds) {
    var s = Math.max(0, Math.floor(seconds));
    var d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
    var m = Math.floor((s % 3600) / 60), r = s % 60;
    function two(n) { return n < 10 ? "0" + n : String(n); }
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + two(m) + "m";
    if (m) return m + "m " + two(r) + "s";
    return r + "s";
  }

  // Duration bars: each relative to the longest on its table; a running run's grows.
  function bars(now) {
    document.querySelectorAll("table.runs").forEach(function (table) {
      var meters = table.querySelectorAll("meter.took"), values = [], longest = 0;
      meters.forEach(function (m, i) {
        var start = m.getAttribute("data-start"), seconds = parseFloat(m.getAttribute("data-seconds"));
        if (start) {
          var at = Date.parse(start);
          seconds = isNaN(at) ? 0 : Math.max(0, (now - at) / 1000);
        }
        values[i] = isNaN(seconds) ? 0 : seconds;
        longest = Math.max(longest, values[i]);
      });
      meters.forEach(function (m, i) {
        m.max = longest || 1;  // first the range, then the value (a meter clamps it)
        m.value = values[i];
      });
    });
  }

  function tick() {
    var now = Date.now() + skew;
    document.querySelectorAll("time[data-age]").forEach(function (el) {
      var at = Date.parse(el.getAttribute("datetime"));
      if (!isNaN(at)) el.textContent = human((now - at) / 1000);
    });
    bars(now);
  }

  function checkSession() {
    fetch("/dashboard/session", { credentials: "same-origin" }).then(function (answer) {
      if (answer.status === 401 || answer.redirected) {
        var here = encodeURIComponent(window.location.pathname).replace(/%2F/g, "/");
        window.location.assign("/dashboard/login?next=" + here);
      }
    }).catch(function () { /* the gateway is away; the stream retries */ });
  }

  var followLog = true;
  document.addEventListener("scroll", function (event) {
    var log = event.target;
    if (log && log.id === "log") {
      followLog = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    }
  }, true);

  document.addEventListener("htmx:sseError", checkSession);
  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.target;
    if (form.matches && form.matches("form.trigger") && event.detail.successful) form.reset();
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    tick();
    var log = document.getElementById("log");
    if (log && followLog && event.target === log) log.scrollTop = log.scrollHeight;
  });
  // A live update must not take away what someone is typing: the field with the focus
  // inside a fragment about to be replaced keeps its value, caret and focus.
  var editing = null;
  document.addEventListener("htmx:sseBeforeMessage", function (event) {
    var el = document.activeElement;
    editing = null;
    if (el && el.name && /^(INPUT|TEXTAREA|SELECT)$/.test(el.tagName) && event.target.contains(el)) {
      editing = { name: el.name, value: el.value, start: el.selectionStart, end: el.selectionEnd };
    }
  });
  document.addEventListener("htmx:sseMessage", function (event) {
    tick();
    if (!editing) return;
    var again = event.target.querySelector('[name="' + editing.name + '"]');
    if (again) {
      again.value = editing.value;
      again.focus();
      try { again.setSelectionRange(editing.start, editing.end); } catch (e) { /* number inputs */ }
    }
    editing = null;
  });
  document.addEventListener("DOMContentLoaded", function () {
    readSkew();
    tick();
    var log = document.getElementById("log");
    if (log) log.scrollTop = log.scrollHeight;
    window.setInterval(tick, 1000);
  });
})();

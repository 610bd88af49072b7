// Threadline inbox: keeps the server-rendered page live and adds keyboard shortcuts.
// The socket only says that something changed; the page then re-fetches its live part from
// the server, so a dropped connection loses nothing: on reconnect it simply fetches again.
(function () {
  "use strict";
  const live = document.getElementById("live");
  const page = document.querySelector(".conversation[data-conversation]");
  const conversationId = page ? page.dataset.conversation : null;

  let refreshTimer = null;
  function refresh() {
    if (!live) return;
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(async function () {
      const response = await fetch(live.dataset.liveUrl, { credentials: "same-origin" });
      if (!response.ok) return;
      const selected = document.querySelector(".rows li.selected");
      live.innerHTML = await response.text();
      if (selected) select(document.querySelector(`.rows li[data-conversation="${selected.dataset.conversation}"]`));
      document.dispatchEvent(new CustomEvent("threadline:refreshed"));
    }, 250);
  }

  let retry = 500;
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const socket = new WebSocket(`${scheme}://${location.host}/ws/agent/`);
    socket.addEventListener("open", function () {
      retry = 500;
      if (conversationId) socket.send(JSON.stringify({ action: "subscribe", conversation: Number(conversationId) }));
      refresh(); // catch up on whatever happened while disconnected
    });
    socket.addEventListener("message", function (message) {
      const data = JSON.parse(message.data);
      if (data.type !== "conversation") return;
      if (!conversationId || String(data.conversation) === conversationId) refresh();
    });
    socket.addEventListener("close", function (event) {
      if (event.code === 4401) return; // signed out
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    });
  }
  if (live) connect();

  // Availability switch submits itself.
  document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
    el.addEventListener("change", function () { el.form.submit(); });
  });

  // List: j/k move, Enter (or o) opens.
  function select(li) {
    if (!li) return;
    document.querySelectorAll(".rows li.selected").forEach(function (el) { el.classList.remove("selected"); });
    li.classList.add("selected");
    li.querySelector("a").focus();
  }
  const composer = document.querySelector("[data-composer]");
  const text = composer && composer.querySelector("textarea");
  document.addEventListener("keydown", function (event) {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName);
    if (composer && event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target === text) {
      event.preventDefault();
      composer.requestSubmit();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const rows = Array.from(document.querySelectorAll(".rows li[data-conversation]"));
    const current = rows.indexOf(document.querySelector(".rows li.selected"));
    if (event.key === "j") select(rows[Math.min(current + 1, rows.length - 1)]);
    else if (event.key === "k") select(rows[Math.max(current - 1, 0)]);
    else if (event.key === "r" && composer) { event.preventDefault(); composer.querySelector('[value="reply"]').checked = true; text.focus(); }
    else if (event.key === "n" && composer) { event.preventDefault(); composer.querySelector('[value="note"]').checked = true; text.focus(); }
    else if (event.key === "?") alert("j / k  move in the list\nEnter  open\nr  reply\nn  note\nCtrl+Enter  send");
  });

  // The composer's hint for the chosen channel (SMS segments follow sms_segments() in Python).
  const picker = composer && composer.querySelector("[data-channel-picker]");
  const hint = composer && composer.querySelector("[data-hint]");
  const GSM = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
  const GSM_EXT = "^{}\\[~]|€\f";
  function segments(value) {
    const chars = Array.from(value);
    const gsm = chars.every(function (c) { return GSM.includes(c) || GSM_EXT.includes(c); });
    const costs = chars.map(function (c) { return gsm ? (GSM_EXT.includes(c) ? 2 : 1) : (c.codePointAt(0) > 0xffff ? 2 : 1); });
    const units = costs.reduce(function (a, b) { return a + b; }, 0);
    const single = gsm ? 160 : 70, split = gsm ? 153 : 67;
    if (units <= single) return { gsm: gsm, units: units, count: units ? 1 : 0 };
    let count = 1, used = 0;
    costs.forEach(function (cost) { if (used + cost > split) { count += 1; used = 0; } used += cost; });
    return { gsm: gsm, units: units, count: count };
  }
  function updateHint() {
    if (!hint || !picker) return;
    const option = picker.selectedOptions[0];
    const kind = option ? option.dataset.kind : "";
    if (kind === "sms") {
      const s = segments(text.value);
      hint.textContent = `${s.units} ${s.gsm ? "GSM-7" : "UCS-2"} characters · ${s.count} SMS`;
    } else if (kind === "messenger" || kind === "whatsapp") {
      hint.textContent = "Free replies within 24 hours of the customer's last message.";
    } else if (kind === "email") {
      hint.textContent = "Sent by email, threaded with the customer's mail.";
    } else hint.textContent = "";
  }
  if (text) { text.addEventListener("input", updateHint); picker && picker.addEventListener("change", updateHint); updateHint(); }
})();

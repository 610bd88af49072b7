/* Threadline chat widget. A site embeds it with one tag:
 *
 *   <script src="https://help.example.com/widget.js" data-inbox="KEY" async></script>
 *
 * Sites that know their user add data-user-id, data-user-hash (HMAC-SHA256 of the id with the
 * inbox secret, computed on their server) and data-user-name: the chat then shows that
 * customer's history on every device.
 *
 * Plain JavaScript, no build step, no dependencies. Everything it draws lives in a shadow root
 * styled only by widget.css through a <link>, so the host page's CSS does not leak in and a host
 * with a strict Content-Security-Policy needs no 'unsafe-inline'. Text from the server, agents
 * or the visitor is only ever set with textContent: the widget renders text, never HTML.
 *
 * The socket only carries notifications and message ids move forward: on reconnect the widget
 * says which id it saw last and the server sends what came after, so nothing is missed or shown
 * twice. Messages the server has not acknowledged are resent with the same client id, which the
 * server uses to store each message once; until then they are kept in localStorage too, so a
 * reload or the site's next page sends them still.
 */
(function () {
  "use strict";

  const script = document.currentScript ||
    document.querySelector('script[data-inbox][src*="widget.js"]');
  if (!script || !script.dataset.inbox) return;
  const KEY = script.dataset.inbox;
  // The snippet pasted twice (say, in two templates) still makes one widget.
  if (document.querySelector(`threadline-chat[data-inbox="${CSS.escape(KEY)}"]`)) return;

  const BASE = new URL(".", script.src); // the server, whatever site this page is on
  const STORE = `threadline:${KEY}`; // localStorage: shared by the visitor's tabs
  const UNSENT = `${STORE}:unsent`; // what the visitor wrote and the server has not acknowledged
  // A message the server does not answer by then: the socket stopped delivering without closing
  // (a phone that changed networks), and nothing else would ever say so.
  const ACK_WAIT_MS = 10000;
  // The server takes a burst of messages, then one a second (consumers.MESSAGE_BURST and
  // MESSAGE_EVERY; an email given, a rating, a transcript and ending the chat count too): texts
  // beyond that wait here, in the order they were written, rather than be refused.
  const BURST = 10;
  const EVERY_MS = 1000;
  const SPENDS = new Set(["message", "contact", "rate", "transcript", "end"]);
  // When widget.css shows the panel full screen: it covers the page, so it is a modal dialog.
  const COVERS_PAGE = "(max-width: 480px), (max-height: 500px)";
  const WAIT_FOR_AGENT_MS = 2 * 60 * 1000; // then say we will also answer by email
  const PING_MS = 30000; // the server counts a visitor as gone without it
  const TYPING_SHOWN_MS = 6000; // agents announce typing every ~2 s while they type
  const TYPING_EVERY_MS = 1000;
  const TEXT_MAX = 5000; // characters in one message (chat.TEXT_MAX_CHARS)
  // A "continue in the chat" link from our mail: the chat to go on with, on this device too.
  // Used once: a widget started over later (renew) must not take the chat back from the
  // browser that opened the link since.
  let RESUME = (location.hash.match(/[#&]threadline-chat=([\w:-]+)/) || [])[1] || "";

  const S = {
    token: "", config: null, strings: {}, settings: {}, availability: {}, visitor: {},
    conversation: null, // {id, live, rating} as the server shows it
    messages: new Map(), // id -> message of the shown conversation
    pending: new Map(), // client id -> {cid, text, file, name, state, error, id, sentAt, node}
    allowance: 0, allowanceAt: 0, // how many messages the server takes now (see BURST)
    lastId: 0, // the highest message id seen: the reconnect cursor
    seenUpTo: 0, // the agent read the visitor's messages up to this id
    readSent: 0, // the visitor read the agent's messages up to this id
    socket: null, ready: false, everReady: false, retries: 0,
    open: false, fresh: false, waited: false, prechatDone: false,
    rating: 0, transcriptSent: false, afterContact: "", contactForm: null, contactWaiting: null,
    fixEmail: false,
    typingSentAt: 0, timers: {}, atBottom: true,
    reopened: false, // an agent's message just brought an ended chat back
  };

  // --- Small helpers --------------------------------------------------------------------------

  const storage = {
    memory: {},
    get(name) {
      try { return localStorage.getItem(name) || ""; } catch (error) { return this.memory[name] || ""; }
    },
    set(name, value) {
      this.memory[name] = value; // private modes and sandboxed frames may refuse storage
      try {
        if (value) localStorage.setItem(name, value);
        else localStorage.removeItem(name);
      } catch (error) { /* the memory copy lasts as long as the page */ }
    },
  };

  function t(key, vars) {
    const text = S.strings[key] || "";
    return text.replace(/%\((\w+)\)s/g, (match, name) => (vars && name in vars ? vars[name] : ""));
  }

  // Elements only through createElement/textContent: never innerHTML.
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : value);
    }
    node.append(...children.filter((child) => child !== null && child !== undefined));
    return node;
  }

  function icon(path) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    const shape = document.createElementNS(ns, "path");
    shape.setAttribute("d", path);
    svg.append(shape);
    return svg;
  }
  const ICONS = {
    chat: "M4 4h16a2 2 0 0 1 2 2v10a2 2 0 0 1-2 2H9l-5 4v-4a2 2 0 0 1-2-2V6a2 2 0 0 1 2-2z",
    close: "M6 6l12 12M18 6L6 18",
    attach: "M16.5 6.5l-8 8a2.1 2.1 0 0 0 3 3l8-8a4.2 4.2 0 0 0-6-6l-8 8a6.4 6.4 0 0 0 9 9l7-7",
    send: "M3 20l18-8L3 4v6l12 2-12 2z",
  };

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context; getRandomValues does not.
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // Server paths are relative to the server, not to the page; only http(s) links survive.
  function serverUrl(path) {
    try {
      const url = new URL(path, BASE);
      return url.protocol === "http:" || url.protocol === "https:" ? url.href : "";
    } catch (error) { return ""; }
  }

  function backoff(attempt) {
    // Exponential, capped at 30 s, with jitter so a server restart is not hit by every
    // widget at the same instant.
    const ceiling = Math.min(30000, 1000 * 2 ** Math.min(attempt, 5));
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  // Dates in the language of the words around them (the server's, which falls back to
  // English), in the browser's regional form when it is the same language.
  function locale() {
    const words = S.config && S.config.language ? S.config.language : "en";
    const browser = navigator.language || "";
    return browser.split("-")[0].toLowerCase() === words ? browser : words;
  }

  function clock(iso) {
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return "";
    const today = at.toDateString() === new Date().toDateString();
    const options = today ? { hour: "numeric", minute: "2-digit" }
      : { month: "short", day: "numeric", hour: "numeric", minute: "2-digit" };
    try {
      return new Intl.DateTimeFormat(locale(), options).format(at);
    } catch (error) { return at.toLocaleString(); }
  }

  function when(iso) {
    // "Friday 9:00 AM" in the visitor's own time zone; a date when further away.
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return "";
    const soon = at - Date.now() < 6 * 24 * 3600 * 1000;
    const options = soon ? { weekday: "long", hour: "numeric", minute: "2-digit" }
      : { dateStyle: "medium", timeStyle: "short" };
    try {
      return new Intl.DateTimeFormat(locale(), options).format(at);
    } catch (error) { return at.toLocaleString(); }
  }

  function backAt(iso) {
    // When the team is back: "today at 9:00 AM" and "tomorrow at …" by the visitor's own
    // calendar, a weekday or a date further away.
    const at = new Date(iso);
    const days = Math.round((new Date(at).setHours(0, 0, 0, 0) - new Date().setHours(0, 0, 0, 0))
      / (24 * 3600 * 1000));
    if (days === 0 || days === 1) {
      let time = "";
      try {
        time = new Intl.DateTimeFormat(locale(), { hour: "numeric", minute: "2-digit" }).format(at);
      } catch (error) { time = at.toLocaleTimeString(); }
      return t(days ? "back_tomorrow" : "back_today", { time });
    }
    return t("back_at", { when: when(iso) });
  }

  function size(bytes) {
    if (bytes >= 1048576) return `${(bytes / 1048576).toFixed(1)} MB`;
    return `${Math.max(1, Math.round(bytes / 1024))} KB`;
  }

  // --- The session: who this visitor is and what the widget shows -----------------------------

  async function requestSession() {
    const user = script.dataset.userId ? {
      id: script.dataset.userId,
      hash: script.dataset.userHash || "",
      name: script.dataset.userName || "",
    } : undefined;
    const response = await fetch(serverUrl(`widget/${encodeURIComponent(KEY)}/session`), {
      method: "POST",
      credentials: "omit", // the token travels in the body; no cookies of ours on their site
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        token: S.token || undefined, user, resume: RESUME || undefined,
        language: navigator.language || "", page: location.href.split("#")[0],
        timezone: Intl.DateTimeFormat().resolvedOptions().timeZone || "",
      }),
    });
    const data = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(data.error || `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    S.token = data.token;
    storage.set(STORE, data.token);
    S.config = data;
    S.strings = data.strings || {};
    S.settings = data.settings || {};
    S.availability = data.availability || {};
    S.visitor = data.visitor || {};
  }

  async function boot(attempt) {
    S.token = storage.get(STORE);
    try {
      await requestSession();
    } catch (error) {
      // Refused (a site the inbox does not allow, a bad user hash): stay out of the way.
      if (error.status && error.status < 500) return console.warn("Threadline chat:", error.message);
      S.timers.boot = setTimeout(() => boot(attempt + 1), backoff(attempt));
      return;
    }
    const resumed = Boolean(RESUME);
    RESUME = "";
    mount();
    connect();
    if (resumed) {
      // Out of the address bar, bookmarks and the history: the link is the chat's key.
      history.replaceState(history.state, "", location.href.split("#")[0]);
    }
    if (resumed || "open" in script.dataset) setOpen(true);
  }

  // The token was refused (expired key, another inbox): start over as a new visitor.
  async function renew() {
    S.token = "";
    storage.set(STORE, "");
    const owner = S.visitor.owner;
    try {
      await requestSession();
    } catch (error) {
      return reconnectLater();
    }
    if (S.visitor.owner !== owner) {
      // Someone else's chat from here on (the user signed out, or it went on in another
      // browser): what was written before and never taken is not theirs to send.
      S.pending.forEach(dropPending);
      storage.set(UNSENT, "");
    }
    S.lastId = 0;
    showConversation(null);
    connect();
  }

  // --- The socket -------------------------------------------------------------------------------

  function connect() {
    clearTimeout(S.timers.reconnect);
    if (S.socket || !S.config) return;
    const url = new URL(S.config.socket, BASE);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url.href);
    S.socket = socket;
    socket.addEventListener("open", () => {
      // The token goes in the first frame, not the URL (which server logs keep).
      socket.send(JSON.stringify({ action: "hello", token: S.token, after: S.lastId }));
      // "ready" answers it: a socket that says nothing is no better than a dead one.
      clearTimeout(S.timers.hello);
      S.timers.hello = setTimeout(() => { if (socket === S.socket && !S.ready) restart(); }, ACK_WAIT_MS);
    });
    socket.addEventListener("message", (event) => {
      if (socket !== S.socket) return;
      let data;
      try { data = JSON.parse(event.data); } catch (error) { return; }
      handle(data);
    });
    socket.addEventListener("close", (event) => { if (socket === S.socket) dropped(event.code); });
  }

  // The socket closed, or was given up on: what was in flight goes again on the next "ready".
  function dropped(code) {
    S.socket = null;
    S.ready = false;
    clearInterval(S.timers.ping);
    clearTimeout(S.timers.hello);
    clearTimeout(S.timers.ack);
    S.pending.forEach((p) => { p.sentAt = 0; });
    render();
    if (code === 4401) {
      // Straight away the first time; a server refusing fresh tokens too is not hammered.
      S.retries += 1;
      S.timers.reconnect = setTimeout(renew, S.retries > 1 ? backoff(S.retries) : 0);
      return;
    }
    if (code === 4403) return console.warn("Threadline chat: this site may not use it.");
    reconnectLater(code === 4429 ? 4 : 0);
  }

  // A socket that stopped delivering while it stays open (no "ready", no answer to a message in
  // ACK_WAIT_MS): closed by us, and a new one takes over.
  function restart() {
    const socket = S.socket;
    if (!socket) return;
    dropped();
    socket.close();
  }

  function reconnectLater(atLeast) {
    clearTimeout(S.timers.reconnect);
    S.retries = Math.max(S.retries + 1, atLeast || 0);
    S.timers.reconnect = setTimeout(connect, backoff(S.retries));
  }

  function send(frame) {
    if (!S.socket || !S.ready || S.socket.readyState !== WebSocket.OPEN) return false;
    S.socket.send(JSON.stringify(frame));
    if (SPENDS.has(frame.action)) S.allowance = allowance() - 1;
    return true;
  }

  // The server's allowance for this socket, as far as the widget can tell (see BURST).
  function allowance() {
    const now = Date.now();
    S.allowance = Math.min(BURST, S.allowance + (now - S.allowanceAt) / EVERY_MS);
    S.allowanceAt = now;
    return S.allowance;
  }

  function handle(data) {
    const focused = host && host.shadowRoot.activeElement; // inside the widget, before
    switch (data.type) {
      case "ready":
        S.ready = true;
        S.everReady = true;
        S.retries = 0;
        clearTimeout(S.timers.hello);
        S.allowance = BURST; // a new socket, a new allowance
        S.allowanceAt = Date.now();
        S.availability = data.availability || S.availability;
        showConversation(data.conversation);
        (data.messages || []).forEach(addMessage);
        // Whatever was not acknowledged before the drop goes again, under the same client id.
        if (S.contactWaiting) contact(S.contactWaiting.fields, S.contactWaiting.form);
        flush();
        clearInterval(S.timers.ping);
        S.timers.ping = setInterval(() => send({ action: "ping" }), PING_MS);
        break;
      case "message":
        addMessage(data.message);
        // An agent wrote after the chat ended: the visitor answers there (the server agrees:
        // chat.takes_messages). The panel trades its rating for the composer, so the message
        // that brought the chat back is scrolled to once it is drawn.
        if (data.message && data.message.from === "agent" && data.message.author && S.conversation) {
          S.reopened = !S.conversation.live;
          S.conversation.live = true;
        }
        break;
      case "ack": {
        const p = S.pending.get(data.client_id);
        if (p) {
          p.id = data.message;
          p.sentAt = 0;
          forgetUnsent(p);
          if (S.messages.has(p.id)) dropPending(p); // the echo came first
        }
        expectAnswers();
        break;
      }
      case "conversation":
        showConversation(data.conversation);
        break;
      case "ended":
        if (S.conversation && S.conversation.id === data.conversation) {
          S.conversation.live = false;
          S.fresh = false;
        }
        break;
      case "joined": // an agent took the chat: the queue is behind the visitor
        if (S.conversation && S.conversation.id === data.conversation) {
          S.conversation.queue = null;
          S.joined = data.agent;
        }
        break;
      case "queue": // the place in line moved, or the chat is back in line (its agent left)
        if (S.conversation && S.conversation.id === data.conversation) {
          S.joined = null;
          S.conversation.queue = {
            position: data.position,
            expected_wait_seconds: data.expected_wait_seconds,
          };
        }
        break;
      case "read":
        if (S.conversation && S.conversation.id === data.conversation) {
          S.seenUpTo = Math.max(S.seenUpTo, data.up_to || 0);
        }
        break;
      case "typing":
        showTyping(data.agent);
        break;
      case "availability": // an agent came or went, or the hours turned
        S.availability = data.availability || S.availability;
        break;
      case "contact":
        contactSaved(data.email, data.pending);
        break;
      case "done":
        if (data.action === "rate" && S.conversation) S.conversation.rating = S.rating;
        if (data.action === "transcript") S.transcriptSent = true;
        break;
      case "error":
        if (data.client_id && S.pending.has(data.client_id)) {
          const p = S.pending.get(data.client_id);
          p.sentAt = 0;
          if (data.retry === true) {
            // Too fast after all (the widget's count was off): it waits its turn again, and
            // goes in a second; never given up on while the socket lasts.
            S.allowance = 0;
            S.allowanceAt = Date.now();
          } else failPending(p, data.error, data.retry !== false);
          flush();
        } else if (data.action === "contact" && S.contactForm) {
          contactRefused(data.error);
        } else showError(data.error);
        break;
      default:
        return;
    }
    render();
    if (S.reopened) stickToBottom(true);
    S.reopened = false;
    markRead();
    // What had the focus may now be hidden (the composer once the chat ended, the rating once
    // sent): keyboard users would be thrown back to the top of the page.
    if (focused && !(host.shadowRoot.activeElement || focused).getClientRects().length) focusFirst();
  }

  // --- Messages ---------------------------------------------------------------------------------

  function showConversation(conversation) {
    const current = S.conversation;
    if (current && (!conversation || conversation.id !== current.id)) {
      // Another conversation (a new one after the chat ended): show only its messages, and
      // no "Dana is typing…" left over from the last one.
      S.messages.clear();
      ui.list.querySelectorAll("li[data-id]").forEach((node) => node.remove());
      hideTyping();
      S.seenUpTo = 0;
      S.rating = 0;
      S.transcriptSent = false;
      S.joined = null;
    }
    S.conversation = conversation ? { ...conversation } : null;
    if (conversation && conversation.transcript) S.transcriptSent = true;
    if (conversation && conversation.live && (!current || conversation.id !== current.id)) {
      S.fresh = false;
    }
  }

  function addMessage(m) {
    if (!m || typeof m.id !== "number" || S.messages.has(m.id)) return;
    S.messages.set(m.id, m);
    S.lastId = Math.max(S.lastId, m.id);
    const node = messageNode(m);
    const later = Array.from(ui.list.children).find((li) =>
      (li.dataset.id && Number(li.dataset.id) > m.id) || li.dataset.clientId);
    ui.list.insertBefore(node, later || null);
    S.pending.forEach((p) => { if (p.id === m.id) dropPending(p); });
    if (m.from === "agent") hideTyping();
    else if (m.read) S.seenUpTo = Math.max(S.seenUpTo, m.id);
    stickToBottom();
  }

  function messageNode(m) {
    const agent = m.from === "agent";
    const node = el("li", { class: `message ${agent ? "agent" : "customer"}`, "data-id": m.id });
    node.append(agent
      ? el("p", { class: "author", dir: "auto", text: m.author || S.settings.title || "" })
      : el("p", { class: "sr-only", text: t("you") }));
    if (m.text) {
      node.append(el("p", { class: "text", dir: "auto" }, ...(agent ? withLinks(m.text) : [m.text])));
    }
    for (const file of m.attachments || []) node.append(attachmentNode(file));
    const meta = [clock(m.created_at)];
    if (m.channel === "email") meta.push(t("via_email"));
    node.append(el("p", { class: "meta", text: meta.filter(Boolean).join(" · ") }));
    return node;
  }

  // Web addresses in agents' messages become links, found in the text and built as elements
  // (never from HTML): http(s) only, opened apart from the page, with no referrer and no
  // endorsement. A sentence's closing punctuation is not part of the address.
  function withLinks(text) {
    const parts = [];
    let from = 0;
    for (const match of text.matchAll(/\bhttps?:\/\/[^\s<>"]+/gi)) {
      let address = match[0];
      const unbalanced = () => address.split(")").length > address.split("(").length;
      while (/[.,;:!?'"’”]$/.test(address) || (address.endsWith(")") && unbalanced())) {
        address = address.slice(0, -1);
      }
      const href = serverUrl(address); // absolute already: only checked to be http(s)
      if (!href) continue;
      parts.push(text.slice(from, match.index), el("a", {
        href, target: "_blank", rel: "noopener noreferrer nofollow", text: address,
      }));
      from = match.index + address.length;
    }
    parts.push(text.slice(from));
    return parts.filter(Boolean);
  }

  function attachmentNode(file) {
    const href = file.url ? serverUrl(file.url) : "";
    if (!href) return el("p", { class: "file", text: file.name });
    if (file.image) {
      const image = el("img", { src: href, alt: file.name, loading: "lazy" });
      // Follow it down if the reader was at the bottom before the picture made it taller.
      image.addEventListener("load", () => { if (S.atBottom) stickToBottom(true); });
      return el("a", { class: "image", href, target: "_blank", rel: "noopener noreferrer" }, image);
    }
    return el("a", {
      class: "file", href, download: file.name, target: "_blank", rel: "noopener noreferrer",
      text: `${file.name} (${size(file.size || 0)})`,
    });
  }

  function sendText() {
    const text = ui.textarea.value;
    if (!text.trim()) return;
    if (text.length > TEXT_MAX) return showError(t("too_long")); // kept, for them to shorten
    beforeSending();
    const p = addPending({ text });
    keepUnsent(p);
    ui.textarea.value = "";
    stopTyping();
    flush();
    render();
  }

  function sendFile(file) {
    const types = S.settings.upload_types || [];
    if (file.size > (S.settings.upload_max_bytes || Infinity)) {
      return showError(`${file.name}: ${t("file_size")}`);
    }
    // Browsers label some files oddly (CSV on Windows): an unknown type is left to the server.
    if (file.type && types.length && !types.includes(file.type) && !/\.(csv|txt)$/i.test(file.name)) {
      return showError(`${file.name}: ${t("file_type")}`);
    }
    beforeSending();
    upload(addPending({ text: "", file, name: file.name }));
    render();
  }

  function addPending(fields) {
    const p = { cid: uuid(), state: "sending", error: "", id: null, at: Date.now(), ...fields };
    p.node = el("li", { class: "message customer pending", "data-client-id": p.cid },
      el("p", { class: "sr-only", text: t("you") }),
      el("p", { class: "text", dir: "auto", text: p.text || p.name }),
      el("p", { class: "meta" }));
    S.pending.set(p.cid, p);
    ui.list.append(p.node);
    updatePending(p);
    stickToBottom(true);
    return p;
  }

  // The texts not sent yet (just written, refused for coming too fast, or in flight when the
  // socket went), in the order they were written, as fast as the server takes them: the ones
  // beyond its allowance wait their turn here. Files go by upload.
  function flush() {
    clearTimeout(S.timers.flush);
    if (!S.ready) return; // all of them go on "ready"
    for (const p of S.pending.values()) {
      if (p.file || p.lost || p.id || p.sentAt || p.state !== "sending") continue;
      const short = 1 - allowance();
      if (short > 0) {
        // A little after the server's own count allows it: frames do not arrive evenly.
        S.timers.flush = setTimeout(flush, short * EVERY_MS + 100);
        break;
      }
      if (!send({ action: "message", client_id: p.cid, text: p.text })) break;
      p.sentAt = Date.now();
    }
    expectAnswers();
  }

  // The oldest message sent and not answered (acknowledged or refused) gets ACK_WAIT_MS.
  function expectAnswers() {
    clearTimeout(S.timers.ack);
    let oldest = Infinity;
    S.pending.forEach((p) => { if (p.sentAt) oldest = Math.min(oldest, p.sentAt); });
    if (oldest === Infinity) return;
    S.timers.ack = setTimeout(restart, Math.max(0, oldest + ACK_WAIT_MS - Date.now()));
  }

  // What the visitor wrote and the server has not acknowledged is kept in the browser too: the
  // next page (a reload, another page of the site) sends the texts again under their client ids,
  // which the server stores once, and says which files did not go (a file cannot be kept).
  // Read and written afresh each time: the visitor's other tabs keep theirs there too.
  function unsent() {
    try {
      const kept = JSON.parse(storage.get(UNSENT) || "{}");
      return kept && typeof kept === "object" && !Array.isArray(kept) ? kept : {};
    } catch (error) { return {}; }
  }

  function keepUnsent(p) {
    const kept = unsent();
    const owner = S.visitor.owner || "";
    kept[p.cid] = p.file ? { file: p.name, at: p.at, owner } : { text: p.text, at: p.at, owner };
    storage.set(UNSENT, JSON.stringify(kept));
  }

  function forgetUnsent(p) {
    const kept = unsent();
    if (!(p.cid in kept)) return;
    delete kept[p.cid];
    storage.set(UNSENT, Object.keys(kept).length ? JSON.stringify(kept) : "");
  }

  function restoreUnsent() {
    const kept = unsent();
    for (const [cid, p] of Object.entries(kept)) {
      if (!p || p.owner !== (S.visitor.owner || "")) {
        delete kept[cid]; // another person's (the browser's user changed since): neither sent nor shown
        continue;
      }
      if (S.pending.has(cid)) continue;
      const at = Number(p.at) || Date.now();
      if (typeof p.text === "string" && p.text) addPending({ cid, text: p.text, at });
      else if (typeof p.file === "string") {
        const lost = addPending({ cid, text: "", name: p.file, lost: true, at });
        failPending(lost, t("file_lost"), false); // forgotten once the visitor has seen it (setOpen)
      }
    }
    storage.set(UNSENT, Object.keys(kept).length ? JSON.stringify(kept) : "");
  }

  async function upload(p, renewed) {
    p.state = "sending";
    updatePending(p);
    const form = new FormData();
    form.append("token", S.token);
    form.append("client_id", p.cid);
    form.append("text", p.text);
    form.append("file", p.file, p.file.name);
    try {
      const response = await fetch(serverUrl(S.config.upload), {
        method: "POST", body: form, credentials: "omit",
      });
      const data = await response.json().catch(() => ({}));
      if (response.status === 401 && !renewed) {
        // A signed-in user's token lasts hours: a fresh one, and the file goes again.
        await requestSession();
        return upload(p, true);
      }
      if (response.status === 413 || response.status === 415) {
        // Refused for what it is: said as a file picked of the wrong kind is, and gone.
        dropPending(p);
        return showError(`${p.file.name}: ${data.error || t("failed")}`);
      }
      // Anything else may pass later: a busy server, the email asked for first.
      if (!response.ok) return failPending(p, data.error || t("failed"));
      p.id = data.message; // the message itself arrives over the socket
      forgetUnsent(p); // if the page was left meanwhile
      if (S.messages.has(p.id)) dropPending(p);
    } catch (error) {
      failPending(p, t("failed"));
    }
  }

  function updatePending(p) {
    // In the live list: written only when it changes, or screen readers say "Sending…" again.
    const shown = [p.state, p.error, p.retryable].join("|");
    if (p.shown === shown) return;
    p.shown = shown;
    const meta = p.node.querySelector(".meta");
    p.node.classList.toggle("failed", p.state === "failed");
    if (p.state !== "failed") return meta.replaceChildren(t("sending"));
    const retry = () => {
      if (p.file) return upload(p);
      p.state = "sending";
      updatePending(p);
      flush();
    };
    meta.replaceChildren(el("span", { class: "error", text: p.error }));
    if (p.retryable) {
      meta.append(" ", el("button", { type: "button", class: "retry", text: t("failed"), onclick: retry }));
    }
  }

  function failPending(p, error, retryable = true) {
    p.state = "failed";
    p.error = error || "";
    p.retryable = retryable;
    updatePending(p);
    if (!retryable && !p.lost) forgetUnsent(p); // refused as it is: the next page would be too
  }

  function dropPending(p) {
    S.pending.delete(p.cid);
    p.node.remove();
    forgetUnsent(p);
  }

  function nearBottom() {
    const list = ui.list;
    return list.scrollHeight - list.scrollTop - list.clientHeight < 120;
  }

  function stickToBottom(force) {
    const list = ui.list;
    if (force === true || nearBottom()) {
      list.scrollTop = list.scrollHeight;
    }
  }

  // The agent has read the visitor's messages: "Seen" under the visitor's last one. Moved only
  // when that changes: the list is a live region, and screen readers say every line added.
  function renderSeen() {
    const mine = ui.list.querySelectorAll("li.customer[data-id]");
    const last = mine[mine.length - 1];
    const under = last && Number(last.dataset.id) <= S.seenUpTo ? last : null;
    const seen = ui.list.querySelector(".seen");
    if (seen && seen.parentNode === under) return;
    if (seen) seen.remove();
    if (under) under.append(el("p", { class: "seen", text: t("seen") }));
  }

  // The visitor reads the agent's messages when the panel is open on a visible page.
  function markRead() {
    if (!S.open || document.visibilityState !== "visible" || !S.ready || !S.conversation) return;
    let last = 0;
    S.messages.forEach((m) => { if (m.from === "agent" && m.id > last) last = m.id; });
    if (last > S.readSent && send({ action: "read", conversation: S.conversation.id, message: last })) {
      S.readSent = last;
    }
    renderBadge();
  }

  function unread() {
    let count = 0;
    S.messages.forEach((m) => { if (m.from === "agent" && !m.read && m.id > S.readSent) count += 1; });
    return count;
  }

  function showTyping(name) {
    // Announced every ~2 s while the agent types: said once, as long as it stays the same.
    const text = t("typing", { name });
    if (ui.typing.textContent !== text) ui.typing.textContent = text;
    ui.typing.hidden = false;
    clearTimeout(S.timers.typing);
    S.timers.typing = setTimeout(hideTyping, TYPING_SHOWN_MS);
  }

  function hideTyping() {
    clearTimeout(S.timers.typing);
    if (ui.typing.hidden) return; // nothing to say again
    ui.typing.hidden = true;
    ui.typing.textContent = "";
    render(); // the place in line, if any, comes back
  }

  // The visitor's draft, so agents see someone is writing: at most once a second.
  function typed() {
    // Past the limit the visitor is told so, once; nothing they pasted is cut.
    const full = ui.textarea.value.length > TEXT_MAX;
    if (full && !S.full) showError(t("too_long"));
    if (!full && S.full) showError(""); // cut back within the limit: nothing to say
    S.full = full;
    if (!S.conversation || !S.conversation.live) return;
    const now = Date.now();
    if (now - S.typingSentAt >= TYPING_EVERY_MS) {
      S.typingSentAt = now;
      const draft = S.settings.typing_preview ? { draft: ui.textarea.value.slice(0, 500) } : {};
      send({ action: "typing", typing: true, ...draft });
    }
    clearTimeout(S.timers.typingStop);
    S.timers.typingStop = setTimeout(stopTyping, 3000);
  }

  function stopTyping() {
    clearTimeout(S.timers.typingStop);
    if (!S.typingSentAt) return;
    S.typingSentAt = 0;
    send({ action: "typing", typing: false });
  }

  // No agent answer for a while after the visitor wrote: the chat is asynchronous now.
  function updateWaiting() {
    clearTimeout(S.timers.waiting);
    let since = null;
    Array.from(S.messages.values()).sort((a, b) => a.id - b.id).forEach((m) => {
      if (m.from === "agent") since = null;
      else if (since === null) since = Date.parse(m.created_at);
    });
    S.pending.forEach((p) => { if (since === null || p.at < since) since = p.at; });
    const due = since === null || Number.isNaN(since) ? null : since + WAIT_FOR_AGENT_MS - Date.now();
    S.waited = due !== null && due <= 0;
    if (due !== null && due > 0) {
      S.timers.waiting = setTimeout(() => { S.waited = true; render(); }, due);
    }
  }

  // --- Contact details, ending, rating ----------------------------------------------------------

  function contact(fields, form) {
    S.contactForm = form;
    formError(form, "");
    S.contactWaiting = null;
    if (send({ action: "contact", ...fields })) return true;
    // Not connected yet, or not again: sent once it is ("ready"), ahead of the messages that
    // wait with it, as a message is. Written before the page had connected, it was lost.
    S.contactWaiting = { fields, form };
    if (!form.closest("[hidden]")) formError(form, t("reconnecting"));
    return false;
  }

  // The server refused the address (the only field it can refuse): the field is marked, and
  // keeps what was typed. Optional pre-chat fields already went with the first message: the
  // note below the chat asks again, with it.
  function contactRefused(error) {
    let form = S.contactForm;
    let field = form === ui.prechat ? ui.emailInput : ui.noteEmail;
    if (form === ui.prechat && ui.prechat.hidden) {
      ui.noteEmail.value = ui.emailInput.value;
      form = ui.emailForm;
      field = ui.noteEmail;
      S.fixEmail = true; // shown until corrected, agents online or not
    }
    render();
    formError(form, error, field);
    if (!form.closest("[hidden]")) field.focus();
  }

  function contactSaved(email, pending) {
    if (S.contactForm === ui.prechat) {
      S.prechatDone = true;
      const name = ui.nameInput.value.trim();
      if (name) S.visitor.name = name;
    }
    if (email) Object.assign(S.visitor, { email, email_pending: Boolean(pending) });
    S.contactForm = null;
    if (S.afterContact === "transcript") requestTranscript();
    S.afterContact = "";
    render();
    focusFirst();
  }

  // Optional pre-chat fields do not block: whatever was filled goes along with the first message.
  function beforeSending() {
    if (ui.prechat.hidden) return;
    const name = ui.nameInput.value.trim();
    const email = ui.emailInput.value.trim();
    if (name || email) contact({ name, email }, ui.prechat);
    S.prechatDone = true;
  }

  function prechatState() {
    const settings = S.settings;
    const name = settings.prechat_name && settings.prechat_name !== "off" && !S.visitor.name;
    const email = settings.prechat_email && settings.prechat_email !== "off" && !S.visitor.email;
    const show = !S.prechatDone && !S.conversation && !S.messages.size && !S.pending.size &&
      Boolean(name || email);
    const blocking = show && ((name && settings.prechat_name === "required") ||
      (email && settings.prechat_email === "required"));
    return { show, name: show && name, email: show && email, blocking };
  }

  function startChat(event) {
    event.preventDefault();
    const state = prechatState();
    const name = ui.nameInput.value.trim();
    const email = ui.emailInput.value.trim();
    let missing = null;
    if (state.email && S.settings.prechat_email === "required" && !email) missing = ui.emailInput;
    if (state.name && S.settings.prechat_name === "required" && !name) missing = ui.nameInput;
    if (missing) {
      formError(ui.prechat, t("required"), missing);
      return missing.focus();
    }
    if (name || email) return contact({ name, email }, ui.prechat);
    S.prechatDone = true;
    render();
    focusFirst();
  }

  function saveEmail(event) {
    event.preventDefault();
    const email = ui.noteEmail.value.trim();
    if (!email) {
      formError(ui.emailForm, t("required"), ui.noteEmail);
      return ui.noteEmail.focus();
    }
    contact({ email }, ui.emailForm); // the server says whether it is a valid address
  }

  function formError(form, message, field) {
    // A form already put away (optional pre-chat fields sent with the first message).
    if (form.closest("[hidden]") && S.open) return showError(message);
    const box = form.querySelector(".error");
    box.textContent = message || "";
    box.hidden = !message;
    form.querySelectorAll("input").forEach((input) => {
      if (input === field) input.setAttribute("aria-invalid", "true");
      else input.removeAttribute("aria-invalid");
    });
  }

  function showError(message) {
    ui.error.textContent = message || "";
    ui.error.hidden = !message;
    clearTimeout(S.timers.error);
    if (message) S.timers.error = setTimeout(() => showError(""), 8000);
  }

  function endChat() {
    if (S.conversation) send({ action: "end", conversation: S.conversation.id });
  }

  function chooseRating(value) {
    S.rating = value;
    ui.stars.forEach((star, index) => star.setAttribute("aria-pressed", String(index + 1 === value)));
    ui.rateSend.disabled = false;
  }

  function rate(event) {
    event.preventDefault();
    if (!S.rating || !S.conversation) return;
    send({
      action: "rate", conversation: S.conversation.id, rating: S.rating,
      comment: ui.comment.value.trim(),
    });
  }

  function requestTranscript() {
    if (!S.conversation) return;
    if (!S.visitor.email) {
      S.afterContact = "transcript"; // ask for the address first, then send it
      render();
      return ui.noteEmail.focus();
    }
    send({ action: "transcript", conversation: S.conversation.id });
  }

  function newConversation() {
    // The next message opens a new conversation on the server; until then show an empty chat.
    S.fresh = true;
    S.fixEmail = false; // the note said where this chat's answers go; a new one starts plain
    S.messages.clear();
    ui.list.querySelectorAll("li[data-id]").forEach((node) => node.remove());
    render();
    focusFirst();
  }

  // --- The interface ----------------------------------------------------------------------------

  let host = null;
  const ui = {};
  const fullScreen = window.matchMedia(COVERS_PAGE);

  // White or near-black, whichever reads better on the admin's colour (WCAG contrast): white
  // on a light green or yellow header would be hard to read.
  function textOn(hex) {
    const digits = hex.length === 4 ? hex.slice(1).replace(/./g, "$&$&") : hex.slice(1);
    const [r, g, b] = [0, 2, 4].map((i) => {
      const c = parseInt(digits.slice(i, i + 2), 16) / 255;
      return c <= 0.04045 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
    });
    const light = 0.2126 * r + 0.7152 * g + 0.0722 * b;
    return 1.05 / (light + 0.05) >= (light + 0.05) / 0.05 ? "#fff" : "#111827";
  }

  function mount() {
    host = document.createElement("threadline-chat");
    host.dataset.inbox = KEY;
    host.hidden = true; // until its stylesheet has loaded: no flash of an unstyled widget
    const color = String(S.settings.color || "");
    if (/^#([0-9a-f]{3}|[0-9a-f]{6})$/i.test(color)) { // CSSOM: the page's CSP allows it
      host.style.setProperty("--tl-accent", color);
      host.style.setProperty("--tl-on-accent", textOn(color));
    }
    const root = host.attachShadow({ mode: "open" });
    const css = el("link", { rel: "stylesheet", href: serverUrl("static/widget/widget.css") });
    css.addEventListener("load", () => { host.hidden = false; });
    root.append(css, build());
    restoreUnsent();
    (document.body || document.documentElement).append(host);
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && !S.socket) connect(); // phones kill sockets
      markRead();
      renderBadge();
    });
    window.addEventListener("online", () => { if (!S.socket) connect(); });
    // A file still on its way when the page goes is said on the next one not to have gone.
    window.addEventListener("pagehide", () => {
      S.pending.forEach((p) => { if (p.file && !p.id) keepUnsent(p); });
    });
    fullScreen.addEventListener("change", () => {
      ui.panel.setAttribute("aria-modal", String(fullScreen.matches));
    });
    render();
  }

  function build() {
    const title = S.settings.title || t("title");
    ui.launcher = el("button", {
      type: "button", class: "launcher", "aria-expanded": "false", "aria-controls": "tl-panel",
      onclick: () => setOpen(!S.open),
    }, icon(ICONS.chat));
    ui.badge = el("span", { class: "badge", "aria-hidden": "true", hidden: true });
    ui.launcher.append(ui.badge);

    const logo = S.settings.logo_url ? serverUrl(S.settings.logo_url) : "";
    ui.availability = el("p", { class: "availability" });
    ui.endButton = el("button", { type: "button", class: "link", text: t("end"), onclick: endChat });
    const close = el("button", {
      type: "button", class: "icon close", "aria-label": t("close"), onclick: () => setOpen(false),
    }, icon(ICONS.close));
    const header = el("header", {},
      logo ? el("img", { class: "logo", src: logo, alt: "" }) : null,
      el("div", { class: "heading" }, el("h2", { id: "tl-title", text: title }), ui.availability),
      ui.endButton, close);

    ui.status = el("p", { class: "status", role: "status", hidden: true, text: t("reconnecting") });
    ui.list = el("ol", {
      class: "messages", "aria-live": "polite", "aria-relevant": "additions", tabindex: "0",
      "aria-labelledby": "tl-title",
    }, el("li", { class: "message agent greeting" },
      el("p", { class: "text", dir: "auto", text: S.settings.greeting || "" })));
    ui.list.addEventListener("scroll", () => { S.atBottom = nearBottom(); });
    ui.typing = el("p", { class: "typing", "aria-live": "polite", hidden: true });
    ui.error = el("p", { class: "error", role: "alert", hidden: true });

    // Pre-chat: name and email, as the inbox asks for them; the labels say which may be left out.
    ui.nameInput = el("input", {
      id: "tl-name", name: "name", autocomplete: "name", maxlength: "200", dir: "auto",
    });
    ui.emailInput = el("input", {
      id: "tl-email", name: "email", type: "email", autocomplete: "email", maxlength: "254", dir: "auto",
    });
    const label = (field) => t(S.settings[`prechat_${field}`] === "required" ? field : `${field}_optional`);
    ui.nameField = el("p", {}, el("label", { for: "tl-name", text: label("name") }), ui.nameInput);
    ui.emailField = el("p", {}, el("label", { for: "tl-email", text: label("email") }), ui.emailInput);
    ui.startButton = el("button", { type: "submit", class: "primary", text: t("start") });
    ui.prechat = el("form", { class: "prechat", novalidate: true, onsubmit: startChat },
      ui.nameField, ui.emailField, el("p", { class: "error", role: "alert", hidden: true }),
      ui.startButton);

    // "No rush": answers also go by email, to the address given here.
    ui.noteEmail = el("input", {
      id: "tl-note-email", name: "email", type: "email", autocomplete: "email", maxlength: "254",
      dir: "auto",
    });
    ui.emailLabel = el("label", { for: "tl-note-email", text: t("ask_email") });
    ui.emailForm = el("form", { class: "email-form", novalidate: true, onsubmit: saveEmail },
      ui.emailLabel,
      el("span", { class: "row" }, ui.noteEmail, el("button", { type: "submit", text: t("save") })),
      el("p", { class: "error", role: "alert", hidden: true }));
    ui.noteText = el("p", { text: t("went_async") });
    ui.emailSaved = el("p", { class: "muted" });
    ui.note = el("div", { class: "note", hidden: true }, ui.noteText, ui.emailSaved);

    // After the chat ended: a rating, the transcript, a new conversation.
    ui.stars = [1, 2, 3, 4, 5].map((value) => el("button", {
      type: "button", class: "star", "aria-pressed": "false", text: String(value),
      onclick: () => chooseRating(value),
    }));
    ui.comment = el("textarea", { id: "tl-comment", rows: "2", maxlength: "2000", dir: "auto" });
    ui.rateSend = el("button", { type: "submit", class: "primary", text: t("send"), disabled: true });
    ui.rateForm = el("form", { class: "rate", onsubmit: rate },
      el("p", { id: "tl-rate", text: t("rate") }),
      el("div", { class: "stars", role: "group", "aria-labelledby": "tl-rate" }, ...ui.stars),
      el("label", { for: "tl-comment", text: t("comment") }), ui.comment, ui.rateSend);
    ui.rated = el("p", { class: "muted", text: t("rated"), hidden: true });
    ui.transcriptButton = el("button", { type: "button", text: t("transcript"), onclick: requestTranscript });
    ui.transcriptSent = el("p", { class: "muted", text: t("transcript_sent"), hidden: true });
    ui.newButton = el("button", { type: "button", class: "primary", text: t("new"), onclick: newConversation });
    ui.ended = el("div", { class: "ended", hidden: true },
      el("p", { class: "ended-title", text: t("ended") }), ui.rateForm, ui.rated,
      ui.transcriptButton, ui.transcriptSent, ui.newButton);

    // The composer: Enter sends, Shift+Enter is a new line.
    ui.textarea = el("textarea", {
      id: "tl-text", rows: "1", placeholder: t("placeholder"), dir: "auto",
      "aria-label": t("placeholder"), oninput: typed,
    });
    ui.textarea.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        sendText();
      }
    });
    ui.fileInput = el("input", {
      type: "file", class: "sr-only", tabindex: "-1", "aria-hidden": "true",
      accept: (S.settings.upload_types || []).join(","),
    });
    ui.fileInput.addEventListener("change", () => {
      const file = ui.fileInput.files[0];
      ui.fileInput.value = "";
      if (file) sendFile(file);
    });
    // Where agents read the draft as it is typed, the visitor knows.
    ui.previewNotice = el("p", { id: "tl-preview", class: "preview-notice", text: t("preview_notice"), hidden: true });
    if (S.settings.typing_preview) ui.textarea.setAttribute("aria-describedby", "tl-preview");
    ui.composer = el("form", {
      class: "composer", onsubmit: (event) => { event.preventDefault(); sendText(); },
    },
    el("button", {
      type: "button", class: "icon", "aria-label": t("attach"), title: t("attach"),
      onclick: () => ui.fileInput.click(),
    }, icon(ICONS.attach)),
    ui.fileInput, ui.textarea,
    el("button", { type: "submit", class: "icon send", "aria-label": t("send"), title: t("send") },
      icon(ICONS.send)));

    // Full screen the panel hides the page: a modal dialog, which Tab does not leave. Floating,
    // the page stays usable beside it.
    ui.panel = el("div", {
      id: "tl-panel", class: "panel", role: "dialog", "aria-modal": String(fullScreen.matches),
      "aria-label": title, hidden: true,
    }, header, ui.status, ui.list, ui.typing, ui.note, ui.prechat, ui.ended, ui.error, ui.previewNotice,
    ui.composer);
    ui.panel.addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.stopPropagation();
        setOpen(false);
      }
      if (event.key === "Tab" && fullScreen.matches) tabAround(event);
    });
    // The words' language (the server's choice, not the page's): screen readers speak them right.
    return el("div", { class: "root", lang: S.config.language }, ui.panel, ui.launcher);
  }

  // From the last control Tab goes to the first, and Shift+Tab the other way.
  function tabAround(event) {
    const stops = Array.from(ui.panel.querySelectorAll("a[href], button, input, textarea, [tabindex]"))
      .filter((node) => node.tabIndex >= 0 && !node.disabled && node.getClientRects().length > 0);
    const edge = event.shiftKey ? stops[0] : stops[stops.length - 1];
    if (!edge || host.shadowRoot.activeElement !== edge) return;
    event.preventDefault();
    (event.shiftKey ? stops[stops.length - 1] : stops[0]).focus();
  }

  function setOpen(open) {
    S.open = open;
    ui.panel.hidden = !open;
    ui.launcher.setAttribute("aria-expanded", String(open));
    render();
    if (open) {
      stickToBottom(true);
      focusFirst();
      markRead();
      S.pending.forEach((p) => { if (p.lost) forgetUnsent(p); }); // seen: not said again
    } else ui.launcher.focus();
  }

  function focusFirst() {
    if (!S.open) return;
    // The message box first: optional pre-chat fields are above it, for whoever wants them.
    const target = [ui.textarea, ui.nameInput, ui.emailInput, ui.stars[0], ui.noteEmail,
      ui.transcriptButton, ui.newButton]
      .find((input) => !input.closest("[hidden]") && input.getClientRects().length > 0);
    (target || ui.panel.querySelector("button.close")).focus();
  }

  function render() {
    if (!host) return;
    updateWaiting();
    const a = S.availability || {};
    // Closed: when we are back first, and the usual reply time counted from then.
    const time = a.reply_time || "";
    const q = S.conversation && S.conversation.live && S.conversation.queue;
    // An agent typing is answering: "number 8 in line" under "Dana is typing…" would not hold.
    const queued = a.online && q && q.position && ui.typing.hidden;
    // In line, the place and wait say when: "we reply in minutes" above them would not hold.
    const lines = queued ? []
      : a.online ? [t("online")]
        : a.opens_at ? [backAt(a.opens_at), t("offline_closed", { time })]
          : [t("offline", { time })];
    if (queued) {
      const wait = q.expected_wait_seconds;
      // An hour and more reads in hours: "about 10 h", not "about 600 min".
      const said = !wait ? t("queue", { position: q.position })
        : wait < 3600 ? t("queue_wait", { position: q.position, minutes: Math.max(1, Math.round(wait / 60)) })
          : t("queue_wait_hours", { position: q.position, hours: Math.round(wait / 3600) });
      lines.push(said);
    } else if (a.online && S.joined && S.conversation && S.conversation.live) {
      lines.push(t("joined", { name: S.joined }));
    }
    ui.availability.replaceChildren(...lines.map((line) => el("span", { text: line })));
    ui.panel.classList.toggle("online", Boolean(a.online));

    const c = S.conversation;
    const ended = Boolean(c && !c.live && !S.fresh);
    // An agent has answered (so far, or since the widget opened): a chat to end and to rate.
    const answered = Boolean(c && (c.answered
      || [...S.messages.values()].some((m) => m.from === "agent" && m.author)));
    const prechat = prechatState();
    ui.prechat.hidden = !prechat.show;
    ui.nameField.hidden = !prechat.name;
    ui.emailField.hidden = !prechat.email;
    ui.nameInput.required = S.settings.prechat_name === "required";
    ui.emailInput.required = S.settings.prechat_email === "required";
    ui.startButton.hidden = !prechat.blocking;
    ui.composer.hidden = ended || prechat.blocking;
    ui.previewNotice.hidden = ui.composer.hidden || !S.settings.typing_preview;
    // Nothing to end before an agent answered: the question stays open for them.
    ui.endButton.hidden = !(c && c.live && answered && !S.fresh);

    ui.ended.hidden = !ended;
    const rated = Boolean(c && c.rating);
    ui.rateForm.hidden = rated || !answered;
    ui.rated.hidden = !rated;
    ui.transcriptButton.hidden = S.transcriptSent;
    ui.transcriptSent.hidden = !S.transcriptSent;

    const asynchronous = !ended && !prechat.blocking && (!a.online || S.waited);
    // An optional pre-chat address the server refused, to correct even while agents are online
    // (and then the note says where answers go).
    const correcting = S.fixEmail && !ended;
    // Promised only where replies can go: an address of another customer's waits for an
    // agent to check it (and if it chatted here before, it was mailed the way back to that
    // chat: chat.continue_link_send; the note says so either way, telling nothing).
    const promise = S.visitor.email_pending ? "email_pending" : "email_saved";
    ui.emailSaved.textContent = S.visitor.email ? t(promise, { email: S.visitor.email }) : "";
    ui.emailSaved.hidden = !S.visitor.email;
    // One email form, where it is needed: for the transcript, or so answers can follow them.
    const emailFor = S.visitor.email ? null
      : ended && S.afterContact === "transcript" ? ui.ended
        : (asynchronous && !prechat.email) || correcting ? ui.note : null;
    if (emailFor && ui.emailForm.parentNode !== emailFor) emailFor.append(ui.emailForm);
    ui.emailLabel.textContent = t(emailFor === ui.ended ? "ask_email_transcript" : "ask_email");
    ui.emailForm.hidden = !emailFor;
    // "We will answer here and by email" only once there is an address; until then the note
    // asks for one (or the pre-chat form does, and the note has nothing to say).
    ui.noteText.hidden = !asynchronous || !S.visitor.email;
    ui.note.hidden = !(asynchronous || correcting) || (!S.visitor.email && emailFor !== ui.note);

    ui.status.hidden = S.ready || !S.everReady;
    renderSeen();
    renderBadge();
  }

  function renderBadge() {
    const count = S.open && document.visibilityState === "visible" ? 0 : unread();
    ui.badge.textContent = String(count);
    ui.badge.hidden = !count;
    const label = S.open ? t("close") : t("open");
    ui.launcher.setAttribute("aria-label", count ? `${label} (${count})` : label);
  }

  boot(0);
})();

// Threadline inbox: keeps the server-rendered page live and adds keyboard shortcuts.
// The socket only says that something changed; the page then re-fetches its live part from
// the server, so a dropped connection loses nothing: on reconnect it simply fetches again.
(function () {
  "use strict";
  // The server shows times in the agent's zone, which only the browser knows (see
  // helpdesk/middleware.py); from the next page on once it changes.
  const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  if (zone && !document.cookie.split("; ").includes(`tz=${zone}`)) {
    document.cookie = `tz=${zone}; path=/; max-age=31536000; SameSite=Lax`;
  }
  // A page a form sent back (a refused or held reply, a customer's form with its errors)
  // comes under the form's address: the address bar says the page's own, so that reloading
  // shows the page again instead of offering to send the form twice.
  const canonical = document.querySelector("link[rel=canonical]");
  if (canonical) {
    const own = new URL(canonical.href).pathname;
    if (location.pathname !== own) history.replaceState(history.state, "", own + location.hash);
  }
  const live = document.getElementById("live");
  const page = document.querySelector(".conversation[data-conversation]");
  const conversationId = page ? page.dataset.conversation : null;

  // Events come in bursts: fetch once they pause for 250 ms, but at least every second.
  let refreshTimer = null;
  let refreshDue = 0;
  let refreshes = 0; // only the latest fetch is shown: an older answer arriving late is dropped
  let refreshFailures = 0;
  function refresh() {
    if (!live) return;
    clearTimeout(refreshTimer);
    const now = Date.now();
    if (!refreshDue) refreshDue = now + 1000;
    refreshTimer = setTimeout(async function () {
      refreshDue = 0;
      const mine = ++refreshes;
      let html = null;
      let status = 0; // none: the network failed
      try {
        const response = await fetch(live.dataset.liveUrl, { credentials: "same-origin" });
        status = response.status;
        if (response.redirected && new URL(response.url).pathname === "/login/") {
          // Signed out (here or in another tab) or the session ran out: as when the socket
          // says so, to the sign-in page, which comes back here. Drafts stay in the browser.
          return signIn();
        }
        if (response.ok) html = await response.text();
      } catch (error) {
        // The network failed this once: tried again below.
      }
      if (mine !== refreshes) return;
      if (html === null) {
        // A refusal is not tried again: what is on screen is no longer this agent's to see
        // (their team left, the inbox handed to another team). Said where they look.
        if (status >= 400 && status < 500) return gone();
        // What changed must still show: a busy server's one failed answer is no reason for
        // the list to stay stale until the next event. Tried again, less often each time.
        refreshFailures = Math.min(refreshFailures + 1, 5);
        clearTimeout(refreshTimer);
        refreshTimer = setTimeout(refresh, 1000 * 2 ** refreshFailures);
        return;
      }
      refreshFailures = 0;
      const goneNotice = document.querySelector("[data-gone]"); // back in reach after all
      if (goneNotice) goneNotice.remove();
      const selected = document.querySelector(".rows li.selected");
      // A refresh never moves focus: the control that had it gets it back (focusPlace).
      const focused = focusPlace(document.activeElement);
      // Conversations picked for a bulk action stay picked, wherever they moved to.
      const picked = new Set(Array.from(live.querySelectorAll(".pick:checked"), function (el) { return el.value; }));
      // Messages marked new when a reply was held (conversation_reply) stay marked.
      const marked = Array.from(live.querySelectorAll("li.message.new"), function (li) { return li.id; });
      // What the agent opened in a message (its quoted history, the sender's formatting)
      // stays open, by the message's id and the part's place in it.
      const opened = Array.from(live.querySelectorAll("li[id] details[open]"), function (part) {
        const li = part.closest("li[id]");
        return [li.id, Array.from(li.querySelectorAll("details")).indexOf(part)];
      });
      const anchor = viewAnchor();
      const shownBefore = new Set(Array.from(live.querySelectorAll("li.message[id]"), (li) => li.id));
      live.innerHTML = html;
      arrivedSay(shownBefore);
      if (anchor) anchorKeep(anchor);
      marked.forEach(function (id) { markNew(document.getElementById(id)); });
      opened.forEach(function ([id, place]) {
        const li = document.getElementById(id);
        const part = li && li.querySelectorAll("details")[place];
        if (part) part.open = true;
      });
      live.querySelectorAll(".pick").forEach(function (el) { el.checked = picked.has(el.value); });
      updatePicked();
      // What the agent has now seen, so that a reply sent from here is not stale against it:
      // only while the reply box is empty. A message that arrives while they write may change
      // the answer: Send then holds the reply once, with what arrived marked (holdStale). In a
      // live chat, where the visitor's lines come one after another under the agent's eyes,
      // what the page shows counts as seen.
      const seen = document.querySelector("input[data-seen]");
      const timeline = live.querySelector("[data-timeline]");
      const draft = document.getElementById("reply-text");
      if (seen && timeline && (!(draft && draft.value.trim()) || replyingInChat())) {
        seen.value = timeline.dataset.seen;
      }
      // Who resolved, reassigned or transferred it meanwhile: only while the box is empty
      // too, even in a chat (a status is no line that arrives under the agent's eyes).
      const seenEvent = document.querySelector("input[data-seen-event]");
      if (seenEvent && timeline && !(draft && draft.value.trim())) {
        seenEvent.value = timeline.dataset.seenEvent;
      }
      if (timeline) changedUnderSay(timeline);
      if (selected) select(document.querySelector(`.rows li[data-conversation="${selected.dataset.conversation}"]`), false);
      if (focused) focusReturn(focused);
      if (timeline) syncFields(timeline.dataset);
      // The tags a teammate added or removed, unless the agent is on one of them.
      const tags = live.querySelector("template[data-tags]");
      const shownTags = document.querySelector("aside ul.tags");
      if (tags && shownTags && !shownTags.contains(document.activeElement)) {
        shownTags.replaceWith(tags.content.cloneNode(true));
      }
      // The customer, as a teammate (or this agent in another tab) edited, merged, blocked
      // them or gave them an address, unless the agent is on the card's Block button.
      const card = live.querySelector("template[data-customer-card]");
      const shownCard = document.querySelector("aside [data-customer]");
      if (card && shownCard && !shownCard.contains(document.activeElement)) {
        shownCard.replaceWith(card.content.cloneNode(true));
      }
      // Whether the chat visitor is on the site (they opened or closed the widget).
      const visitors = live.querySelector("template[data-visitors]");
      const shownVisitors = document.querySelector("aside [data-visitors]");
      if (visitors && shownVisitors) shownVisitors.replaceWith(visitors.content.cloneNode(true));
      const counts = live.querySelector("[data-counts]");
      if (counts) {
        Object.entries(JSON.parse(counts.dataset.counts)).forEach(function ([view, count]) {
          const badge = document.querySelector(`[data-count="${view}"]`);
          if (badge) badge.textContent = String(count);
        });
      }
      document.dispatchEvent(new CustomEvent("threadline:refreshed"));
    }, Math.max(0, Math.min(250, refreshDue - now)));
  }

  // The rows and messages of the live part, by what finds them again after a refresh.
  const KEYED = "li[id], li[data-conversation]";
  const keyOf = (el) => (el.id ? `#${el.id}` : `li[data-conversation="${el.dataset.conversation}"]`);
  // Where the focus is in the live part, as something its refresh keeps: the row or message
  // holding it and the control's place there (a row's link or box, a Retry button). Without
  // it, an agent who had tabbed to a row (not picked it with j/k) was sent back to the top
  // of the page by every change anyone made.
  const FOCUSABLE = "a[href], button, input, select, textarea, summary";
  function focusPlace(element) {
    if (!live.contains(element) || element === live) return null;
    const holder = element.closest(KEYED);
    if (!holder) return { key: null };
    const rows = Array.from(live.querySelectorAll(".rows li[data-conversation]"));
    return {
      key: keyOf(holder),
      control: Array.from(holder.querySelectorAll(FOCUSABLE)).indexOf(element),
      row: rows.indexOf(holder),
    };
  }
  function focusReturn(place) {
    const holder = place.key && live.querySelector(place.key);
    let control = holder && holder.querySelectorAll(FOCUSABLE)[place.control];
    if (!control && place.row >= 0) {
      // The row left the list (resolved, reassigned): the one now in its place.
      const rows = live.querySelectorAll(".rows li[data-conversation]");
      const row = rows[Math.min(place.row, rows.length - 1)];
      control = row && row.querySelector("a");
    }
    control = control || document.querySelector(".rows li.selected a");
    if (control) control.focus();
  }

  // Nothing moves under the agent's eyes when the live part is replaced: the row or message
  // under the pointer (about to be clicked), else the reply box when it is in view (they
  // type, messages arrive above it), else the first row or message in view stays where it
  // is on screen. The browser's own scroll anchoring cannot do it: the element it holds on
  // to is the one replaced. At the top of the page, the pointer elsewhere, what is new shows.
  function viewAnchor() {
    const pointed = live.querySelector("li[id]:hover, li[data-conversation]:hover");
    if (pointed) return { key: keyOf(pointed), top: pointed.getBoundingClientRect().top };
    const box = document.querySelector("[data-composer]");
    const boxTop = box && box.getBoundingClientRect().top;
    if (box && boxTop < window.innerHeight && box.getBoundingClientRect().bottom > 0) {
      return { element: box, top: boxTop };
    }
    if (!window.scrollY) return null;
    const shown = Array.from(live.querySelectorAll(KEYED))
      .find(function (el) { return el.getBoundingClientRect().bottom > 0; });
    return shown ? { key: keyOf(shown), top: shown.getBoundingClientRect().top } : null;
  }
  function anchorKeep(anchor) {
    const element = anchor.element || live.querySelector(anchor.key);
    if (element) window.scrollBy(0, element.getBoundingClientRect().top - anchor.top);
  }

  // What arrived, read out to an agent on a screen reader, who otherwise never learns that
  // the customer wrote: the timeline cannot be a live region, it is replaced whole. Whose
  // message it is and how it starts; the agent's own are not news.
  const arrivedNotice = document.querySelector("[data-arrived]");
  function arrivedSay(shownBefore) {
    if (!arrivedNotice) return;
    const arrived = Array.from(live.querySelectorAll("li.message[id]:not(.system):not([data-mine])"))
      .filter(function (li) { return !shownBefore.has(li.id); });
    if (!arrived.length) return;
    const last = arrived[arrived.length - 1];
    const kind = last.classList.contains("note") ? "Note" : last.classList.contains("inbound") ? "Message" : "Reply";
    const who = last.querySelector(".meta strong").textContent.trim();
    const text = last.querySelector(".body").textContent.trim().slice(0, 200);
    const more = arrived.length > 1 ? `${arrived.length} new messages, the last: ` : "";
    arrivedNotice.textContent = `${more}${kind} from ${who}: ${text}`;
  }

  function markNew(li) {
    if (!li || li.classList.contains("new")) return;
    li.classList.add("new");
    const badge = document.createElement("span");
    badge.className = "badge failed";
    badge.textContent = "new";
    const meta = li.querySelector(".meta"); // a message's; an event is one line
    if (meta) meta.prepend(badge);
    else li.prepend(badge, " ");
  }

  // Someone else answered, resolved, reassigned or transferred the conversation since this
  // page opened: said beside the reply box, where the agent writes, not only as one more line
  // of the timeline (as helpdesks do: a reply then often goes out over a teammate's). Held
  // once before sending too (holdStale, and the server: conversation_reply).
  const HANDLING = ["status", "assigned", "team"];
  const openedTimeline = live && live.querySelector("[data-timeline]");
  const opened = openedTimeline
    ? { message: Number(openedTimeline.dataset.seen), event: Number(openedTimeline.dataset.seenEvent) }
    : null;
  function changedBy(timeline, message, event) {
    const replies = Array.from(timeline.querySelectorAll("li.message.outbound:not([data-mine]), li.message.note:not([data-mine])"))
      .filter(function (li) { return Number(li.id.slice(1)) > message; });
    const changes = Array.from(timeline.querySelectorAll("li.event[data-event]:not([data-mine])"))
      .filter(function (li) { return HANDLING.includes(li.dataset.kind) && Number(li.dataset.event) > event; });
    return { replies: replies, changes: changes };
  }
  function changedUnderSay(timeline) {
    const notice = document.querySelector("[data-changed-under]");
    if (!notice || !opened) return;
    const { replies, changes } = changedBy(timeline, opened.message, opened.event);
    const said = replies.map(function (li) {
      const who = li.querySelector(".meta strong").textContent.trim();
      return li.classList.contains("note") ? `${who} added a note` : `${who} replied`;
    }).concat(changes.map(function (li) {
      // The timeline's own words ("Status changed by Dana: resolved"), without the time.
      return li.textContent.replace(/^\s*new\s+/, "").split(" · ")[0].trim();
    }));
    const text = said.length ? `Since you opened this conversation: ${said.join("; ")}.` : "";
    notice.hidden = !text;
    if (notice.textContent !== text) notice.textContent = text;
    describeComposer();
  }

  function replyingInChat() {
    const channel = document.querySelector("[data-channel-picker]");
    const option = channel && channel.selectedOptions[0];
    return Boolean(option && option.dataset.kind === "webchat");
  }

  // Before a reply goes: messages shown since the agent began writing (the customer's, a
  // teammate's), not yet counted as seen, hold it once, marked, as the server would
  // (conversation_reply), but without a reload, so chosen files stay attached. The server
  // still checks, for what the page never showed.
  function holdStale(composer) {
    const seen = composer.querySelector("input[data-seen]");
    const timeline = document.querySelector("[data-timeline]");
    const mode = composer.querySelector("[name=mode]:checked");
    if (!seen || !timeline || (mode && mode.value === "note")) return false;
    const arrived = Array.from(timeline.querySelectorAll("li.message:not(.system):not([data-mine])"))
      .filter(function (li) { return Number(li.id.slice(1)) > Number(seen.value); });
    const seenEvent = composer.querySelector("input[data-seen-event]");
    const { changes } = changedBy(timeline, Infinity, seenEvent ? Number(seenEvent.value) : Infinity);
    if (!arrived.length && !changes.length) return false;
    arrived.concat(changes).forEach(markNew);
    seen.value = timeline.dataset.seen;
    if (seenEvent) seenEvent.value = timeline.dataset.seenEvent;
    const notice = composer.querySelector("[data-stale]");
    notice.hidden = false;
    if (changes.length) {
      // The server's words for the same hold (conversation_reply).
      notice.querySelector("p").textContent = "Not sent: while you were writing, the conversation changed (marked new above): "
        + changes.map(function (li) { return li.textContent.replace(/^\s*new\s+/, "").split(" · ")[0].trim(); }).join("; ")
        + ". Press Send again to send your reply as it is: it goes to the customer, and the conversation keeps the status and assignee it has now.";
    }
    arrived.concat(changes)[0].scrollIntoView({ block: "center" });
    describeComposer();
    return true;
  }

  // The side panel's fields follow what others changed (assignee, status, priority, team),
  // and "Send on" the channel the customer last wrote on (they left the chat for email, or
  // came back to it), except one the agent is editing: focused, or changed and not yet sent.
  const SYNCED = ["assignee", "status", "priority", "team", "identity"];
  const shown = {}; // what each field showed from the server
  SYNCED.forEach(function (name) {
    const field = document.getElementById(name);
    if (field) shown[name] = field.value;
  });
  function syncFields(state) {
    SYNCED.forEach(function (name) {
      const field = document.getElementById(name);
      if (!field || field === document.activeElement || field.value !== shown[name]) return;
      if (!Array.from(field.options).some(function (o) { return o.value === state[name]; })) return;
      field.value = shown[name] = state[name];
      if (name === "identity") field.dispatchEvent(new Event("change")); // its hint follows
    });
    const chatEnd = document.querySelector("[data-chat-end]");
    if (chatEnd) chatEnd.hidden = !("chatLive" in state);
  }

  // SLA countdowns: the server renders "due in 12 min" / "overdue 5 min"; this keeps the words
  // true between page loads (same wording as conversations/templatetags/sla.py).
  function span(seconds) {
    let minutes = Math.max(0, Math.round(seconds / 60));
    if (minutes < 60) return `${minutes} min`;
    let hours = Math.floor(minutes / 60); minutes %= 60;
    if (hours < 24) return minutes ? `${hours} h ${minutes} min` : `${hours} h`;
    const days = Math.floor(hours / 24); hours %= 24;
    return hours ? `${days} d ${hours} h` : `${days} d`;
  }
  function tickSla() {
    document.querySelectorAll("[data-sla-due]").forEach(function (el) {
      const seconds = (Date.parse(el.dataset.slaDue) - Date.now()) / 1000;
      el.textContent = seconds >= 0 ? `due in ${span(seconds)}` : `overdue ${span(-seconds)}`;
      el.classList.toggle("overdue", seconds < 0);
      el.classList.toggle("soon", seconds >= 0 && seconds < 600);
    });
  }
  // "last seen just now" ages as it would on a reload (the wording of the `ago` filter).
  function ago(moment) {
    const minutes = Math.floor((Date.now() - Date.parse(moment)) / 60000);
    if (Number.isNaN(minutes)) return null;
    if (minutes < 1) return "just now";
    if (minutes < 60) return `${minutes} min ago`;
    if (minutes < 24 * 60) return `${Math.floor(minutes / 60)} h ago`;
    if (minutes < 30 * 24 * 60) return `${Math.floor(minutes / (24 * 60))} d ago`;
    return null; // a date by then, as rendered
  }
  function tick() {
    tickSla();
    document.querySelectorAll("time[data-ago]").forEach(function (el) {
      const words = ago(el.getAttribute("datetime"));
      if (words) el.textContent = words;
    });
  }
  tick();
  setInterval(tick, 15000);
  document.addEventListener("threadline:refreshed", tick);

  // Presence: who else has this conversation open, and who is typing. Each agent's state
  // comes from their socket's announcements; a typing state without news for 5 s is over.
  const presence = document.querySelector("[data-presence]");
  const others = new Map(); // agent id -> { name, state, mode, timer }
  const TYPING_EXPIRES = 5000;
  function showPresence() {
    if (!presence) return;
    const phrases = Array.from(others.values()).map(function (other) {
      if (other.state !== "typing") return `${other.name} is viewing`;
      return `${other.name} is typing ${other.mode === "note" ? "a note" : "a reply"}…`;
    });
    if (visitor.typing) {
      // The draft is customer text: it only ever goes in through textContent.
      phrases.push(visitor.draft ? `The customer is typing: “${visitor.draft}”` : "The customer is typing…");
    }
    const text = phrases.join(" · ");
    if (presence.textContent !== text) presence.textContent = text; // no repeats for readers
  }
  function onPresence(data) {
    if (String(data.conversation) !== conversationId) return;
    const id = data.agent.id;
    const other = others.get(id) || { name: data.agent.name };
    clearTimeout(other.timer);
    if (data.state === "left") others.delete(id);
    else {
      other.state = data.state;
      other.mode = data.mode;
      if (data.state === "typing") {
        other.timer = setTimeout(function () { other.state = "viewing"; showPresence(); }, TYPING_EXPIRES);
      }
      others.set(id, other);
    }
    showPresence();
  }

  // The chat visitor typing (with their draft where the inbox allows agents to see it).
  const visitor = { typing: false, draft: "", timer: null };
  function onVisitorTyping(data) {
    if (String(data.conversation) !== conversationId) return;
    clearTimeout(visitor.timer);
    visitor.typing = data.typing;
    visitor.draft = data.draft || "";
    if (data.typing) {
      visitor.timer = setTimeout(function () { visitor.typing = false; showPresence(); }, TYPING_EXPIRES);
    }
    showPresence();
  }

  // The customer's messages on screen are read: tell the server (the widget shows "Seen").
  // So are the agent's notifications about it: the bell forgets those it counted meanwhile.
  function markRead() {
    if (!conversationId || document.hidden || !socket || socket.readyState !== WebSocket.OPEN) return;
    const inbound = document.querySelectorAll(".timeline li.message.inbound");
    const last = inbound.length ? Number(inbound[inbound.length - 1].id.slice(1)) : 0;
    socket.send(JSON.stringify({ action: "read", conversation: Number(conversationId), message: last }));
    if (unread && countedHere) {
      unread.textContent = String(Math.max(0, Number(unread.textContent || 0) - countedHere));
      unread.hidden = unread.textContent === "0";
      countedHere = 0;
    }
  }
  document.addEventListener("threadline:refreshed", markRead);
  document.addEventListener("visibilitychange", markRead);

  // A draft is kept in the browser, so nothing typed is lost on the way.
  function signIn() {
    location.assign(`/login/?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  function gone() {
    if (document.querySelector("[data-gone]")) return;
    const notice = document.createElement("p");
    notice.className = "error";
    notice.setAttribute("role", "alert");
    notice.dataset.gone = "";
    notice.append(
      conversationId ? "You can no longer see this conversation: what is shown is as it was. " : "This list can no longer be brought up to date. ",
      Object.assign(document.createElement("a"), { href: "/inbox/", textContent: "Back to the inbox" }),
    );
    live.before(notice);
  }

  // While the socket is down (the network, or Redis on the server) nothing tells this page
  // what changes: it says so, until the socket is back (and the page fetches what it missed).
  function notLive(down) {
    const notice = document.querySelector("[data-not-live]");
    if (!down) {
      if (notice) notice.remove();
      return;
    }
    if (notice || !live) return;
    const shown = document.createElement("p");
    shown.className = "not-live";
    shown.setAttribute("role", "status");
    shown.dataset.notLive = "";
    shown.textContent = "Not live: reconnecting. What is shown may be out of date.";
    live.before(shown);
  }

  let socket = null;
  let retry = 500;
  // While this page is open the agent counts as there (the widget's "online").
  setInterval(function () {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    // With the newest message this page shows: one whose event was lost (Redis down while the
    // socket stayed open) is told in answer, and the page fetches it.
    const timeline = live && live.querySelector("[data-timeline]");
    const seen = timeline ? Number(timeline.dataset.seen) : null;
    // A list, with the newest message and event of all when it was fetched: one of its rows
    // changed since, its event lost, the socket says so and the list fetches itself again.
    const rows = live && live.querySelector("[data-rows][data-seen]");
    const list = rows ? JSON.parse(rows.dataset.seen) : null;
    socket.send(JSON.stringify({ action: "ping", conversation: Number(conversationId) || null, seen: seen, list: list }));
  }, 30000); // the server checks who the agent is now on one a minute at most
  // A list's filters are saved as they are on screen, applied or not: the form's hidden
  // query holds those the page was loaded with (what is saved without the script).
  document.addEventListener("submit", function (event) {
    const filters = document.querySelector("form.filters");
    if (!event.target.matches("form.save-view") || !filters) return;
    const query = new URLSearchParams();
    new FormData(filters).forEach(function (value, name) { if (String(value).trim()) query.append(name, String(value).trim()); });
    event.target.querySelector("[name=query]").value = query.toString();
  });

  // This page's own merge: the form's answer takes the agent to the conversation merged
  // into, and the "merged" event, which comes first, must not send them back here.
  let merging = false;
  const mergeForm = document.getElementById("merge");
  if (mergeForm) mergeForm.addEventListener("submit", function () { merging = true; });
  window.addEventListener("pageshow", function (event) { if (event.persisted) merging = false; });
  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    socket = new WebSocket(`${scheme}://${location.host}/ws/agent/`);
    socket.addEventListener("open", function () {
      retry = 500;
      notLive(false);
      if (conversationId) socket.send(JSON.stringify({ action: "subscribe", conversation: Number(conversationId) }));
      if (Date.now() - typedUnsaid < 5000) announceTyping();
      refresh(); // catch up on whatever happened while disconnected
    });
    socket.addEventListener("message", function (message) {
      const data = JSON.parse(message.data);
      if (data.type === "notification") return notify(data);
      if (data.type === "presence") return onPresence(data);
      if (data.type === "visitor_typing") return onVisitorTyping(data);
      if (data.type !== "conversation") return;
      if (data.event === "erased" && String(data.conversation) === conversationId) {
        location.assign(document.querySelector("a.brand").href); // it no longer exists: the list
        return;
      }
      if (data.event === "merged" && data.target && String(data.conversation) === conversationId && !merging) {
        // No more replies here: the page says where, and the draft goes there. (Not reload():
        // this page may be the answer to a POST.)
        location.assign(`/inbox/${conversationId}/`);
        return;
      }
      if (!conversationId || String(data.conversation) === conversationId) refresh();
    });
    socket.addEventListener("close", function (event) {
      // Whoever is still there answers when this page subscribes again.
      others.forEach(function (other) { clearTimeout(other.timer); });
      others.clear();
      showPresence();
      // Signed out (here or in another tab) or deactivated: the sign-in page says which.
      if (event.code === 4401) return signIn();
      notLive(true);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 15000);
    });
  }
  if (live || document.querySelector("[data-notifications]")) connect();

  // Notifications: the bell's count, a desktop notification if allowed, a short tone.
  const unread = document.querySelector("[data-unread]");
  let countedHere = 0; // of this page's conversation, while the agent was elsewhere
  let audio = null; // the notification tone's (below)
  function notify(data) {
    const here = Boolean(conversationId) && String(data.conversation) === conversationId;
    if (!conversationId) refresh(); // the notifications page lists it
    if (here && !document.hidden) {
      markRead(); // news about what is on screen: read as it comes
    } else if (unread) {
      unread.textContent = String(Number(unread.textContent || 0) + 1);
      unread.hidden = false;
      if (here) countedHere += 1;
    }
    if (window.Notification && Notification.permission === "granted" && document.hidden) {
      const shown = new Notification("Threadline", { body: data.text, tag: `c${data.conversation}` });
      shown.onclick = function () { window.focus(); location.href = `/inbox/${data.conversation}/`; };
    }
    try {
      // One audio context for the page's whole life: each holds an audio thread until
      // closed, and a new one per notification piled up hundreds over a working day.
      audio = audio || new (window.AudioContext || window.webkitAudioContext)();
      if (audio.state === "suspended") audio.resume();
      const tone = audio.createOscillator();
      const gain = audio.createGain();
      gain.gain.value = 0.05;
      tone.frequency.value = 880;
      tone.connect(gain).connect(audio.destination);
      tone.start();
      tone.stop(audio.currentTime + 0.12);
    } catch (error) { /* no audio: the badge is enough */ }
  }
  const enable = document.querySelector("[data-enable-desktop]");
  if (enable && window.Notification && Notification.permission === "default") {
    enable.hidden = false;
    enable.addEventListener("click", function () {
      Notification.requestPermission().then(function () { enable.hidden = true; });
    });
  }

  // Selects that apply themselves (availability, the reports' period and team): at once when
  // picked with the mouse; from the keyboard, where the arrows walk through the options (and
  // "away" on the way to "offline" would hand chats back), on Enter or when the focus leaves.
  document.querySelectorAll("[data-autosubmit]").forEach(function (el) {
    const shown = el.value;
    let walking = false;
    let sent = false;
    function apply() {
      if (sent || el.value === shown) return;
      sent = true;
      el.form.submit();
    }
    el.addEventListener("keydown", function (event) {
      walking = event.key !== "Enter";
      if (event.key === "Enter") { event.preventDefault(); apply(); }
    });
    el.addEventListener("pointerdown", function () { walking = false; });
    el.addEventListener("change", function () { if (!walking) apply(); });
    el.addEventListener("blur", apply);
  });

  // The side panel's menus apply on Enter, as a text field's form is sent: "a", the arrows,
  // Enter assigns, without hunting for the button (Enter on a menu does nothing otherwise).
  ["assignee", "status", "priority", "team"].forEach(function (name) {
    const field = document.querySelector(`.side #${name}`);
    if (!field) return;
    field.addEventListener("keydown", function (event) {
      if (event.key !== "Enter" || event.altKey || event.ctrlKey || event.metaKey) return;
      event.preventDefault();
      field.form.requestSubmit();
    });
  });

  // A side-panel form reloads the page: the focus comes back to the field it was in (or the
  // field of the button pressed), not to the top of the page, ten Tabs away for a keyboard
  // user. Not after a shortcut ("e"): the focus was on nothing, and stays so for the next.
  const FOCUS_BACK = "threadline:focus-back";
  document.addEventListener("submit", function (event) {
    const active = document.activeElement;
    if (event.defaultPrevented || !event.target.closest(".side") || !event.target.contains(active)) return;
    const field = active.id ? active : event.target.querySelector("[id]");
    try {
      if (field) sessionStorage.setItem(FOCUS_BACK, JSON.stringify({ page: location.pathname, id: field.id }));
    } catch (error) { /* storage refused: the top of the page, as before */ }
  });
  try {
    const back = JSON.parse(sessionStorage.getItem(FOCUS_BACK));
    sessionStorage.removeItem(FOCUS_BACK);
    const field = back && back.page === location.pathname && document.getElementById(back.id);
    if (field && field.closest(".side")) field.focus();
  } catch (error) { /* nothing kept */ }

  // Picking a snooze time means snoozing.
  const snoozeTime = document.getElementById("snoozed_until");
  if (snoozeTime) {
    snoozeTime.addEventListener("change", function () {
      if (snoozeTime.value) document.getElementById("status").value = "snoozed";
    });
  }

  // List: pick conversations for one action on them all (x picks the highlighted row).
  const bulk = document.querySelector("[data-bulk]");
  function updatePicked() {
    if (!bulk) return;
    const all = live.querySelectorAll(".pick");
    const count = live.querySelectorAll(".pick:checked").length;
    bulk.querySelector("[data-picked]").textContent = count ? `${count} selected` : "Select all";
    const allBox = bulk.querySelector("[data-pick-all]");
    allBox.checked = count > 0 && count === all.length;
    allBox.indeterminate = count > 0 && count < all.length;
    bulk.querySelector("button").disabled = count === 0;
  }
  if (bulk) {
    bulk.querySelector("[data-pick-all]").addEventListener("change", function (event) {
      live.querySelectorAll(".pick").forEach(function (el) { el.checked = event.target.checked; });
      updatePicked();
    });
    live.addEventListener("change", function (event) { if (event.target.matches(".pick")) updatePicked(); });
    updatePicked();
  }

  // List: j/k move, Enter opens (the row's link has the focus).
  function select(li, focus = true) {
    if (!li) return;
    document.querySelectorAll(".rows li.selected").forEach(function (el) { el.classList.remove("selected"); });
    li.classList.add("selected");
    if (focus) li.querySelector("a").focus();
  }
  // A bulk action's answer is the same list at the same page (conversation_bulk), which the
  // browser shows from its top with the focus nowhere: the agent is put back where they
  // were, scrolled as they were, on the row now where the first one they picked was (the
  // next to work on, those acted on having perhaps left the list). The flash says what
  // was done.
  const BULK_BACK = "threadline:bulk-back";
  if (bulk) {
    bulk.addEventListener("submit", function (event) {
      if (event.defaultPrevented) return;
      const rows = Array.from(live.querySelectorAll(".rows li[data-conversation]"));
      const row = rows.findIndex(function (li) { return li.querySelector(".pick:checked"); });
      try {
        sessionStorage.setItem(BULK_BACK, JSON.stringify({ page: location.pathname, scroll: window.scrollY, row: row }));
      } catch (error) { /* storage refused: the list's top, as before */ }
    });
    let back = null;
    try {
      back = JSON.parse(sessionStorage.getItem(BULK_BACK));
      sessionStorage.removeItem(BULK_BACK);
    } catch (error) { back = null; }
    if (back && back.page === location.pathname) {
      const rows = live.querySelectorAll(".rows li[data-conversation]");
      const li = rows.length && back.row >= 0 ? rows[Math.min(back.row, rows.length - 1)] : null;
      if (li) {
        select(li, false);
        li.querySelector("a").focus({ preventScroll: true });
      }
      window.scrollTo(0, Number(back.scroll) || 0);
      // The flash saying what was done stays in sight too, as long as the row does.
      const flash = document.querySelector(".flash");
      const flashTop = flash ? flash.getBoundingClientRect().top : 0;
      if (flashTop < 0 && (!li || li.getBoundingClientRect().bottom - flashTop < window.innerHeight)) {
        window.scrollBy(0, flashTop);
      }
    }
  }
  const shortcuts = document.getElementById("shortcuts");
  // Closing it gives focus back where it was, or to the picked row when a live refresh
  // replaced the list meanwhile: Enter opens it, as before. Unless a key pressed since (the
  // close event comes a moment later) already put focus somewhere.
  let focusedBefore = null;
  function showShortcuts() {
    if (!shortcuts || shortcuts.open) return;
    focusedBefore = document.activeElement;
    shortcuts.showModal();
  }
  if (shortcuts) {
    shortcuts.addEventListener("close", function () {
      const now = document.activeElement;
      if (now && now !== document.body && !shortcuts.contains(now)) return;
      const picked = document.querySelector(".rows li.selected a");
      const back = focusedBefore && focusedBefore.isConnected ? focusedBefore : picked;
      if (back) back.focus();
    });
  }
  document.querySelectorAll("[data-shortcuts]").forEach(function (button) {
    button.addEventListener("click", showShortcuts);
  });
  // One-key shortcuts can be turned off (in their dialog, kept in this browser): a word
  // said to speech input, or typed while the focus is not in the reply box, is a string of
  // shortcuts otherwise ("hello": e resolves the conversation). WCAG 2.1.4.
  const KEYS_OFF = "threadline:shortcuts-off";
  const keysOffBox = document.querySelector("[data-shortcuts-off]");
  function keysOff() {
    try { return localStorage.getItem(KEYS_OFF) === "1"; } catch (error) { return false; }
  }
  if (keysOffBox) {
    keysOffBox.checked = keysOff();
    keysOffBox.addEventListener("change", function () {
      try {
        if (keysOffBox.checked) localStorage.setItem(KEYS_OFF, "1");
        else localStorage.removeItem(KEYS_OFF);
      } catch (error) { /* storage refused: as it was */ }
    });
  }
  const composer = document.querySelector("[data-composer]");
  const text = composer && composer.querySelector("textarea");
  document.addEventListener("keydown", function (event) {
    if (shortcuts && shortcuts.open) return; // the page behind the dialog is out of reach
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(event.target.tagName) && event.target.type !== "checkbox";
    if (composer && event.key === "Enter" && (event.ctrlKey || event.metaKey) && event.target === text) {
      event.preventDefault();
      composer.requestSubmit();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key !== "Enter" && keysOff()) return;
    const rows = Array.from(document.querySelectorAll(".rows li[data-conversation]"));
    // A row the agent tabbed to is the current one, as if reached with j/k: x picks it and
    // j goes on from it, not from a row highlighted before.
    if (event.target.matches(".rows li[data-conversation] > a")) select(event.target.parentElement, false);
    const current = rows.indexOf(document.querySelector(".rows li.selected"));
    if (event.key === "j") select(rows[Math.min(current + 1, rows.length - 1)]);
    else if (event.key === "k") select(rows[Math.max(current - 1, 0)]);
    else if ((event.key === "r" || event.key === "n") && composer) {
      event.preventDefault();
      const mode = composer.querySelector(`[value="${event.key === "r" ? "reply" : "note"}"]`);
      if (!mode.disabled) mode.checked = true; // no reply where there is no address
      updateHint();
      draftSave();
      text.focus();
    }
    else if (event.key === "e" && composer) {
      const status = document.getElementById("status");
      status.value = "resolved";
      status.form.requestSubmit();
    }
    else if (event.key === "a" && composer) { event.preventDefault(); document.getElementById("assignee").focus(); }
    else if (event.key === "x" && bulk) {
      const pick = document.querySelector(".rows li.selected .pick");
      if (pick) { pick.checked = !pick.checked; updatePicked(); }
    }
    else if (event.key === "?") showShortcuts();
    else if (event.key === "Enter" && (event.target === document.body || (shortcuts && shortcuts.contains(event.target)))) {
      // Focus on nothing (a closed dialog's, or a refreshed row's): Enter still opens the
      // picked row, whether or not the dialog's close event has given its link focus yet.
      const link = document.querySelector(".rows li.selected a");
      if (link) link.click();
    }
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
  // An approved template (WhatsApp) for the address picked, where its inbox has them: the
  // template goes alone, so the box shows its text, read-only, and gives back what was typed.
  let typed = null;
  function updateTemplate(note, option) {
    let chosen = null;
    composer.querySelectorAll("[data-template-for]").forEach(function (label) {
      const mine = !note && option && label.dataset.templateFor === option.value;
      const select = label.querySelector("select");
      label.hidden = !mine;
      select.disabled = !mine;
      if (mine && select.value) chosen = select.selectedOptions[0];
    });
    if (chosen) {
      if (typed === null) typed = text.value;
      text.value = chosen.dataset.body;
    } else if (typed !== null) {
      text.value = typed;
      typed = null;
    }
    text.readOnly = Boolean(chosen);
    return chosen;
  }
  // What the composer warns of (the channel's hint or a teammate named in a reply, a held
  // reply, what changed under the agent, a refusal) describes the box: a screen reader says
  // it on coming to the box, not only if the agent goes looking. Only what shows: a hidden
  // element named there would be read all the same.
  const WARNINGS = ["reply-changed", "reply-stale", "reply-error", "reply-hint"];
  function describeComposer() {
    if (!text) return;
    const shownIds = WARNINGS.filter(function (id) {
      const el = document.getElementById(id);
      return el && !el.hidden && el.textContent.trim();
    });
    if (shownIds.length) text.setAttribute("aria-describedby", shownIds.join(" "));
    else text.removeAttribute("aria-describedby");
  }
  function updateHint() {
    hintUpdate();
    describeComposer();
  }
  function hintUpdate() {
    if (!hint || !picker) return;
    const note = composer.querySelector('[name=mode][value="note"]').checked;
    picker.disabled = note; // a note goes nowhere
    hint.classList.remove("error"); // a teammate named in a reply (below)
    const option = picker.selectedOptions[0];
    const template = updateTemplate(note, option);
    if (note) { hint.textContent = "Only agents see notes; @name tells a teammate."; return; }
    const kind = option ? option.dataset.kind : "";
    if (template) {
      hint.textContent = "The approved template goes as it is, alone.";
    } else if (option && option.dataset.refusal) {
      hint.textContent = option.dataset.refusal; // said before a word is written
    } else if (kind === "sms") {
      const s = segments(text.value);
      hint.textContent = `${s.units} ${s.gsm ? "GSM-7" : "UCS-2"} characters · ${s.count} SMS`;
    } else if (kind === "messenger" || kind === "whatsapp") {
      hint.textContent = "Free replies within 24 hours of the customer's last message.";
    } else if (kind === "email") {
      hint.textContent = "Sent by email, threaded with the customer's mail.";
    } else hint.textContent = "";
    const files = composer.querySelector("[name=files]");
    if (files && files.files.length && option && option.dataset.files) {
      hint.textContent += `${hint.textContent ? " · " : ""}Files: ${option.dataset.files}.`;
    }
    // A teammate @named in a reply: the customer would read what was meant for them.
    const named = teammateNamed(text.value);
    if (named) {
      hint.textContent = `@${named} is a teammate, and this reply goes to the customer: meant an internal note?`;
      hint.classList.add("error");
    }
  }
  const teammates = new Set((function () {
    try { return JSON.parse(document.getElementById("mentionable").textContent).map((p) => p.handle); } catch (error) { return []; }
  })());
  function teammateNamed(value) {
    for (const match of value.matchAll(/(?:^|\s)@([\p{L}\p{N}._+-]+)/gu)) {
      const handle = match[1].replace(/[.]+$/, "").toLowerCase(); // "@dana." ends a sentence
      if (teammates.has(handle)) return handle;
    }
    return null;
  }
  // Tell the others this agent is typing: at most once every 2 s while the keys go on.
  let typingSent = 0;
  let typedUnsaid = 0; // when a key went unsaid, the socket not open yet: said if still fresh
  function announceTyping() {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      typedUnsaid = Date.now();
      return;
    }
    typedUnsaid = 0;
    if (Date.now() - typingSent < 2000) return;
    typingSent = Date.now();
    const mode = composer.querySelector("[name=mode]:checked");
    socket.send(JSON.stringify({
      action: "typing", conversation: Number(conversationId), mode: mode ? mode.value : "reply",
    }));
  }
  if (text && conversationId) text.addEventListener("input", announceTyping);
  if (text) {
    text.addEventListener("input", updateHint);
    composer.querySelectorAll("[name=mode]").forEach(function (radio) { radio.addEventListener("change", updateHint); });
    if (picker) picker.addEventListener("change", updateHint);
    composer.querySelectorAll("[data-template-for] select").forEach(function (select) {
      select.addEventListener("change", updateHint);
    });
    composer.querySelector("[name=files]").addEventListener("change", updateHint);
    updateHint();
  }

  // The draft outlives the page: every action in the side panel, a macro, "e" and a visit to
  // the list reload it, and a half-written reply must survive that. Kept in this browser, per
  // agent and conversation, for a week, until the page shows it was sent.
  const DRAFT_DAYS = 7;
  const draftKey = text && conversationId ? `threadline:draft:${page.dataset.agent}:${conversationId}` : null;
  const sendOnce = composer && composer.querySelector("[name=client_id]");
  function draftSave(sending) {
    if (!draftKey) return;
    const mode = composer.querySelector("[name=mode]:checked");
    const draft = { text: text.value, mode: mode && mode.value, at: Date.now() };
    if (sending) draft.sending = sendOnce.value; // kept until the page shows it sent
    try {
      if (text.value.trim()) localStorage.setItem(draftKey, JSON.stringify(draft));
      else localStorage.removeItem(draftKey);
    } catch (error) { /* storage refused: the draft lives as long as the page */ }
  }
  // Merged while the agent wrote: what they wrote goes on in the conversation it was merged
  // into, after any draft already waiting there. A draft that went out to be sent moves only
  // if the page says the send was refused (else it was sent, and moved with the messages).
  const draftOf = (id) => `threadline:draft:${page.dataset.agent}:${id}`;
  function draftMove(from, to, refused) {
    try {
      const moving = JSON.parse(localStorage.getItem(draftOf(from)));
      // One that went out, with no refusal here, stays where it was: this page cannot tell.
      if (!moving || typeof moving.text !== "string" || !moving.text.trim() || (moving.sending && !refused)) return false;
      let there = null;
      try { there = JSON.parse(localStorage.getItem(draftOf(to))); } catch (error) { there = null; }
      const before = there && typeof there.text === "string" && there.text.trim() ? `${there.text}\n\n` : "";
      localStorage.setItem(draftOf(to), JSON.stringify({ text: before + moving.text, mode: moving.mode, at: Date.now() }));
      localStorage.removeItem(draftOf(from));
      return true;
    } catch (error) { return false; /* storage refused: the page shows the text to copy */ }
  }
  const mergedInto = document.querySelector("[data-merged-into]");
  if (mergedInto && conversationId) {
    const refused = document.querySelector("[data-unsent]");
    if (draftMove(conversationId, mergedInto.dataset.mergedInto, refused) && !refused) {
      mergedInto.append(` What you were writing waits in #${mergedInto.dataset.mergedInto}'s reply box.`);
    }
  }
  // Arrived here from a merge (one's own goes straight here): drafts begun in what was merged
  // into this conversation come along, before this page reads its own.
  if (page && conversationId && page.dataset.mergedFrom) {
    page.dataset.mergedFrom.split(" ").forEach(function (from) { draftMove(from, conversationId, false); });
  }
  if (draftKey) {
    let stored = null;
    try { stored = JSON.parse(localStorage.getItem(draftKey)); } catch (error) { stored = null; }
    const sent = stored && stored.sending && Array.from(document.querySelectorAll("[data-client-id]"))
      .some(function (li) { return li.dataset.clientId === stored.sending; });
    const stale = stored && !(Date.now() - stored.at < DRAFT_DAYS * 864e5);
    if (text.value.trim()) draftSave(); // sent back by the server, not sent: keep it
    else if (!stored || sent || stale || typeof stored.text !== "string") {
      try { localStorage.removeItem(draftKey); } catch (error) { /* see draftSave */ }
    } else {
      text.value = stored.text;
      const mode = composer.querySelector(`[name=mode][value="${stored.mode === "note" ? "note" : "reply"}"]`);
      if (mode && !mode.disabled) mode.checked = true;
      updateHint();
    }
    text.addEventListener("input", function () { draftSave(); });
    composer.querySelectorAll("[name=mode]").forEach(function (radio) {
      radio.addEventListener("change", function () { draftSave(); });
    });
    // The same conversation in another tab: its box follows what is written here, or the
    // agent who goes there finds it empty, and their next key there replaces the draft for
    // good (a reload here then brings back only that). Not while they write in this one,
    // unless the draft is gone: sent (or emptied) there, it must not be sent again from here.
    window.addEventListener("storage", function (event) {
      if (event.key !== draftKey) return;
      if (event.newValue !== null && !document.hidden && document.activeElement === text) return;
      let stored = null;
      try { stored = JSON.parse(event.newValue); } catch (error) { stored = null; }
      if (stored && stored.sending) return; // on its way from there: gone once it shows sent
      text.value = stored && typeof stored.text === "string" ? stored.text : "";
      const mode = stored && composer.querySelector(`[name=mode][value="${stored.mode === "note" ? "note" : "reply"}"]`);
      if (mode && !mode.disabled) mode.checked = true;
      updateHint();
    });
  }
  if (composer) {
    // Sent once: a second click or Ctrl+Enter while the first is on its way does nothing (the
    // server would drop the copy by its client id anyway), for as long as a send may take.
    composer.addEventListener("submit", function (event) {
      if (event.defaultPrevented) return;
      if (composer.dataset.sending || holdStale(composer)) { event.preventDefault(); return; }
      composer.dataset.sending = "1";
      setTimeout(function () { delete composer.dataset.sending; }, 15000);
      draftSave(true);
    });
    // Back to a page the browser kept: it can send again.
    window.addEventListener("pageshow", function () { delete composer.dataset.sending; });
  }
  // Buttons that do something the agent cannot take back (a macro writing to the customer)
  // ask first.
  document.addEventListener("submit", function (event) {
    const question = event.submitter && event.submitter.dataset.confirm;
    if (question && !window.confirm(question)) event.preventDefault();
  }, true);
})();

// Suggestions in the reply box, as the agent types: canned responses after a "/" that starts a
// line (searched on the server, already filled in for this conversation), and in a note the
// agents who may be @mentioned (those who can see the conversation). Arrows move, Enter or
// Tab inserts, Escape closes. Focus stays in the textarea; screen readers follow the
// highlighted option through aria-activedescendant. Text only: nothing shown is parsed as HTML.
(function () {
  "use strict";
  const text = document.getElementById("reply-text");
  if (!text) return;
  // An ARIA combobox (1.2): the box owns the suggestions' listbox, says whether it is shown,
  // and which option the arrows highlight. Still a box of several lines to type in.
  const lists = ["canned-list", "mention-list"].filter(function (id) { return document.getElementById(id); });
  if (!lists.length) return;
  text.setAttribute("role", "combobox");
  text.setAttribute("aria-multiline", "true");
  text.setAttribute("aria-autocomplete", "list");
  text.setAttribute("aria-haspopup", "listbox");
  text.setAttribute("aria-expanded", "false");
  text.setAttribute("aria-controls", lists[0]);

  // `pattern` finds the query just before the caret (its group 1, after a one-character sign);
  // `items(query, signal)` gives the options; `label(item)` what an option shows; `value(item)`
  // what replaces the sign and the query; `when()` whether to suggest at all just now.
  function picker(list, { pattern, items, label, value, when }) {
    let results = [];
    let active = -1;
    let timer = null;
    let request = null;
    let dismissed = null; // where the sign was when the agent pressed Escape: stay closed there

    function trigger() {
      if (when && !when()) return null;
      const before = text.value.slice(0, text.selectionStart);
      const match = pattern.exec(before);
      return match ? { start: before.length - match[1].length - 1, query: match[1] } : null;
    }

    function close() {
      clearTimeout(timer);
      if (request) request.abort();
      results = [];
      active = -1;
      if (list.hidden) return;
      list.hidden = true;
      list.replaceChildren();
      text.setAttribute("aria-expanded", "false");
      text.removeAttribute("aria-activedescendant");
    }

    function highlight(index) {
      active = index;
      Array.from(list.children).forEach(function (li, i) {
        li.setAttribute("aria-selected", String(i === index));
        if (i === index) {
          text.setAttribute("aria-activedescendant", li.id);
          li.scrollIntoView({ block: "nearest" });
        }
      });
    }

    function option(item, index) {
      const li = document.createElement("li");
      li.id = `${list.id}-${index}`;
      li.setAttribute("role", "option");
      li.append(...label(item));
      // mousedown, not click: the textarea must not lose focus (and close the list) first.
      li.addEventListener("mousedown", function (event) { event.preventDefault(); choose(index); });
      return li;
    }

    function show(found) {
      if (!found.length) return close();
      results = found;
      list.replaceChildren(...found.map(option));
      list.hidden = false;
      text.setAttribute("aria-controls", list.id);
      text.setAttribute("aria-expanded", "true");
      highlight(0);
    }

    function choose(index) {
      const item = results[index];
      const found = trigger();
      if (!item || !found) return close();
      text.setRangeText(value(item), found.start, text.selectionStart, "end");
      close();
      text.dispatchEvent(new Event("input", { bubbles: true })); // e.g. the SMS length hint
    }

    async function search(query) {
      if (request) request.abort();
      request = new AbortController();
      try {
        const found = await items(query, request.signal);
        const now = trigger();
        if (found && now && now.query === query) show(found); else if (!found) close();
      } catch (error) {
        if (error.name !== "AbortError") close();
      }
    }

    text.addEventListener("input", function () {
      const found = trigger();
      if (!found) dismissed = null;
      if (!found || found.start === dismissed) return close();
      clearTimeout(timer);
      timer = setTimeout(function () { search(found.query); }, 150);
    });

    text.addEventListener("keydown", function (event) {
      if (list.hidden || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        const step = event.key === "ArrowDown" ? 1 : -1;
        highlight((active + step + results.length) % results.length);
      } else if ((event.key === "Enter" || event.key === "Tab") && !event.shiftKey) {
        choose(active);
      } else if (event.key === "Escape") {
        const found = trigger();
        dismissed = found ? found.start : null;
        close();
      } else return;
      event.preventDefault();
      event.stopPropagation();
    });

    text.addEventListener("blur", close);
  }

  function span(className, content) {
    const el = document.createElement("span");
    el.className = className;
    el.textContent = content;
    return el;
  }

  const canned = document.getElementById("canned-list");
  if (canned && canned.dataset.cannedUrl) {
    picker(canned, {
      pattern: /(?:^|\n)\/([\p{L}\p{N}_-]*)$/u, // "/" alone lists them all
      items: async function (query, signal) {
        const response = await fetch(`${canned.dataset.cannedUrl}?q=${encodeURIComponent(query)}`, {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
          signal,
        });
        return response.ok ? response.json() : null;
      },
      label: (item) => [span("shortcut", `/${item.shortcut}`), ` ${item.title}`, span("preview", item.body)],
      value: (item) => item.body,
    });
  }

  const mentions = document.getElementById("mention-list");
  const agents = document.getElementById("mentionable");
  if (mentions && agents) {
    const people = JSON.parse(agents.textContent);
    const note = document.querySelector('[name=mode][value="note"]');
    picker(mentions, {
      pattern: /(?:^|\s)@([\p{L}\p{N}._+-]*)$/u,
      when: () => Boolean(note && note.checked), // a mention tells an agent of a note
      items: async function (query) {
        const q = query.toLowerCase();
        return people.filter((p) => p.handle.startsWith(q)
          || p.name.toLowerCase().split(/\s+/).some((word) => word.startsWith(q))).slice(0, 8);
      },
      label: (item) => [span("shortcut", `@${item.handle}`), ` ${item.name}`],
      value: (item) => `@${item.handle} `,
    });
  }
})();

// The kitchen and pass screen of orderflow: follows one location's WebSocket
// feed, shows the active orders as tickets and moves them through the
// lifecycle.
//
// A plain script with no dependencies. In a browser it starts the page; under
// Node.js (tests) it starts nothing and exports its functions through
// module.exports. The digest needs BigInt, so very old browsers cannot run it.
//
// Client rule, as the Python client in orderflow/client.py applies it:
// - apply an event iff seq == last + 1, and ignore seq <= last;
// - on seq > last + 1, or a heartbeat with head > last that no event follows
//   within 1 s, reconnect with since=last&epoch=E;
// - on a heartbeat with head == last whose digest differs from the digest of
//   the screen's own active orders, reconnect without since (snapshot);
// - on resync or a closed connection, reconnect with since, with exponential
//   backoff and jitter (at most 5 s).

(function () {
  "use strict";

  const SUBPROTOCOL = "orderflow.v1";

  // The page's own strings. The block between the markers is plain JSON, so
  // tests read it without running JavaScript. State and action names come
  // from the labels of GET /lifecycle instead. The language button and its
  // hint are written in the language they switch to, for its speakers.
  const STRINGS = /* strings-begin */ {
    "title": {"en": "Kitchen", "es": "Cocina"},
    "location": {"en": "Location {location}", "es": "Local {location}"},
    "switch_language": {"en": "Español", "es": "English"},
    "switch_language_hint": {"en": "Cambiar a español", "es": "Switch to English"},
    "status_connecting": {"en": "Connecting…", "es": "Conectando…"},
    "status_connected": {"en": "Connected", "es": "Conectado"},
    "status_reconnecting": {"en": "Reconnecting…", "es": "Reconectando…"},
    "status_offline": {"en": "Offline", "es": "Sin conexión"},
    "orders_one": {"en": "1 order", "es": "1 pedido"},
    "orders_other": {"en": "{count} orders", "es": "{count} pedidos"},
    "no_orders": {"en": "No active orders", "es": "No hay pedidos activos"},
    "order": {"en": "Order {id}", "es": "Pedido {id}"},
    "table": {"en": "Table {table}", "es": "Mesa {table}"},
    "age_now": {"en": "just now", "es": "ahora"},
    "age_minutes": {"en": "{minutes} min", "es": "{minutes} min"},
    "age_hours": {"en": "{hours} h {minutes} min", "es": "{hours} h {minutes} min"},
    "age_days": {"en": "{days} d {hours} h", "es": "{days} d {hours} h"},
    "notes": {"en": "Note: {notes}", "es": "Nota: {notes}"},
    "sending": {"en": "Sending…", "es": "Enviando…"},
    "reason_title": {"en": "{action}: order {id}", "es": "{action}: pedido {id}"},
    "reason_label": {"en": "Reason", "es": "Motivo"},
    "reason_missing": {"en": "Write a reason first.", "es": "Escribe el motivo."},
    "reason_quick_customer": {"en": "Cancelled by the customer", "es": "Cancelado por el cliente"},
    "reason_quick_stock": {"en": "Out of stock", "es": "Producto agotado"},
    "reason_quick_mistake": {"en": "Order taken by mistake", "es": "Error al tomar el pedido"},
    "reason_confirm": {"en": "Confirm", "es": "Confirmar"},
    "reason_back": {"en": "Go back", "es": "Volver"},
    "dismiss": {"en": "Close", "es": "Cerrar"},
    "error_version_conflict": {
      "en": "Order {id} changed on another screen. Check it and try again.",
      "es": "El pedido {id} cambió en otra pantalla. Revísalo y vuelve a intentarlo."
    },
    "error_invalid_transition": {
      "en": "Order {id} no longer allows that change.",
      "es": "El pedido {id} ya no admite ese cambio."
    },
    "error_reason_required": {
      "en": "Order {id}: a reason is required.",
      "es": "Pedido {id}: hay que indicar un motivo."
    },
    "error_not_found": {"en": "Order {id} no longer exists.", "es": "El pedido {id} ya no existe."},
    "error_forbidden": {
      "en": "Your access key does not allow this step.",
      "es": "Tu clave de acceso no permite este paso."
    },
    "error_unauthorized": {
      "en": "The access key is missing or not valid. Open the screen with a valid token.",
      "es": "Falta la clave de acceso o no es válida. Abre la pantalla con una clave de acceso válida."
    },
    "error_network": {
      "en": "Could not reach the server. Check order {id} before trying again.",
      "es": "No se pudo contactar con el servidor. Revisa el pedido {id} antes de volver a intentarlo."
    },
    "error_server": {
      "en": "The server could not save the change to order {id}. Try again.",
      "es": "El servidor no pudo guardar el cambio del pedido {id}. Vuelve a intentarlo."
    },
    "error_lifecycle": {
      "en": "Could not load the order states from the server. Retrying…",
      "es": "No se pudieron cargar los estados de los pedidos. Reintentando…"
    },
    "error_location": {
      "en": "The location in the address is not valid: {location}",
      "es": "El local de la dirección no es válido: {location}"
    }
  } /* strings-end */;

  const LANGUAGES = ["es", "en"];

  // Same rule as orderflow.core.validate_location.
  const LOCATION_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

  // Language.

  function pickLanguage(requested, browserLanguage) {
    const fromQuery = (requested || "").toLowerCase();
    for (const language of LANGUAGES) {
      if (fromQuery === language || fromQuery.startsWith(language + "-")) {
        return language;
      }
    }
    if ((browserLanguage || "").toLowerCase().startsWith("es")) {
      return "es";
    }
    return "en";
  }

  function translate(language, key, values) {
    const entry = STRINGS[key];
    const template = entry ? entry[language] || entry.en : key;
    return template.replace(/\{(\w+)\}/g, (whole, name) =>
      values && name in values ? String(values[name]) : whole
    );
  }

  // The label of a state or transition name in ``language``, else the name.
  function lifecycleLabel(lifecycle, language, name) {
    const labels = (lifecycle && lifecycle.labels && lifecycle.labels[language]) || {};
    return typeof labels[name] === "string" && labels[name] ? labels[name] : name;
  }

  function formatAge(milliseconds, language) {
    const minutes = Math.floor(Math.max(0, milliseconds) / 60000);
    if (minutes < 1) {
      return translate(language, "age_now");
    }
    if (minutes < 60) {
      return translate(language, "age_minutes", {minutes: minutes});
    }
    const hours = Math.floor(minutes / 60);
    if (hours < 24) {
      return translate(language, "age_hours", {hours: hours, minutes: minutes % 60});
    }
    return translate(language, "age_days", {days: Math.floor(hours / 24), hours: hours % 24});
  }

  // Digest: the 64-bit FNV-1a hash of the UTF-8 bytes of id + "\n" + version
  // for each active order, summed modulo 2^64, as 16 lowercase hex digits.

  const FNV_OFFSET = 0xcbf29ce484222325n;
  const FNV_PRIME = 0x100000001b3n;
  const MASK_64 = 0xffffffffffffffffn;
  const EMPTY_DIGEST = "0000000000000000";
  const utf8 = new TextEncoder();

  function fnv1a64(bytes) {
    let hash = FNV_OFFSET;
    for (const byte of bytes) {
      hash = ((hash ^ BigInt(byte)) * FNV_PRIME) & MASK_64;
    }
    return hash;
  }

  function contribution(orderId, version) {
    return fnv1a64(utf8.encode(orderId + "\n" + String(version)));
  }

  function formatDigest(total) {
    return (total & MASK_64).toString(16).padStart(16, "0");
  }

  function digestOf(pairs) {
    let total = 0n;
    for (const [orderId, version] of pairs) {
      total += contribution(orderId, version);
    }
    return formatDigest(total);
  }

  // The client rule as pure decisions.

  // Decide what to do with an event: "apply" it, drop a "duplicate", resume
  // after a "gap", or resume after an "invalid" seq that is not a whole number.
  function decideEvent(seq, last) {
    if (!Number.isSafeInteger(seq)) {
      return "invalid";
    }
    if (seq <= last) {
      return "duplicate";
    }
    return seq === last + 1 ? "apply" : "gap";
  }

  // Decide what a heartbeat requires: "wait" 1 s for the events up to its
  // head, take a "snapshot" because the state built differs, or "none".
  function heartbeatAction(head, digest, last, ownDigest) {
    if (head > last) {
      return "wait";
    }
    if (head === last && digest !== ownDigest) {
      return "snapshot";
    }
    return "none";
  }

  // The WebSocket URL: a resume (since + epoch) when the screen has a cursor
  // and no snapshot is needed, else a snapshot request.
  function feedUrl(pageHref, options) {
    const url = new URL("ws", pageHref);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    const query = new URLSearchParams();
    query.set("location", options.location || "main");
    if (options.epoch !== null && options.epoch !== undefined && !options.snapshot) {
      query.set("since", String(options.last));
      query.set("epoch", options.epoch);
    }
    if (options.token) {
      query.set("token", options.token);
    }
    url.search = "?" + query.toString();
    return url.toString();
  }

  // Milliseconds to wait before the next connection attempt after
  // ``failures`` quick failures: none for the first reconnect, then
  // exponential from ``baseMs`` up to ``maxMs``, times a jitter of 0.5 to 1.
  function backoffDelay(failures, random, baseMs, maxMs) {
    if (failures <= 0) {
      return 0;
    }
    const ceiling = Math.min(maxMs, baseMs * 2 ** (failures - 1));
    return ceiling * (0.5 + 0.5 * random());
  }

  // The active orders of one location as this screen has built them.
  class Mirror {
    constructor(terminalStates) {
      this.terminal = new Set(terminalStates || []);
      this.epoch = null;
      this.last = 0;
      this.orders = new Map();
      this.digestSum = 0n;
    }

    get digest() {
      return formatDigest(this.digestSum);
    }

    loadSnapshot(message) {
      this.epoch = message.epoch;
      this.last = message.head;
      this.orders = new Map();
      this.digestSum = 0n;
      for (const order of message.orders) {
        this.orders.set(order.id, order);
        this.digestSum += contribution(order.id, order.version);
      }
    }

    // Apply ``event`` if it is the next one; returns the decideEvent result.
    apply(event) {
      const decision = decideEvent(event.seq, this.last);
      if (decision !== "apply") {
        return decision;
      }
      const order = event.order;
      const previous = this.orders.get(order.id);
      if (previous !== undefined) {
        this.digestSum -= contribution(order.id, previous.version);
      }
      if (this.terminal.has(order.state)) {
        this.orders.delete(order.id);
      } else {
        this.orders.set(order.id, order);
        this.digestSum += contribution(order.id, order.version);
      }
      this.last = event.seq;
      return decision;
    }
  }

  // Lifecycle helpers.

  function transitionsFrom(lifecycle, state) {
    return (lifecycle.transitions || []).filter((rule) =>
      Array.isArray(rule.from) ? rule.from.includes(state) : rule.from === state
    );
  }

  function activeStates(lifecycle) {
    const terminal = new Set(lifecycle.terminal || []);
    return (lifecycle.states || []).filter((state) => !terminal.has(state));
  }

  // HTTP.

  function authHeaders(token) {
    return token ? {"Authorization": "Bearer " + token} : {};
  }

  // A random UUID. crypto.randomUUID exists only in secure contexts (HTTPS or
  // localhost), and kitchen screens often load the page over plain HTTP.
  function newIdempotencyKey(cryptoObject) {
    if (cryptoObject && typeof cryptoObject.randomUUID === "function") {
      return cryptoObject.randomUUID();
    }
    const bytes = new Uint8Array(16);
    if (cryptoObject && typeof cryptoObject.getRandomValues === "function") {
      cryptoObject.getRandomValues(bytes);
    } else {
      for (let index = 0; index < bytes.length; index += 1) {
        bytes[index] = Math.floor(Math.random() * 256);
      }
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    const hex = Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
    return [hex.slice(0, 8), hex.slice(8, 12), hex.slice(12, 16), hex.slice(16, 20), hex.slice(20)].join("-");
  }

  async function fetchLifecycle(fetchImpl, pageHref, token) {
    const response = await fetchImpl(new URL("lifecycle", pageHref).toString(), {
      headers: authHeaders(token),
      cache: "no-store",
    });
    if (!response.ok) {
      throw new Error("GET /lifecycle returned HTTP " + response.status);
    }
    return response.json();
  }

  // POST one transition and return {ok, status, code, order, problem}. A
  // network failure is retried with the same Idempotency-Key, and the server
  // returns the first result for a key it has seen instead of applying it again.
  async function sendTransition(options) {
    const url = new URL(
      "orders/" + encodeURIComponent(options.order.id) + "/transitions",
      options.pageHref
    ).toString();
    const body = {to: options.to, expected_version: options.order.version};
    if (options.reason !== null && options.reason !== undefined) {
      body.reason = options.reason;
    }
    const headers = Object.assign(
      {"Content-Type": "application/json", "Idempotency-Key": options.key},
      authHeaders(options.token)
    );

    const attempts = options.attempts || 3;
    const sleep = options.sleep || ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    let response = null;
    for (let attempt = 1; response === null; attempt += 1) {
      try {
        response = await options.fetchImpl(url, {
          method: "POST",
          headers: headers,
          body: JSON.stringify(body),
          cache: "no-store",
        });
      } catch (error) {
        if (attempt >= attempts) {
          return {ok: false, status: 0, code: "network", problem: {detail: String(error)}};
        }
        await sleep(300 * 2 ** (attempt - 1));
      }
    }

    let document = null;
    try {
      document = await response.json();
    } catch (error) {
      document = null;
    }
    if (response.ok) {
      return {ok: true, status: response.status, code: "", order: document};
    }
    const problem = document && typeof document === "object" ? document : {};
    return {ok: false, status: response.status, code: problem.code || "http_" + response.status, problem: problem};
  }

  // The STRINGS key of the message for a failed transition.
  function errorMessageKey(result) {
    if (result.code === "version_conflict" || result.code === "invalid_transition") {
      return "error_" + result.code;
    }
    if (result.code === "invalid_request" && result.problem && result.problem.field === "reason") {
      return "error_reason_required";
    }
    if (["not_found", "forbidden", "unauthorized", "network"].includes(result.code)) {
      return "error_" + result.code;
    }
    return "error_server";
  }

  // The feed connection: snapshot or resume, then events and heartbeats,
  // with the client rule above. Sockets and timers are injected so tests can
  // drive it without a browser.
  class FeedClient {
    constructor(options) {
      this.pageHref = options.pageHref;
      this.location = options.location || "main";
      this.token = options.token || null;
      this.mirror = new Mirror(options.terminal);
      this.WebSocketImpl = options.WebSocketImpl;
      this.onChange = options.onChange || (() => {});
      this.onStatus = options.onStatus || (() => {});
      this.log = options.log || (() => {});
      this.setTimer = options.setTimer || ((callback, ms) => setTimeout(callback, ms));
      this.clearTimer = options.clearTimer || ((timer) => clearTimeout(timer));
      this.now = options.now || (() => Date.now());
      this.random = options.random || Math.random;
      this.gapGraceMs = options.gapGraceMs === undefined ? 1000 : options.gapGraceMs;
      // A silent connection is presumed dead after 35 s, more than three
      // heartbeats at the server's default interval of 10 s.
      this.silenceMs = options.silenceMs === undefined ? 35000 : options.silenceMs;
      this.offlineAfterMs = options.offlineAfterMs === undefined ? 10000 : options.offlineAfterMs;
      this.backoffBaseMs = options.backoffBaseMs === undefined ? 250 : options.backoffBaseMs;
      this.backoffMaxMs = options.backoffMaxMs === undefined ? 5000 : options.backoffMaxMs;

      this.status = "connecting";
      this.socket = null;
      this.started = false;
      this.ready = false;
      this.forceSnapshot = false;
      this.failures = 0;
      this.sessionStartedAt = 0;
      this.announcedHead = 0;
      this.heartbeatTimer = null;
      this.silenceTimer = null;
      this.retryTimer = null;
      this.offlineTimer = null;
      this.lastOutcome = "";
      this.reconnectReasons = [];
    }

    start() {
      this.started = true;
      this.connect();
    }

    stop() {
      this.started = false;
      this.closeSocket();
      this.cancelTimer("retryTimer");
      this.cancelTimer("offlineTimer");
    }

    // Connect now instead of waiting for the backoff (the browser is online again).
    retryNow() {
      if (this.started && this.socket === null) {
        this.cancelTimer("retryTimer");
        this.connect();
      }
    }

    browserOffline() {
      if (!this.ready) {
        this.setStatus("offline");
      }
    }

    url() {
      return feedUrl(this.pageHref, {
        location: this.location,
        token: this.token,
        epoch: this.mirror.epoch,
        last: this.mirror.last,
        snapshot: this.forceSnapshot,
      });
    }

    connect() {
      this.retryTimer = null;
      this.ready = false;
      this.sessionStartedAt = this.now();
      let socket;
      try {
        socket = new this.WebSocketImpl(this.url(), [SUBPROTOCOL]);
      } catch (error) {
        this.reconnect("connect failed: " + error, false);
        return;
      }
      this.socket = socket;
      socket.onmessage = (message) => {
        if (socket === this.socket) {
          this.receive(message.data);
        }
      };
      socket.onclose = (close) => {
        if (socket === this.socket) {
          this.reconnect("connection closed (" + close.code + ")", false);
        }
      };
      socket.onerror = () => {};
      this.armSilenceTimer();
    }

    receive(data) {
      let message;
      try {
        message = JSON.parse(data);
      } catch (error) {
        this.reconnect("the server sent a message that is not JSON", false);
        return;
      }
      if (message === null || typeof message !== "object" || Array.isArray(message)) {
        this.reconnect("the server sent a message that is not a JSON object", false);
        return;
      }
      this.armSilenceTimer();
      if (!this.ready) {
        this.receiveFirst(message);
        return;
      }
      if (message.type === "event") {
        this.receiveEvent(message);
      } else if (message.type === "heartbeat") {
        this.receiveHeartbeat(message);
      } else if (message.type === "resync") {
        this.reconnect("the server asked to resync: " + message.reason, false);
      }
    }

    receiveFirst(message) {
      const mirror = this.mirror;
      if (message.type === "snapshot") {
        mirror.loadSnapshot(message);
        if (message.digest !== mirror.digest) {
          this.log("snapshot digest " + message.digest + " differs from the computed " + mirror.digest);
        }
        this.forceSnapshot = false;
        this.lastOutcome = "snapshot";
      } else if (message.type === "resumed") {
        if (message.epoch !== mirror.epoch || message.since !== mirror.last) {
          this.reconnect("the server resumed from another position", true);
          return;
        }
        this.lastOutcome = "resumed";
      } else {
        this.reconnect("unexpected first message " + JSON.stringify(message.type), false);
        return;
      }
      this.ready = true;
      this.cancelTimer("offlineTimer");
      this.setStatus("connected");
      this.onChange(mirror, message.type);
    }

    receiveEvent(message) {
      const decision = this.mirror.apply(message);
      if (decision === "gap" || decision === "invalid") {
        this.reconnect(decision + ": event " + message.seq + " arrived after " + this.mirror.last, false);
        return;
      }
      if (decision === "apply") {
        if (this.heartbeatTimer !== null && this.mirror.last >= this.announcedHead) {
          this.cancelTimer("heartbeatTimer");
        }
        this.onChange(this.mirror, "event");
      }
    }

    receiveHeartbeat(message) {
      const mirror = this.mirror;
      const action = heartbeatAction(message.head, message.digest, mirror.last, mirror.digest);
      if (action === "wait") {
        this.announcedHead = Math.max(this.announcedHead, message.head);
        if (this.heartbeatTimer === null) {
          this.heartbeatTimer = this.setTimer(() => {
            this.heartbeatTimer = null;
            this.reconnect("a heartbeat announced events that never came", false);
          }, this.gapGraceMs);
        }
      } else if (action === "snapshot") {
        this.reconnect(
          "digest mismatch at seq " + message.head + ": server " + message.digest + ", screen " + mirror.digest,
          true
        );
      }
    }

    armSilenceTimer() {
      this.cancelTimer("silenceTimer");
      this.silenceTimer = this.setTimer(() => {
        this.silenceTimer = null;
        this.reconnect("the server was silent for " + this.silenceMs + " ms", false);
      }, this.silenceMs);
    }

    // Drop the connection and schedule the next one. The next one resumes
    // from the mirror's last seq, unless ``snapshot`` is true (or was true
    // since the last snapshot arrived).
    reconnect(reason, snapshot) {
      this.reconnectReasons.push(reason);
      if (this.reconnectReasons.length > 100) {
        this.reconnectReasons.shift();
      }
      this.log("reconnecting: " + reason);
      this.forceSnapshot = this.forceSnapshot || snapshot;
      this.closeSocket();
      if (!this.started) {
        return;
      }

      // A session that ended within 1 s counts as a failure, so a server
      // that rejects or drops every connection is retried ever more slowly.
      if (this.now() - this.sessionStartedAt < 1000) {
        this.failures += 1;
      } else {
        this.failures = 0;
      }
      const delay = backoffDelay(this.failures, this.random, this.backoffBaseMs, this.backoffMaxMs);
      this.retryTimer = this.setTimer(() => this.connect(), delay);

      if (this.status !== "offline") {
        this.setStatus("reconnecting");
      }
      if (this.offlineTimer === null) {
        this.offlineTimer = this.setTimer(() => {
          this.offlineTimer = null;
          if (!this.ready) {
            this.setStatus("offline");
          }
        }, this.offlineAfterMs);
      }
    }

    closeSocket() {
      this.ready = false;
      this.cancelTimer("heartbeatTimer");
      this.cancelTimer("silenceTimer");
      const socket = this.socket;
      this.socket = null;
      if (socket !== null) {
        socket.onmessage = null;
        socket.onclose = null;
        socket.onerror = null;
        try {
          socket.close(1000);
        } catch (error) {
          // Already closed or never opened.
        }
      }
    }

    cancelTimer(name) {
      if (this[name] !== null) {
        this.clearTimer(this[name]);
        this[name] = null;
      }
    }

    setStatus(status) {
      if (status !== this.status) {
        this.status = status;
        this.onStatus(status);
      }
    }
  }

  // The page.
  // NOTE: tests run startPage against a fake DOM under Node.js only, so the
  // layout and the <dialog> behaviour have not been checked in a browser.

  function startPage(win) {
    const doc = win.document;
    const params = new URLSearchParams(win.location.search);
    const page = {
      language: pickLanguage(params.get("lang"), win.navigator.language),
      location: params.get("location") || "main",
      token: params.get("token") || null,
      lifecycle: null,
      client: null,
      sending: new Set(),
      renderQueued: false,
      noticeTimer: null,
    };
    const element = (id) => doc.getElementById(id);
    const t = (key, values) => translate(page.language, key, values);

    function make(tag, className, text) {
      const node = doc.createElement(tag);
      if (className) {
        node.className = className;
      }
      if (text !== undefined) {
        node.textContent = text;
      }
      return node;
    }

    function showNotice(key, values) {
      const notice = element("notice");
      element("notice-text").textContent = t(key, values);
      notice.hidden = false;
      if (page.noticeTimer !== null) {
        win.clearTimeout(page.noticeTimer);
      }
      page.noticeTimer = win.setTimeout(() => {
        notice.hidden = true;
        page.noticeTimer = null;
      }, 8000);
    }

    function renderStatus() {
      const status = page.client ? page.client.status : "connecting";
      const badge = element("status");
      badge.textContent = t("status_" + status);
      badge.dataset.status = status;
    }

    function renderStaticText() {
      doc.documentElement.lang = page.language;
      doc.title = t("title") + " · " + page.location;
      for (const node of doc.querySelectorAll("[data-i18n]")) {
        node.textContent = t(node.dataset.i18n);
      }
      element("location").textContent = t("location", {location: page.location});
      const toggle = element("language-toggle");
      toggle.textContent = t("switch_language");
      toggle.setAttribute("aria-label", t("switch_language_hint"));
      toggle.lang = page.language === "es" ? "en" : "es";
      renderStatus();
    }

    function scheduleRender() {
      if (!page.renderQueued) {
        page.renderQueued = true;
        win.requestAnimationFrame(() => {
          page.renderQueued = false;
          renderBoard();
        });
      }
    }

    function renderBoard() {
      const lifecycle = page.lifecycle;
      const board = element("board");
      if (lifecycle === null || page.client === null) {
        return;
      }
      const orders = Array.from(page.client.mirror.orders.values());
      orders.sort(compareOrders);

      const columns = activeStates(lifecycle);
      for (const order of orders) {
        if (!columns.includes(order.state)) {
          columns.push(order.state);
        }
      }
      const lanes = [];
      columns.forEach((state, index) => {
        const lane = make("section", "lane tone-" + (index % 6));
        const inLane = orders.filter((order) => order.state === state);
        const heading = make("h2", "lane-head");
        heading.append(make("span", "", lifecycleLabel(lifecycle, page.language, state)));
        heading.append(make("span", "lane-count", String(inLane.length)));
        lane.append(heading);
        for (const order of inLane) {
          lane.append(renderTicket(order, index));
        }
        lanes.push(lane);
      });
      board.textContent = "";
      for (const lane of lanes) {
        board.append(lane);
      }

      const count = orders.length;
      element("count").textContent = count === 1 ? t("orders_one") : t("orders_other", {count: count});
      element("empty").hidden = count > 0;
    }

    // Oldest first, then by id.
    function compareOrders(a, b) {
      if (a.created_at !== b.created_at) {
        return a.created_at < b.created_at ? -1 : 1;
      }
      if (a.id === b.id) {
        return 0;
      }
      return a.id < b.id ? -1 : 1;
    }

    function renderTicket(order, tone) {
      const lifecycle = page.lifecycle;
      const ticket = make("article", "ticket tone-" + (tone % 6));
      ticket.setAttribute("aria-label", t("order", {id: order.id}));

      const head = make("header", "ticket-head");
      head.append(make("span", "ticket-id", "#" + order.id));
      const table = order.meta ? order.meta.table : undefined;
      if (typeof table === "string" || typeof table === "number") {
        head.append(make("span", "ticket-table", t("table", {table: table})));
      }
      const age = make("span", "ticket-age", "");
      age.dataset.created = order.created_at;
      updateAge(age);
      head.append(age);
      ticket.append(head);
      ticket.append(make("p", "ticket-state", lifecycleLabel(lifecycle, page.language, order.state)));

      const list = make("ul", "items");
      for (const item of order.items || []) {
        const line = make("li", "item");
        line.append(make("span", "quantity", String(item.quantity) + "×"));
        line.append(make("span", "name", String(item.name)));
        if (item.station) {
          line.append(make("span", "station", String(item.station)));
        }
        if (item.notes) {
          line.append(make("span", "notes", t("notes", {notes: item.notes})));
        }
        list.append(line);
      }
      ticket.append(list);

      const actions = make("div", "actions");
      const sending = page.sending.has(order.id);
      // NOTE: the page does not know the roles of its token, so it shows
      // every move and reports a rejected one as error_forbidden.
      transitionsFrom(lifecycle, order.state).forEach((rule, index) => {
        const label = lifecycleLabel(lifecycle, page.language, rule.name || rule.to);
        // The first move out of a state is the usual next step. A move that
        // needs a reason, or a later move to a terminal state, ends the order
        // early, so it looks like a warning.
        let kind = index === 0 ? "primary" : "secondary";
        if (rule.reason_required || (index > 0 && (lifecycle.terminal || []).includes(rule.to))) {
          kind = "danger";
        }
        const button = make("button", "action " + kind, sending ? t("sending") : label);
        button.type = "button";
        button.disabled = sending;
        button.addEventListener("click", () => startTransition(order, rule, label));
        actions.append(button);
      });
      ticket.append(actions);
      return ticket;
    }

    function updateAge(node) {
      const created = Date.parse(node.dataset.created);
      node.textContent = Number.isNaN(created) ? "" : formatAge(Date.now() - created, page.language);
    }

    function askReason(title) {
      const dialog = element("reason-dialog");
      const form = element("reason-form");
      const input = element("reason-input");
      const missing = element("reason-missing");
      if (typeof dialog.showModal !== "function") {
        const answer = win.prompt(title + "\n" + t("reason_label"), "");
        return Promise.resolve(answer && answer.trim() ? answer.trim() : null);
      }
      return new Promise((resolve) => {
        function finish(value) {
          form.onsubmit = null;
          dialog.oncancel = null;
          element("reason-back").onclick = null;
          for (const chip of doc.querySelectorAll("[data-quick-reason]")) {
            chip.onclick = null;
          }
          dialog.close();
          resolve(value);
        }
        element("reason-title").textContent = title;
        input.value = "";
        missing.hidden = true;
        form.onsubmit = (submit) => {
          submit.preventDefault();
          const reason = input.value.trim();
          if (!reason) {
            missing.hidden = false;
            input.focus();
            return;
          }
          finish(reason);
        };
        element("reason-back").onclick = () => finish(null);
        dialog.oncancel = (cancel) => {
          cancel.preventDefault();
          finish(null);
        };
        for (const chip of doc.querySelectorAll("[data-quick-reason]")) {
          chip.onclick = () => {
            input.value = chip.textContent;
            missing.hidden = true;
          };
        }
        dialog.showModal();
        input.focus();
      });
    }

    async function startTransition(order, rule, label) {
      if (page.sending.has(order.id)) {
        return;
      }
      let reason = null;
      if (rule.reason_required) {
        reason = await askReason(t("reason_title", {action: label, id: order.id}));
        if (reason === null) {
          return;
        }
      }
      page.sending.add(order.id);
      scheduleRender();
      let result;
      try {
        result = await sendTransition({
          fetchImpl: win.fetch.bind(win),
          pageHref: win.location.href,
          token: page.token,
          order: order,
          to: rule.to,
          reason: reason,
          key: newIdempotencyKey(win.crypto),
        });
      } finally {
        page.sending.delete(order.id);
        scheduleRender();
      }
      // On success the feed brings the new state; the response is not
      // applied here, because only events in seq order change the mirror.
      if (!result.ok) {
        showNotice(errorMessageKey(result), {id: order.id});
      }
    }

    async function loadLifecycle() {
      for (let failures = 1; ; failures += 1) {
        try {
          return await fetchLifecycle(win.fetch.bind(win), win.location.href, page.token);
        } catch (error) {
          showNotice("error_lifecycle");
          await new Promise((resolve) => win.setTimeout(resolve, backoffDelay(failures, Math.random, 500, 5000)));
        }
      }
    }

    function switchLanguage() {
      page.language = page.language === "es" ? "en" : "es";
      const url = new URL(win.location.href);
      url.searchParams.set("lang", page.language);
      win.history.replaceState(null, "", url.toString());
      renderStaticText();
      renderBoard();
    }

    async function run() {
      renderStaticText();
      element("language-toggle").addEventListener("click", switchLanguage);
      element("notice-close").addEventListener("click", () => {
        element("notice").hidden = true;
      });
      if (!LOCATION_PATTERN.test(page.location)) {
        showNotice("error_location", {location: page.location});
        return;
      }

      page.lifecycle = await loadLifecycle();
      page.client = new FeedClient({
        pageHref: win.location.href,
        location: page.location,
        token: page.token,
        terminal: page.lifecycle.terminal,
        WebSocketImpl: win.WebSocket,
        onChange: scheduleRender,
        onStatus: renderStatus,
        log: (text) => win.console.info("orderflow screen: " + text),
      });
      win.addEventListener("online", () => page.client.retryNow());
      win.addEventListener("offline", () => page.client.browserOffline());
      page.client.start();
      renderStatus();
      renderBoard();

      win.setInterval(() => {
        for (const node of doc.querySelectorAll("[data-created]")) {
          updateAge(node);
        }
      }, 15000);
    }

    run();
  }

  const exported = {
    STRINGS,
    EMPTY_DIGEST,
    SUBPROTOCOL,
    pickLanguage,
    translate,
    lifecycleLabel,
    formatAge,
    fnv1a64,
    contribution,
    formatDigest,
    digestOf,
    decideEvent,
    heartbeatAction,
    feedUrl,
    backoffDelay,
    Mirror,
    transitionsFrom,
    activeStates,
    newIdempotencyKey,
    fetchLifecycle,
    sendTransition,
    errorMessageKey,
    FeedClient,
    startPage,
  };

  if (typeof module === "object" && module !== null && module.exports) {
    module.exports = exported;
  } else if (typeof window !== "undefined" && window.document) {
    startPage(window);
  }
})();

// The WebSocket client for /ws (Hyperliquid's public protocol): keeps the set of subscriptions,
// re-sends them after every reconnect, reconnects with jittered exponential backoff, pings
// every 30 s and drops a connection that stops answering pings.

const PING_MS = 30_000;
const MAX_BACKOFF_MS = 30_000;

function subKey(sub) {
  return JSON.stringify(Object.keys(sub).sort().map((k) => [k, sub[k]]));
}

export class Feed {
  // onMessage(msg) per parsed message; onState(state, info) with state in connecting|open|closed
  constructor(url, onMessage, onState) {
    this.url = url;
    this.onMessage = onMessage;
    this.onState = onState;
    this.subs = new Map();
    this.ws = null;
    this.attempt = 0;
    this.opens = 0;
    this.pingSentAt = null;
    this.rttMs = null;
    this.timers = { ping: null, retry: null };
  }

  subscribe(sub) {
    const k = subKey(sub);
    if (this.subs.has(k)) return;
    this.subs.set(k, sub);
    this.send({ method: "subscribe", subscription: sub });
  }

  unsubscribe(sub) {
    if (!this.subs.delete(subKey(sub))) return;
    this.send({ method: "unsubscribe", subscription: sub });
  }

  send(obj) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(obj));
  }

  connect() {
    clearTimeout(this.timers.retry);
    this.onState("connecting", { attempt: this.attempt });
    const ws = new WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      this.opens += 1;
      this.onState("open", { reconnect: this.opens > 1 });
      for (const sub of this.subs.values()) this.send({ method: "subscribe", subscription: sub });
      this.pingSentAt = null;
      this.timers.ping = setInterval(() => this.ping(), PING_MS);
    };
    ws.onmessage = (ev) => {
      let msg;
      try { msg = JSON.parse(ev.data); } catch { return; }
      if (msg && msg.channel === "pong" && this.pingSentAt !== null) {
        this.rttMs = performance.now() - this.pingSentAt;
        this.pingSentAt = null;
      }
      this.onMessage(msg);
    };
    ws.onclose = (ev) => {
      if (this.ws === ws) this.retry({ code: ev.code, reason: ev.reason });
    };
  }

  retry(info) {
    clearInterval(this.timers.ping);
    this.ws = null;
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    this.onState("closed", { ...info, retryInMs: delay });
    this.timers.retry = setTimeout(() => this.connect(), delay);
  }

  ping() {
    if (this.pingSentAt !== null) {
      // the last ping went unanswered for a whole period: the connection is dead, start over
      // without waiting for a closing handshake that may never come
      const dead = this.ws;
      this.retry({ code: 4000, reason: "ping timeout" });
      dead?.close(4000, "ping timeout");
      return;
    }
    this.pingSentAt = performance.now();
    this.send({ method: "ping" });
  }
}

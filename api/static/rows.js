// A table body fed with rows newest first: the trades tape and the orders feed. Rows are built
// once per animation frame, not per message; a REST snapshot seeds it and the live feed follows.

export class RowFeed {
  // render(item) -> <tr>; key(item): identity, for merging a snapshot with what the feed sent;
  // time(item): ms, the order of the rows; filter(item): whether it is shown
  constructor(tbody, cap, { render, key, time, filter = () => true }) {
    Object.assign(this, { tbody, cap, render, key, time, filter, pending: [], recent: [], scheduled: false });
  }

  push(items) {
    for (const it of items) {
      this.recent.push(it);
      if (this.filter(it)) this.pending.push(it);
    }
    if (this.recent.length > 4 * this.cap) this.recent.splice(0, this.recent.length - 4 * this.cap);
    if (this.pending.length > this.cap) this.pending.splice(0, this.pending.length - this.cap);
    if (!this.scheduled) {
      this.scheduled = true;
      requestAnimationFrame(() => this.flush());
    }
  }

  flush() {
    this.scheduled = false;
    const frag = document.createDocumentFragment();
    for (let i = this.pending.length - 1; i >= 0; i -= 1) frag.append(this.render(this.pending[i]));
    this.pending = [];
    this.tbody.prepend(frag);
    while (this.tbody.rows.length > this.cap) this.tbody.lastElementChild.remove();
  }

  // A snapshot (oldest first) merged with what the feed already delivered: each item once, by time.
  seed(items) {
    const seen = new Set();
    const merged = [];
    for (const it of [...items, ...this.recent]) {
      const k = this.key(it);
      if (!seen.has(k)) { seen.add(k); merged.push(it); }
    }
    merged.sort((a, b) => this.time(a) - this.time(b)); // stable: same-ms items keep their order
    this.clear();
    this.push(merged);
  }

  // Rebuild from what was received lately, e.g. after the filter or the formatting changed.
  refilter() {
    this.clear(false);
    this.push(this.recent.splice(0));
  }

  clear(forget = true) {
    this.tbody.replaceChildren();
    this.pending = [];
    if (forget) this.recent = [];
  }
}

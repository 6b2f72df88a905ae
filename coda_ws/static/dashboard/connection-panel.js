/** The connection panel, the status pill and the "not recovered" notice. */

import { byId, formatNumber, setText, shortId } from "./dom.js";

const GAP_REASONS = {
  epoch_changed: "the server restarted and its event history is gone (new epoch)",
  too_old: "the dashboard was away longer than the server keeps history",
  unknown_position: "the server does not know the dashboard's last position",
  lost: "the server crashed before it had saved the events the dashboard saw last",
};

/** Live events per second over a sliding window of whole seconds. */
class RateMeter {
  constructor(seconds = 5) {
    this.seconds = seconds;
    this.buckets = new Map(); // whole second -> count
  }

  add(count, now = Date.now()) {
    const second = Math.floor(now / 1000);
    this.buckets.set(second, (this.buckets.get(second) || 0) + count);
    for (const key of this.buckets.keys()) if (key < second - this.seconds) this.buckets.delete(key);
  }

  rate(now = Date.now()) {
    const current = Math.floor(now / 1000);
    let total = 0;
    // The last `seconds` complete seconds, plus the running one weighted by how far it is.
    for (const [second, count] of this.buckets) {
      if (second >= current - this.seconds && second <= current) total += count;
    }
    const span = this.seconds + (now % 1000) / 1000;
    return total / span;
  }
}

export class ConnectionPanel {
  constructor() {
    this.pill = byId("status-pill");
    this.status = byId("conn-status");
    this.server = byId("conn-server");
    this.epoch = byId("conn-epoch");
    this.seq = byId("conn-seq");
    this.rateNode = byId("conn-rate");
    this.reconnects = byId("conn-reconnects");
    this.notice = byId("gap-notice");
    this.noticeText = byId("gap-text");
    this.meter = new RateMeter();
    this.lastStatus = null;
    this.refusal = null;
    byId("gap-dismiss").addEventListener("click", () => { this.notice.hidden = true; });
  }

  setStatus(status) {
    this.lastStatus = status;
    if (this.refusal) return; // the token prompt speaks until a new token is tried
    let label = status.state;
    if (status.state === "reconnecting" && status.retryInMs != null) {
      label = `reconnecting in ${(status.retryInMs / 1000).toFixed(1)} s`;
    }
    this.pill.dataset.state = status.state;
    setText(this.pill, status.state);
    this.pill.title = status.lastError ? `last error: ${status.lastError}` : "";
    setText(this.status, label);
    this.status.dataset.state = status.state;
    if (status.server) setText(this.server, status.server);
    if (status.epoch) {
      setText(this.epoch, shortId(status.epoch));
      this.epoch.title = status.epoch;
      this.epoch.dataset.epoch = status.epoch;
    }
    setText(this.reconnects, status.reconnects);
  }

  /**
   * The server refused this page (401/403): the client has stopped; say so
   * where the status is shown. `null`: a new token is being tried.
   */
  setRefused(refusal) {
    this.refusal = refusal;
    if (!refusal) return;
    const label = refusal.reason === "missing" ? "token needed" : "token refused";
    this.pill.dataset.state = "unauthorized";
    setText(this.pill, label);
    this.pill.title = refusal.message;
    setText(this.status, label);
    this.status.dataset.state = "closed";
  }

  /** A resume was not recovered: the panels may miss what happened in between. */
  showGap(gap) {
    const why = GAP_REASONS[gap.reason] || gap.reason;
    const range = gap.lost
      ? ` Events ${gap.lost[0]} to ${gap.lost[1]} are lost.`
      : gap.lastSeq ? ` Events after seq ${gap.lastSeq} of the previous stream may be missing.` : "";
    setText(this.noticeText, `The stream could not be resumed: ${why}.${range}`);
    this.notice.dataset.reason = gap.reason;
    this.notice.hidden = false;
  }

  countEvents(count) {
    this.meter.add(count);
  }

  render(lastSeq) {
    setText(this.seq, lastSeq ? formatNumber(lastSeq) : "–");
    this.seq.dataset.seq = String(lastSeq || 0);
    setText(this.rateNode, formatNumber(this.meter.rate(), 1));
  }
}

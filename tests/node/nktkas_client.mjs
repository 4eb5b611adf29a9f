// Drives @nktkas/hyperliquid (the TypeScript SDK) against a nodetap server, over its HTTP and
// WebSocket transports; prints one JSON object of what it got. Run by tests/test_ts_sdk.py:
//   node nktkas_client.mjs <http base url> <user address>
import { HttpTransport, InfoClient, SubscriptionClient, WebSocketTransport } from "@nktkas/hyperliquid";

const [base, user] = process.argv.slice(2);
const ws = new URL("/ws", base.replace(/^http/, "ws")).toString();
const req = { coin: "BTC", interval: "1m", startTime: Date.now() - 3_600_000 };
const calls = async (info) => ({
  candleSnapshot: await info.candleSnapshot(req),
  meta: await info.meta(),
  allMids: await info.allMids(),
  userFills: await info.userFills({ user }),
});

const out = { http: await calls(new InfoClient({ transport: new HttpTransport({ apiUrl: base, timeout: 10_000 }) })) };
const transport = new WebSocketTransport({ url: ws, timeout: 10_000 });
out.post = await calls(new InfoClient({ transport }));

const subs = new SubscriptionClient({ transport });
const events = { trades: [], candle: [], userFills: [], allMids: [] };
await subs.trades({ coin: "BTC" }, (e) => events.trades.push(e));
await subs.candle({ coin: "BTC", interval: "1m" }, (e) => events.candle.push(e));
await subs.userFills({ user }, (e) => events.userFills.push(e));
await subs.allMids((e) => events.allMids.push(e));
const started = Date.now();
try {
  await subs.l2Book({ coin: "BTC" }, () => {});
  out.l2Book = "subscribed";
} catch (error) {
  out.l2Book = { message: error.message, ms: Date.now() - started };
}
const deadline = Date.now() + 30_000;
while (Object.values(events).some((list) => list.length < 2) && Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, 100));
}
out.events = Object.fromEntries(Object.entries(events).map(([k, v]) => [k, v.slice(0, 3)]));
out.counts = Object.fromEntries(Object.entries(events).map(([k, v]) => [k, v.length]));
await transport.close?.();
// exit once the output is flushed: stdout to a pipe is written asynchronously, and an exit
// right after the write cuts it at 64 KiB on a busy machine
process.stdout.write(JSON.stringify(out) + "\n", () => process.exit(0));

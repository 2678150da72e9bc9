// Shared plumbing of the e2e client scripts. e2e_test.go runs one script per
// scenario and reads its stdout as JSON lines: what the client library
// reported ({"next": ...}, {"error": ...}, {"complete": ...}, {"closed": ...})
// and, for websockets, every raw frame ({"frame": ..., "dir": "in"|"out"}),
// so the Go side can assert on the wire as well as on the library's view.
import WebSocket from 'ws';

/** Prints one event line for the Go test. */
export function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n');
}

/** Returns a required environment variable or exits. */
export function env(name) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    fail(`environment variable ${name} is not set`);
  }
  return value;
}

/** Reports a failure of the script itself and exits non-zero. */
export function fail(message) {
  emit({ fatal: String(message) });
  process.exit(2);
}

/** The websocket URL of the endpoint at base (an http:// URL). */
export function wsURL(base) {
  const u = new URL('/graphql', base);
  u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
  return u.href;
}

/** The HTTP URL of the endpoint at base. */
export function httpURL(base) {
  return new URL('/graphql', base).href;
}

/**
 * A ws WebSocket that reports every frame it sends and receives, and how it
 * closed. Libraries take it as their webSocketImpl.
 */
export class FramedWebSocket extends WebSocket {
  constructor(...args) {
    super(...args);
    this.addEventListener('open', () => emit({ socket: 'open', protocol: this.protocol }));
    this.addEventListener('message', (e) => emit({ dir: 'in', frame: parse(e.data) }));
    this.addEventListener('close', (e) => emit({ socket: 'close', code: e.code, reason: e.reason }));
  }

  send(data, ...rest) {
    emit({ dir: 'out', frame: parse(data) });
    return super.send(data, ...rest);
  }
}

function parse(data) {
  const text = String(data);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/**
 * Ends the script when the Go test closes our stdin (it keeps it open while
 * the test runs), so a crashed or timed-out test leaves no client behind.
 */
export function exitWithParent() {
  process.stdin.on('data', () => {});
  process.stdin.on('end', () => process.exit(3));
  process.stdin.on('error', () => process.exit(3));
}

/** Prints {"done": true} and exits cleanly once stdout is flushed. */
export function done(extra = {}) {
  process.stdout.write(JSON.stringify({ done: true, ...extra }) + '\n', () => process.exit(0));
}

export const MACHINE_SUBSCRIPTION = `subscription Watch($id: ID) {
  machineUpdated(id: $id) { op id version machine { id name status } }
}`;

export const MACHINE_QUERY = `query Machine($id: ID!) { machine(id: $id) { id name status } }`;

export const JOB_SUBSCRIPTION = `subscription WatchJob($id: ID) {
  jobUpdated(id: $id) { op id revision job { id status robotId } }
}`;

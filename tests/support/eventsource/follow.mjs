// Follows one ferry job with the npm `eventsource` package, as a browser's EventSource would, and prints
// what happens as JSON lines on stdout (tests/integration/test_eventsource.py reads them).
//
//   node follow.mjs <base-url> <job-body-json> <quiet-ms>
//
// It submits the job itself (so the job starts when the follower is ready) and prints its id. Follower "a"
// connects plainly. When it receives its first event, follower "b" connects as a client that
// reconnects with that event's id would (Last-Event-ID). Each connection carries X-Request-ID
// "<follower>-<n>", so the server's access log tells the connections apart. After "a" has been told to
// stop (HTTP 204: EventSource closes for good), the script stays <quiet-ms> longer with both EventSource
// objects alive, so any further connection would reach the server, then prints "done" and exits.
import { EventSource } from "eventsource";

const [base, jobBody, quietMs] = process.argv.slice(2);
const started = performance.now();
const print = (line) => process.stdout.write(JSON.stringify({ t_ms: Math.round(performance.now() - started), ...line }) + "\n");
const followers = {};

function follow(name, lastEventId) {
  let connections = 0;
  // EventSource has no option for the id to start from: the first request carries it as a header, exactly
  // what EventSource itself sends on a reconnection.
  const fetchWithIds = (url, init) => {
    connections += 1;
    const headers = { ...init.headers, "X-Request-ID": `${name}-${connections}` };
    if (lastEventId !== undefined && connections === 1) headers["Last-Event-ID"] = lastEventId;
    return fetch(url, { ...init, headers });
  };
  const source = new EventSource(`${base}/api/v1/jobs/${jobId}/events`, { fetch: fetchWithIds });
  source.addEventListener("open", () => print({ follower: name, type: "open", connection: connections }));
  for (const type of ["status", "shutdown", "message"]) {
    source.addEventListener(type, (event) => {
      const data = JSON.parse(event.data);
      print({ follower: name, type, id: event.lastEventId, status: data.status ?? null, connection: connections });
      if (name === "a" && !followers.b) followers.b = follow("b", event.lastEventId);
    });
  }
  source.addEventListener("error", (event) => {
    print({ follower: name, type: "error", code: event.code ?? null, readyState: source.readyState, connection: connections });
    if (name === "a" && source.readyState === source.CLOSED) {
      setTimeout(() => {
        print({ type: "done", readyState: { a: followers.a.readyState, b: followers.b?.readyState ?? null } });
        for (const follower of Object.values(followers)) follower.close();
        process.exit(0);
      }, Number(quietMs));
    }
  });
  return source;
}

const submitted = await fetch(`${base}/api/v1/jobs`, {
  method: "POST",
  headers: { "Content-Type": "application/json" },
  body: jobBody,
});
const jobId = (await submitted.json()).id;
print({ type: "submitted", status: submitted.status, id: jobId });
followers.a = follow("a");
setTimeout(() => {
  print({ type: "timeout" });
  process.exit(1);
}, 60_000 + Number(quietMs));

// POST /api/v1/predict/stream read with fetch (EventSource cannot POST), resumed with Last-Event-ID when the
// connection breaks or the server shuts down. README.md ("Browsers and Node") shows predictStream verbatim;
// tests/integration/test_eventsource.py runs it (and checks the README still shows this code).
//
//   node predict_stream.mjs <base-url> <body-json> [cut-after-chunks]
//
// prints one JSON line per event predictStream yields, then {"type": "end"} or {"type": "raised", ...}.
// cut-after-chunks: the first response's body breaks after that many chunk events (a dropped connection).

// --- README: predictStream ---
export async function* predictStream(baseUrl, body, { headers = {}, fetch = globalThis.fetch, attempts = 5 } = {}) {
  let lastId = null; // the id of the last event received: the offset of the first record not answered yet
  for (let attempt = 1; attempt <= attempts; attempt++) {
    try {
      const response = await fetch(`${baseUrl}/api/v1/predict/stream`, {
        method: "POST",
        headers: { "Content-Type": "application/json", ...headers, ...(lastId ? { "Last-Event-ID": lastId } : {}) },
        body: JSON.stringify(body), // the same body every time: Last-Event-ID says where to go on
      });
      if (!response.ok) throw Object.assign(new Error(`HTTP ${response.status}`), await response.json());
      let buffer = "";
      for await (const text of response.body.pipeThrough(new TextDecoderStream())) {
        buffer += text;
        for (let end; (end = buffer.indexOf("\n\n")) >= 0; buffer = buffer.slice(end + 2)) {
          const fields = Object.fromEntries(buffer.slice(0, end).split("\n").map((line) => line.split(/: (.*)/s)));
          if (fields.data === undefined) continue; // "retry: 3000" or ": ping"
          if (fields.id !== undefined) lastId = fields.id;
          const data = JSON.parse(fields.data);
          if (fields.event === "failed") throw Object.assign(new Error(data.message), data, { final: true });
          if (fields.event === "shutdown") break; // the server is stopping: resume on another worker
          yield { event: fields.event, data }; // "chunk" ..., then "summary"
          if (fields.event === "summary") return;
        }
      }
    } catch (error) {
      if (error.final || error.code) throw error; // a failed chunk or an error answer: not a broken connection
    }
    await new Promise((resolve) => setTimeout(resolve, 1000 * attempt)); // cut or shutdown: resume
  }
  throw new Error(`the stream broke ${attempts} times`);
}
// --- README: end ---

if (import.meta.url === `file://${process.argv[1]}`) {
  const [base, bodyJson, cutAfter] = process.argv.slice(2);
  const print = (line) => process.stdout.write(JSON.stringify(line) + "\n");
  let requests = 0;
  // Counts requests and, on the first one, breaks the body after `cutAfter` chunk events.
  const fetchThatBreaks = async (url, init) => {
    requests += 1;
    print({ type: "request", n: requests, lastEventId: init.headers["Last-Event-ID"] ?? null });
    const response = await fetch(url, init);
    if (requests > 1 || cutAfter === undefined) return response;
    let chunks = 0;
    const decoder = new TextDecoder();
    const cut = new TransformStream({
      transform(bytes, controller) {
        controller.enqueue(bytes);
        chunks += decoder.decode(bytes, { stream: true }).split("event: chunk").length - 1;
        if (chunks >= Number(cutAfter)) controller.error(new TypeError("connection reset (test)"));
      },
    });
    return new Response(response.body.pipeThrough(cut), { status: response.status, headers: response.headers });
  };
  try {
    for await (const { event, data } of predictStream(base, JSON.parse(bodyJson), { fetch: fetchThatBreaks })) {
      print({ type: "event", event, offset: data.offset ?? null, predictions: data.predictions ?? null, data });
    }
    print({ type: "end" });
  } catch (error) {
    print({ type: "raised", message: error.message, code: error.code ?? null, offset: error.offset ?? null });
  }
}

// Every call the page makes: to the public APIs (/v1/...) and to the console's own
// (/console/api/...), all through the gateway, with the key in the Authorization header.
// The key lives in this module only: never in a URL, in storage or in a cookie, so
// nothing is sent on its own (no CSRF) and a reload asks for it again.

let key: string | null = null;

export function useKey(next: string | null): void {
  key = next;
}

export function hasKey(): boolean {
  return key !== null;
}

/** A failed call, with the message to show (a problem's detail, or what went wrong). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

const WITHIN_MS = 10_000;

function headers(extra: Record<string, string> = {}): Headers {
  const h = new Headers({ Accept: "application/json, application/problem+json", ...extra });
  if (key !== null) h.set("Authorization", `Bearer ${key}`);
  return h;
}

async function send(path: string, init: RequestInit, signal?: AbortSignal): Promise<Response> {
  const timeout = AbortSignal.timeout(WITHIN_MS);
  try {
    return await fetch(path, {
      ...init,
      credentials: "omit",
      cache: "no-store",
      signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
    });
  } catch (e) {
    if (signal?.aborted) throw e;
    if (timeout.aborted) throw new ApiError(0, `No answer within ${WITHIN_MS / 1000} s.`);
    throw new ApiError(0, "The gateway cannot be reached: is the shop running?");
  }
}

/** The message a failed answer carries: the problem's detail and its field errors. */
async function failure(response: Response): Promise<ApiError> {
  let text = `${response.status} ${response.statusText}`;
  try {
    const problem = await response.json();
    if (typeof problem?.detail === "string") text = problem.detail;
    if (Array.isArray(problem?.errors) && problem.errors.length > 0) {
      const fields = problem.errors.map((e: { field?: string; message?: string }) =>
        `${e.field ?? "?"} ${e.message ?? ""}`.trim(),
      );
      text = `${text}: ${fields.join("; ")}`;
    }
  } catch {
    // Not a problem document (a proxy's page): the status says enough.
  }
  if (response.status === 401) text = `The API key was not accepted (${text}).`;
  if (response.status >= 502 && response.status <= 504 && !text.includes("retry")) {
    text = `${text} (a service behind the gateway is down or slow; retry)`;
  }
  return new ApiError(response.status, text);
}

export async function get<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await send(path, { headers: headers() }, signal);
  if (!response.ok) throw await failure(response);
  return (await response.json()) as T;
}

/** An operator's action (a POST without a body). The views disable its button until the
 * answer is in and the list shown again, so one click is one action. */
export async function post<T>(path: string): Promise<T> {
  const response = await send(path, { method: "POST", headers: headers() });
  if (!response.ok) throw await failure(response);
  return (await response.json()) as T;
}

/**
 * Server-sent events read through fetch (EventSource cannot send the key in a header):
 * calls `onEvent` per event until `signal` aborts or the server ends the stream.
 */
export async function stream(
  path: string,
  onEvent: (name: string, data: string) => void,
  signal: AbortSignal,
  onOpen: () => void = () => {},
): Promise<void> {
  let response: Response;
  try {
    response = await fetch(path, {
      headers: headers({ Accept: "text/event-stream" }),
      credentials: "omit",
      cache: "no-store",
      signal,
    });
  } catch (e) {
    if (signal.aborted) return;
    throw new ApiError(0, "The gateway cannot be reached: is the shop running?");
  }
  if (!response.ok || response.body === null) throw await failure(response);
  onOpen();
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      // Line ends may be CRLF or CR; a CR at the end of a chunk waits for the next one.
      pending = (pending + value).replace(/\r\n?/g, (end: string, at: number, all: string) =>
        end === "\r" && at === all.length - 1 ? end : "\n",
      );
      let cut: number;
      while ((cut = pending.indexOf("\n\n")) >= 0) {
        const block = pending.slice(0, cut);
        pending = pending.slice(cut + 2);
        let name = "message";
        const data: string[] = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length > 0) onEvent(name, data.join("\n"));
      }
    }
  } catch (e) {
    if (signal.aborted) return;
    throw new ApiError(0, "The live stream broke off: the gateway or the console API went away.");
  }
}

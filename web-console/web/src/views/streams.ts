// Streams: the topics with their ends and retention, a live tail of one topic (paused and
// resumed by the user), and search by aggregate id, event id or correlation id.

import { get, stream } from "../api";
import { every, h, json, link, message, notice, replace, route, table, time } from "../dom";
import type { View } from "../view";

interface Topic {
  topic: string;
  exists: boolean;
  partitions: number | null;
  cleanup_policy: string | null;
  retention_ms: string | null;
  offsets: Record<string, [number, number]>;
}

interface ShownRecord {
  topic: string;
  partition: number;
  offset: number;
  timestamp: string | null;
  key: string | null;
  headers: Record<string, string>;
  value: unknown;
}

interface FoundEvent {
  aggregate_type: string;
  aggregate_id: string;
  version: number;
  event_type: string;
  event_id: string;
  topic: string;
  partition: number;
  offset: number;
  occurred_at: string;
  correlation_id: string;
  causation_id: string;
  command_id: string;
  record: ShownRecord | null;
}

export function searchForm(value = ""): HTMLFormElement {
  const input = h("input", {
    type: "search",
    name: "q",
    value,
    maxlength: 200,
    placeholder: "aggregate id, event id or correlation id",
    "aria-label": "Search the log",
  });
  const form = h("form", { class: "search" }, input, h("button", { type: "submit" }, "Search"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = route("search", input.value.trim());
  });
  return form;
}

function retention(ms: string | null): string {
  if (ms === null) return "?";
  if (ms === "-1") return "forever";
  const days = Number(ms) / 86_400_000;
  return Number.isFinite(days) ? `${days.toFixed(days < 1 ? 2 : 0)} days` : ms;
}

export const topics: View = (root) => {
  const list = h("div", {}, notice("info", "Reading the topics…"));
  replace(root, h("h1", {}, "Streams"), searchForm(), list);
  return every(
    5000,
    async () => {
      const found = await get<Topic[]>("/console/api/topics");
      const rows = found.map((t) => {
        const spans = Object.entries(t.offsets);
        const records = spans.reduce((sum, [, [low, high]]) => sum + (high - low), 0);
        return [
          t.exists ? link(route("tail", t.topic), t.topic, { title: "Follow it live" }) : h("span", {}, `${t.topic} (missing)`),
          h("span", {}, String(t.partitions ?? "–")),
          h("span", {}, retention(t.retention_ms)),
          h("span", {}, t.cleanup_policy ?? "?"),
          h("span", {}, String(records)),
          h("span", { class: "ends" }, spans.map(([p, [low, high]]) => `${p}: ${low}–${high}`).join("  ")),
        ];
      });
      replace(
        list,
        table(["topic", "partitions", "retention", "cleanup", "offsets in use", "per partition: first–end"], rows, { "data-testid": "topics" }),
      );
    },
    (e) => replace(list, notice("error", message(e))),
  );
};

/** One record: its place, key and headers, and its value pretty-printed. */
export function recordView(record: ShownRecord): HTMLElement {
  const headers = Object.entries(record.headers);
  return h(
    "article",
    { class: "record", "data-offset": record.offset, "data-key": record.key ?? "" },
    h(
      "div",
      { class: "place" },
      h("code", {}, `${record.topic}/${record.partition}@${record.offset}`),
      " ",
      time(record.timestamp),
      " key ",
      h("code", {}, record.key ?? "(none)"),
    ),
    headers.length > 0
      ? h(
          "details",
          { class: "headers" },
          h("summary", {}, `${headers.length} headers`, record.headers["ce_type"] ? ` · ${record.headers["ce_type"]}` : ""),
          h("dl", { class: "headers" }, ...headers.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
        )
      : null,
    json(record.value),
  );
}

const SHOWN = 200;

export const tail: View = (root, [topic]) => {
  const status = h("span", { class: "live", "data-testid": "tail-status" }, "connecting…");
  const records = h("div", { class: "records", "data-testid": "tail-records" });
  const held: ShownRecord[] = [];
  let paused = false;
  let open = false;
  const toggle = h("button", { type: "button" }, "Pause");
  const show = (batch: ShownRecord[]) => {
    for (const record of batch) records.prepend(recordView(record));
    while (records.childElementCount > SHOWN) records.lastElementChild?.remove();
  };
  toggle.addEventListener("click", () => {
    paused = !paused;
    toggle.textContent = paused ? "Resume" : "Pause";
    if (!paused) show(held.splice(0));
    if (open) status.textContent = paused ? "paused" : "live";
  });
  replace(
    root,
    h("h1", {}, "Tail of ", h("code", {}, topic ?? "")),
    h("p", { class: "bar" }, status, " ", toggle, " ", link("#/streams", "all topics")),
    h("p", { class: "hint" }, `The last records of each partition, then each record as it is written; newest first, ${SHOWN} kept.`),
    records,
  );
  const stop = new AbortController();
  stream(
    `/console/api/topics/${encodeURIComponent(topic ?? "")}/tail?last=10`,
    (name, data) => {
      if (name === "error") {
        open = false;
        status.textContent = "stopped";
        records.prepend(notice("error", `The tail stopped: ${JSON.parse(data)}`));
        return;
      }
      const batch = JSON.parse(data) as ShownRecord[];
      if (paused) {
        held.push(...batch);
        held.splice(0, Math.max(0, held.length - SHOWN));
        status.textContent = `paused (${held.length} new held)`;
      } else {
        status.textContent = "live";
        show(batch);
      }
    },
    stop.signal,
    () => {
      open = true;
      status.textContent = paused ? "paused" : "live";
    },
  )
    .then(() => {
      const failed = !open;
      open = false;
      if (!stop.signal.aborted && !failed) status.textContent = "ended: the console's API closed the stream";
    })
    .catch((e) => {
      open = false;
      status.textContent = "stopped";
      records.prepend(notice("error", message(e)));
    });
  return () => stop.abort();
};

function aggregateLink(e: FoundEvent): Node {
  const page = e.aggregate_type === "order" ? "orders" : e.aggregate_type === "user" ? "users" : null;
  const text = `${e.aggregate_type} ${e.aggregate_id}`;
  return page ? link(route(page, e.aggregate_id), text) : h("span", {}, text);
}

/** Events as rows that open to their records. */
export function eventList(events: FoundEvent[]): HTMLElement {
  return h(
    "div",
    { class: "events" },
    ...events.map((e) =>
      h(
        "details",
        { class: "event", id: `event-${e.event_id}`, "data-testid": "event" },
        h(
          "summary",
          {},
          h("strong", {}, e.event_type),
          " v",
          String(e.version),
          " · ",
          aggregateLink(e),
          " · ",
          time(e.occurred_at),
          " · ",
          h("code", {}, `${e.topic}/${e.partition}@${e.offset}`),
        ),
        h(
          "p",
          { class: "ids" },
          "event ",
          h("code", {}, e.event_id),
          " · correlation ",
          link(route("explain", e.correlation_id), e.correlation_id),
          " · causation ",
          h("code", {}, e.causation_id),
        ),
        e.record ? recordView(e.record) : notice("error", "The record could not be read from the log."),
      ),
    ),
  );
}

export const search: View = (root, [q = ""]) => {
  const results = h("div", {});
  replace(root, h("h1", {}, "Search the log"), searchForm(q), results);
  if (!q) {
    replace(results, notice("info", "Give an aggregate id (an order's or a user's id), an event id or a correlation id."));
    return;
  }
  replace(results, notice("info", "Searching…"));
  const stop = new AbortController();
  get<{ items: FoundEvent[]; more: boolean }>(`/console/api/events?q=${encodeURIComponent(q)}`, stop.signal)
    .then((found) => {
      if (found.items.length === 0) {
        replace(results, notice("info", `Nothing in the event index has the id “${q}” (as an aggregate, an event or a correlation).`));
        return;
      }
      replace(results, h("p", {}, `${found.items.length} event(s)${found.more ? ", the first 100 shown" : ""}.`), eventList(found.items));
      const one = found.items.find((e) => e.event_id === q);
      if (one) document.getElementById(`event-${one.event_id}`)?.setAttribute("open", "");
    })
    .catch((e) => {
      if (!stop.signal.aborted) replace(results, notice("error", message(e)));
    });
  return () => stop.abort();
};

export type { FoundEvent, ShownRecord };

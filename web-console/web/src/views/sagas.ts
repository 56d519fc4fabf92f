// Sagas: live counts per state, a list filtered by state with pages, and one saga's
// timeline (steps, commands, compensations, failures, deadline) with the operator's retry.

import { ApiError, get, post } from "../api";
import { badge, every, h, link, message, notice, replace, route, table, time } from "../dom";
import type { View } from "../view";

const STATES = ["running", "compensating", "completed", "compensated", "failed"] as const;

interface Saga {
  order_id: string;
  user_id: string;
  correlation_id: string;
  state: string;
  current_step: string;
  payment: unknown;
  compensating_because?: string;
  compensations: { step: string; issued_at: string | null; done_at: string | null }[];
  failures: { at: string; step: string; error: string }[];
  steps: { at: string; kind: string; name: string; detail: string | null }[];
  payment_deadline?: string;
  started_at: string;
  updated_at: string;
}

type Counts = Record<(typeof STATES)[number], number>;

/** A command the saga issued, from its outbox. */
interface Issued {
  command_id: string;
  step: string;
  issued_at: string;
  done_at: string | null;
  attempts: number;
  last_error: string | null;
}

export const sagaList: View = (root, _args, query) => {
  const state = query.get("state") ?? "";
  const cursor = query.get("cursor") ?? "";
  const counts = h("div", { class: "counts", "data-testid": "saga-counts" });
  const list = h("div", {}, notice("info", "Reading the sagas…"));
  const filter = h(
    "p",
    { class: "filter" },
    "State: ",
    link("#/sagas", "all", { class: state === "" ? "active" : undefined }),
    ...STATES.flatMap((s) => [" ", link(`#/sagas?state=${s}`, s, { class: state === s ? "active" : undefined })]),
  );
  replace(root, h("h1", {}, "Sagas"), counts, filter, list);
  const stopCounts = every(
    2000,
    async () => {
      const found = await get<Counts>("/console/api/sagas/counts");
      replace(
        counts,
        ...STATES.map((s) => h("a", { href: `#/sagas?state=${s}`, class: "count", "data-state": s }, badge(s), h("b", {}, String(found[s])))),
      );
    },
    (e) => replace(counts, notice("error", message(e))),
  );
  const params = new URLSearchParams({ limit: "20" });
  if (state) params.set("state", state);
  if (cursor) params.set("cursor", cursor);
  const stopList = every(
    2000,
    async () => {
      const page = await get<{ items: Saga[]; next_cursor: string | null }>(`/v1/sagas?${params}`);
      const rows = page.items.map((s) => [
        link(route("sagas", s.order_id), s.order_id),
        badge(s.state),
        h("span", {}, s.current_step),
        h("span", {}, time(s.started_at)),
        h("span", {}, time(s.updated_at)),
      ]);
      const more = new URLSearchParams(state ? { state } : {});
      if (page.next_cursor) more.set("cursor", page.next_cursor);
      replace(
        list,
        rows.length === 0 ? notice("info", state ? `No saga is ${state}.` : "No saga yet: place an order.") : table(["order", "state", "step", "started", "updated"], rows, { "data-testid": "sagas" }),
        h(
          "p",
          { class: "pages" },
          cursor ? link(state ? `#/sagas?state=${state}` : "#/sagas", "First page") : null,
          " ",
          page.next_cursor ? link(`#/sagas?${more}`, "Next page") : null,
        ),
      );
    },
    (e) => replace(list, notice("error", message(e))),
  );
  return () => {
    stopCounts();
    stopList();
  };
};

export const sagaTimeline: View = (root, [orderId = ""], _query, context) => {
  const head = h("div", {});
  const body = h("div", {}, notice("info", "Reading the saga…"));
  const action = h("div", { class: "actions" });
  // Outside what the poll redraws: the answer to a retry stays in view.
  const outcome = h("div", { class: "outcome", "data-testid": "retry-outcome" });
  replace(root, h("h1", {}, "Saga of order ", h("code", {}, orderId)), head, action, outcome, body);
  let last = "";
  const stop = every(
    1500,
    async () => {
      const saga = await get<Saga>(`/v1/sagas/${encodeURIComponent(orderId)}`);
      const issued = await get<Issued[]>(`/console/api/sagas/${encodeURIComponent(orderId)}/commands`);
      const shown = JSON.stringify([saga, issued]);
      if (shown === last) return;
      last = shown;
      replace(
        head,
        h(
          "p",
          { class: "bar" },
          h("span", { "data-testid": "saga-state" }, badge(saga.state)),
          " step ",
          h("code", {}, saga.current_step),
          " · ",
          link(route("orders", saga.order_id), "order"),
          " · ",
          link(route("explain", saga.correlation_id), "explain", { "data-testid": "explain-link" }),
          " · ",
          link(route("users", saga.user_id), "customer"),
          saga.payment_deadline ? ` · payment due by ${time(saga.payment_deadline)}` : "",
        ),
        saga.compensating_because ? notice("info", `Compensating because: ${saga.compensating_because}`) : null,
      );
      replace(action, saga.state === "failed" ? retryButton(saga, context.role, outcome) : null);
      replace(body, ...timeline(saga), ...commands(issued));
    },
    (e) => {
      last = "";
      replace(body, notice("error", e instanceof ApiError && e.status === 404 ? `No saga for order ${orderId}.` : message(e)));
    },
  );
  return stop;
};

function timeline(saga: Saga): Node[] {
  const steps = h(
    "ol",
    { class: "timeline", "data-testid": "timeline" },
    ...saga.steps.map((s) =>
      h("li", { class: `step ${s.kind}` }, h("time", {}, time(s.at)), " ", badge(s.kind), " ", h("strong", {}, s.name), s.detail ? h("span", { class: "detail" }, ` ${s.detail}`) : null),
    ),
  );
  const parts: Node[] = [h("h2", {}, "Steps"), steps];
  if (saga.compensations.length > 0) {
    parts.push(
      h("h2", {}, "Compensations"),
      table(
        ["step", "issued", "done"],
        saga.compensations.map((c) => [h("span", {}, c.step), h("span", {}, time(c.issued_at)), h("span", {}, time(c.done_at))]),
      ),
    );
  }
  if (saga.failures.length > 0) {
    parts.push(
      h("h2", {}, "Failures"),
      table(
        ["at", "step", "error"],
        saga.failures.map((f) => [h("span", {}, time(f.at)), h("span", {}, f.step), h("span", { class: "error-text" }, f.error)]),
      ),
    );
  }
  return parts;
}

function commands(issued: Issued[]): Node[] {
  if (issued.length === 0) return [];
  return [
    h("h2", {}, "Commands issued"),
    table(
      ["step", "command id", "issued", "done", "attempts", "last error"],
      issued.map((c) => [
        h("strong", {}, c.step),
        h("code", {}, c.command_id),
        h("span", {}, time(c.issued_at)),
        h("span", {}, c.done_at ? time(c.done_at) : "not yet"),
        h("span", { class: "number" }, String(c.attempts)),
        h("span", { class: "error-text" }, c.last_error ?? ""),
      ]),
      { "data-testid": "saga-commands" },
    ),
  ];
}

function retryButton(saga: Saga, role: string, result: HTMLElement): HTMLElement {
  const button = h("button", { type: "button", "data-testid": "retry-saga" }, "Retry the failed step");
  if (role !== "operator") {
    button.disabled = true;
    button.title = "needs an operator key";
  }
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await post(`/v1/sagas/${encodeURIComponent(saga.order_id)}/retry`);
      replace(result, notice("ok", "Retry issued."));
    } catch (e) {
      replace(result, notice("error", message(e)));
      button.disabled = false;
    }
  });
  return h("p", {}, button, role !== "operator" ? h("span", { class: "hint" }, " An operator key is needed to retry.") : null);
}

// Explain: what one request caused, as a tree request -> events -> saga steps -> events,
// each event linking to its record.

import { ApiError, get } from "../api";
import { badge, every, h, link, message, notice, replace, route, time } from "../dom";
import type { View } from "../view";

interface TreeNode {
  kind: "request" | "saga_step" | "event" | "elsewhere" | "deadline";
  children: TreeNode[];
  command_id?: string;
  at?: string;
  event_id?: string;
  event_type?: string;
  aggregate_type?: string;
  aggregate_id?: string;
  version?: number;
  topic?: string;
  partition?: number;
  offset?: number;
  occurred_at?: string;
  step?: string;
  issued_at?: string;
  done_at?: string | null;
  attempts?: number;
  last_error?: string | null;
  event?: TreeNode;
  correlation_id?: string;
}

interface Explained {
  correlation_id: string;
  events: number;
  saga_steps: number;
  tree: TreeNode[];
}

function eventLabel(e: TreeNode): HTMLElement[] {
  return [
    badge("event"),
    h("span", {}, " "),
    link(route("search", e.event_id ?? ""), e.event_type ?? "?", { "data-testid": "tree-event" }),
    h("span", {}, ` ${e.aggregate_type} ${e.aggregate_id} v${e.version} · `),
    h("code", {}, `${e.topic}/${e.partition}@${e.offset}`),
    h("span", {}, ` · ${time(e.occurred_at)}`),
  ];
}

function label(node: TreeNode): HTMLElement {
  switch (node.kind) {
    case "request":
      return h("span", {}, badge("request"), ` command ${node.command_id} · ${time(node.at)}`);
    case "deadline":
      return h("span", {}, badge("deadline"), " steps the saga issued on its own (a deadline passed)");
    case "event":
      return h("span", {}, ...eventLabel(node));
    case "elsewhere":
      return h(
        "span",
        {},
        ...eventLabel(node.event ?? node),
        h("span", {}, " · from another request "),
        link(route("explain", node.correlation_id ?? ""), node.correlation_id ?? ""),
      );
    case "saga_step":
      return h(
        "span",
        {},
        badge("saga step"),
        " ",
        h("strong", {}, node.step ?? "?"),
        ` → command ${node.command_id} · issued ${time(node.issued_at)} · `,
        node.done_at ? `done ${time(node.done_at)}` : "not done",
        ` · attempts ${node.attempts}`,
        node.last_error ? h("span", { class: "error-text" }, ` · last error: ${node.last_error}`) : null,
      );
  }
}

function branch(nodes: TreeNode[]): HTMLElement {
  return h("ul", { class: "tree" }, ...nodes.map((n) => h("li", { "data-kind": n.kind }, label(n), n.children.length > 0 ? branch(n.children) : null)));
}

export const explain: View = (root, [correlation = ""]) => {
  const body = h("div", {}, notice("info", "Following the correlation id…"));
  replace(root, h("h1", {}, "Explain ", h("code", {}, correlation)), body);
  // The tree grows while the saga runs: drawn again when it changed.
  let last = "";
  return every(
    3000,
    async () => {
      const found = await get<Explained>(`/console/api/explain/${encodeURIComponent(correlation)}`);
      const shown = JSON.stringify(found);
      if (shown === last) return;
      last = shown;
      replace(
        body,
        h("p", {}, `${found.events} event(s) and ${found.saga_steps} saga step(s) under this correlation id.`),
        h("div", { "data-testid": "explain-tree" }, branch(found.tree)),
      );
    },
    (e) => {
      last = "";
      const text = e instanceof ApiError && e.status === 404 ? `Nothing is indexed under the correlation id ${correlation}.` : message(e);
      replace(body, notice("error", text));
    },
  );
};

// The read side's health: every reader's lag in records and seconds, updated live, with
// the read models' objective (past it, the projections' /ready answers 503); and the dead
// letters with the operator's retry and skip.

import { get, post } from "../api";
import { badge, every, h, message, notice, replace, route, table, time } from "../dom";
import type { View } from "../view";

interface ReaderLag {
  reader: string;
  group: string;
  records_behind: number;
  seconds_behind: number | null;
}

interface Lag {
  objective_seconds: number;
  readers: ReaderLag[];
}

interface DeadLetter {
  read_model: string;
  record: {
    aggregate_id: string;
    error: string;
    event_type: string | null;
    topic: string;
    partition: number;
    offset: number;
    version: number | null;
    parked_at: string;
  };
}

function lagBar(seconds: number | null, objective: number, readModel: boolean): HTMLElement {
  if (seconds === null) return h("span", { class: "hint" }, "unknown");
  const share = Math.min(1, seconds / objective);
  const bar = h("span", { class: "meter" }, h("span", { class: share >= 1 ? "fill over" : "fill" }));
  (bar.firstElementChild as HTMLElement).style.width = `${Math.max(2, share * 100)}%`;
  const verdict = !readModel ? "" : seconds > objective ? " past the objective: /ready is 503" : " within the objective";
  return h("span", {}, bar, ` ${seconds.toFixed(1)} s${verdict}`);
}

export const health: View = (root, _args, _query, context) => {
  const readers = h("div", {}, notice("info", "Measuring the lag…"));
  const letters = h("div", {}, notice("info", "Reading the dead letters…"));
  const result = h("div", {});
  replace(root, h("h1", {}, "Read side"), h("h2", {}, "Lag"), readers, h("h2", {}, "Dead letters"), result, letters);
  const stopLag = every(
    5000,
    async () => {
      const lag = await get<Lag>("/console/api/readers");
      replace(
        readers,
        h("p", { class: "hint" }, `Objective: a read model at most ${lag.objective_seconds} s behind (PROJECTION_LAG_OBJECTIVE_SECONDS).`),
        table(
          ["reader", "consumer group", "records behind", "oldest record not taken"],
          lag.readers.map((r) => [
            h("span", {}, r.reader),
            h("code", {}, r.group),
            h("span", { class: "number" }, String(r.records_behind)),
            lagBar(r.seconds_behind, lag.objective_seconds, r.reader.startsWith("read model")),
          ]),
          { "data-testid": "lag" },
        ),
      );
    },
    (e) => replace(readers, notice("error", message(e))),
  );
  if (context.role !== "operator") {
    replace(letters, notice("info", "Dead letters are shown to operator keys only: they hold records of any aggregate, and retry and skip change the read models."));
    return stopLag;
  }
  // One action at a time: its buttons stay disabled until the list is read again, so a
  // second click cannot skip the record that moved up behind the first.
  let acting = false;
  // Bumped by every action: a list read before it is not drawn after it.
  let generation = 0;
  const act = async (letter: DeadLetter, verb: "retry" | "skip") => {
    const what = `${letter.read_model} ${letter.record.aggregate_id}`;
    if (acting) return;
    if (verb === "skip" && !window.confirm(`Skip the parked record ${letter.record.topic}/${letter.record.partition}@${letter.record.offset} of ${what}? The read model will never apply it.`)) return;
    acting = true;
    generation += 1;
    for (const button of letters.querySelectorAll("button")) button.disabled = true;
    try {
      const done = await post<{ report: { applied: number; still_parked: number; blocked_by: string | null } }>(
        `/v1/dead-letters/${encodeURIComponent(letter.read_model)}/${encodeURIComponent(letter.record.aggregate_id)}/${verb}`,
      );
      const r = done.report;
      replace(result, notice("ok", `${verb === "skip" ? "Skipped" : "Retried"} ${what}: ${r.applied} applied, ${r.still_parked} still parked${r.blocked_by ? ` (${r.blocked_by})` : ""}.`));
    } catch (e) {
      replace(result, notice("error", `${verb} of ${what}: ${message(e)}`));
    }
    acting = false;
    try {
      await showLetters();
    } catch (e) {
      replace(letters, notice("error", message(e)));
    }
  };
  const button = (letter: DeadLetter, verb: "retry" | "skip") =>
    h(
      "button",
      { type: "button", disabled: acting, "data-testid": `${verb}-dead-letter`, onclick: () => void act(letter, verb) },
      verb === "retry" ? "Retry" : "Skip",
    );
  const showLetters = async () => {
    const asked = generation;
    const found = await get<{ items: DeadLetter[] }>("/v1/dead-letters?limit=100");
    if (asked !== generation || acting) return;
    if (found.items.length === 0) {
      replace(letters, notice("info", "No record is parked."));
      return;
    }
    // Retry and skip act on an aggregate's first parked record: only its row has them.
    const heads = new Set<string>();
    const isHead = (l: DeadLetter) => {
      const key = `${l.read_model} ${l.record.aggregate_id}`;
      const first = !heads.has(key);
      heads.add(key);
      return first;
    };
    replace(
      letters,
      table(
        ["read model", "aggregate", "record", "parked", "error", ""],
        found.items.map((l) => [
          badge(l.read_model),
          h("a", { href: route("search", l.record.aggregate_id) }, l.record.aggregate_id),
          h("code", {}, `${l.record.topic}/${l.record.partition}@${l.record.offset} ${l.record.event_type ?? ""} v${l.record.version ?? "?"}`),
          h("span", {}, time(l.record.parked_at)),
          h("span", { class: "error-text" }, l.record.error),
          isHead(l) ? h("span", {}, button(l, "retry"), " ", button(l, "skip")) : h("span", { class: "hint" }, "waits behind the record above"),
        ]),
        { "data-testid": "dead-letters" },
      ),
    );
  };
  const stopLetters = every(
    3000,
    async () => {
      if (!acting) await showLetters();
    },
    (e) => replace(letters, notice("error", message(e))),
  );
  return () => {
    stopLag();
    stopLetters();
  };
};

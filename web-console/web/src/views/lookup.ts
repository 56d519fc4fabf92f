// Orders and users: one looked up, its read model beside the events that made it, and
// its state as of any version, folded from the log by the time-travel API.

import { ApiError, get } from "../api";
import { badge, h, json, link, message, notice, replace, route } from "../dom";
import type { View } from "../view";
import { eventList, type FoundEvent } from "./streams";

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function form(kind: string, value: string): HTMLFormElement {
  const select = h("select", { name: "kind", "aria-label": "What to look up" }, h("option", { value: "orders" }, "order"), h("option", { value: "users" }, "user"));
  select.value = kind === "users" ? "users" : "orders";
  const input = h("input", { type: "search", name: "id", value, placeholder: "its id (a UUID)", "aria-label": "Id", maxlength: 36 });
  const form = h("form", { class: "search" }, select, input, h("button", { type: "submit" }, "Look up"));
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = route(select.value, input.value.trim());
  });
  return form;
}

export const lookup: View = (root, [id = ""]) => {
  const kind = location.hash.startsWith("#/users") ? "users" : "orders";
  const body = h("div", {});
  replace(root, h("h1", {}, "Orders & users"), form(kind, id), body);
  if (!location.hash.startsWith("#/orders") && !location.hash.startsWith("#/users")) {
    replace(body, notice("info", "Give an order's or a user's id."));
    return;
  }
  if (!UUID.test(id)) {
    replace(body, notice("error", `“${id}” is not an id: ids are UUIDs such as 0190c6d2-8f6e-7a51-9e1f-3b8f2a6c4d11.`));
    return;
  }
  const stop = new AbortController();
  const type = kind === "users" ? "user" : "order";
  replace(body, notice("info", `Reading the ${type}…`));
  Promise.all([
    get<Record<string, unknown>>(`/v1/${kind}/${id}`, stop.signal),
    get<{ items: FoundEvent[] }>(`/console/api/events?aggregate_type=${type}&aggregate_id=${id}`, stop.signal),
  ])
    .then(([model, events]) => {
      const version = Number(model.version ?? 0);
      const asOf = h("div", { class: "as-of" });
      replace(
        body,
        h("p", { class: "bar" }, badge(String(model.status ?? type)), ` ${type} `, h("code", {}, id), ` at version ${version}`, kind === "orders" ? h("span", {}, " · ", link(route("sagas", id), "its saga")) : null),
        h(
          "div",
          { class: "columns" },
          h("section", {}, h("h2", {}, "Read model"), json(model), asOf),
          h("section", {}, h("h2", {}, `Events (${events.items.length})`), eventList(events.items)),
        ),
      );
      if (version > 0) timeTravel(asOf, kind, id, version);
    })
    .catch((e) => {
      if (stop.signal.aborted) return;
      replace(body, notice("error", e instanceof ApiError && e.status === 404 ? `No ${type} ${id}.` : message(e)));
    });
  return () => stop.abort();
};

/** A slider over the versions; each position shows the state folded up to it. */
function timeTravel(root: HTMLElement, kind: string, id: string, latest: number): void {
  const slider = h("input", { type: "range", min: 1, max: latest, value: latest, step: 1, "aria-label": "Version", "data-testid": "version-slider" });
  const label = h("output", { "data-testid": "as-of-version" }, `version ${latest}`);
  const status = h("span", {});
  const state = h("div", { "data-testid": "as-of-state" });
  let asked = 0;
  const show = async () => {
    const version = Number(slider.value);
    const ask = ++asked;
    label.textContent = `version ${version}`;
    try {
      const row = await get<{ status?: string }>(`/v1/${kind}/${id}?as_of_version=${version}`);
      if (ask !== asked) return;
      replace(status, " status ", badge(row.status ?? "?"));
      replace(state, json(row));
    } catch (e) {
      if (ask === asked) replace(state, notice("error", message(e)));
    }
  };
  slider.addEventListener("input", () => void show());
  replace(
    root,
    h("h2", {}, "As of a version"),
    h("p", { class: "hint" }, "Folded from its first events only, read back from the log."),
    h("p", { class: "bar" }, slider, " ", label, status),
    state,
  );
  void show();
}

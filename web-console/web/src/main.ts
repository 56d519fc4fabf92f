// The console's shell: the key form, the navigation, and a router over the URL's fragment
// (#/sagas, #/explain/<id>, ...), so that views change without reloading the page and the
// key held in memory stays.

import "./style.css";
import { ApiError, get, hasKey, useKey } from "./api";
import { h, message, notice, replace } from "./dom";
import type { Context, View } from "./view";
import { explain } from "./views/explain";
import { health } from "./views/health";
import { lookup } from "./views/lookup";
import { sagaList, sagaTimeline } from "./views/sagas";
import { search, tail, topics } from "./views/streams";

const app = document.getElementById("app") as HTMLElement;
let context: Context | null = null;
let stopView: (() => void) | void;

const sections: [string, string][] = [
  ["streams", "Streams"],
  ["sagas", "Sagas"],
  ["health", "Read side"],
  ["lookup", "Orders & users"],
];

function pick(parts: string[]): View | null {
  const [section, id] = parts;
  switch (section) {
    case "":
    case "streams":
      return topics;
    case "tail":
      return id ? tail : null;
    case "search":
      return search;
    case "sagas":
      return id ? sagaTimeline : sagaList;
    case "explain":
      return id ? explain : null;
    case "health":
      return health;
    case "lookup":
    case "orders":
    case "users":
      return lookup;
    default:
      return null;
  }
}

function render(): void {
  if (stopView) stopView();
  stopView = undefined;
  if (!context) return signIn();
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?", 2) as [string, string?];
  const parts = path.split("/").map((p) => {
    try {
      return decodeURIComponent(p);
    } catch {
      return p;
    }
  });
  const main = h("main", { id: "view" });
  replace(app, shell(parts[0] || "streams"), main);
  const view = pick(parts);
  if (!view) {
    replace(main, notice("error", `There is no page at “#/${path}”.`), h("a", { href: "#/streams" }, "Back to the streams"));
    return;
  }
  try {
    stopView = view(main, parts.slice(1), new URLSearchParams(query), context);
  } catch (e) {
    replace(main, notice("error", message(e)));
  }
}

function shell(current: string): HTMLElement {
  const active = current === "tail" || current === "search" ? "streams" : current === "explain" ? "sagas" : current;
  return h(
    "header",
    {},
    h("strong", { class: "brand" }, "shop console"),
    h(
      "nav",
      {},
      ...sections.map(([id, label]) =>
        h("a", { href: `#/${id}`, class: id === active || (id === "lookup" && ["orders", "users"].includes(current)) ? "active" : undefined }, label),
      ),
    ),
    h(
      "span",
      { class: "who", "data-testid": "role" },
      `${context?.role} key ${context?.fingerprint.slice(0, 8)}…`,
      h("button", { type: "button", class: "quiet", onclick: signOut }, "Forget key"),
    ),
  );
}

function signOut(): void {
  useKey(null);
  context = null;
  render();
}

function signIn(): void {
  const input = h("input", {
    type: "password",
    name: "api-key",
    autocomplete: "off",
    required: true,
    "aria-label": "API key",
    placeholder: "API key",
  });
  const status = h("div", {});
  const form = h(
    "form",
    { class: "sign-in" },
    h("h1", {}, "shop console"),
    h("p", {}, "Give an API key. It stays in this page's memory: not in the address, not in storage; a reload asks again. Views need a client or operator key; actions (retry a saga, retry or skip a dead letter) need an operator key."),
    input,
    h("button", { type: "submit" }, "Open the console"),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    useKey(input.value.trim());
    replace(status, notice("info", "Checking the key…"));
    try {
      context = await get<Context>("/console/api/whoami");
      input.value = "";
      render();
    } catch (e) {
      useKey(null);
      const text = e instanceof ApiError && e.status === 401 ? "This key is not accepted." : message(e);
      replace(status, notice("error", text));
    }
  });
  replace(app, form);
  input.focus();
}

window.addEventListener("hashchange", render);
if (!hasKey()) signIn();

// A few helpers to build the page from data. Text always goes in as text (never as HTML),
// so nothing read from the log can run in the page.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | ((event: Event) => void) | undefined>;

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue;
    if (typeof value === "function") element.addEventListener(name.replace(/^on/, ""), value);
    else if (value === true) element.setAttribute(name, "");
    else element.setAttribute(name, String(value));
  }
  append(element, ...children);
  return element;
}

export function append(parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    parent.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function replace(parent: Element, ...children: Child[]): void {
  parent.replaceChildren();
  append(parent, ...children);
}

/** A message in the page: `error` for what failed, `info` for an empty answer. */
export function notice(kind: "error" | "info" | "ok", text: string): HTMLElement {
  return h("p", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" }, text);
}

/** A JSON value, indented. */
export function json(value: unknown): HTMLElement {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

export function time(iso: string | null | undefined): string {
  if (!iso) return "–";
  const at = new Date(iso);
  return Number.isNaN(at.getTime()) ? iso : at.toISOString().replace("T", " ").replace("Z", "");
}

export function badge(text: string): HTMLElement {
  return h("span", { class: `badge ${text.replace(/[^a-z_]/g, "")}` }, text);
}

export function link(href: string, text: string, attrs: Attrs = {}): HTMLAnchorElement {
  return h("a", { href, ...attrs }, text);
}

/** A route to the page of one id, with the id safely in the URL's fragment. */
export function route(...parts: string[]): string {
  return `#/${parts.map(encodeURIComponent).join("/")}`;
}

export function table(head: string[], rows: Node[][], attrs: Attrs = {}): HTMLTableElement {
  return h(
    "table",
    attrs,
    h("thead", {}, h("tr", {}, ...head.map((c) => h("th", {}, c)))),
    h("tbody", {}, ...rows.map((cells) => h("tr", {}, ...cells.map((c) => h("td", {}, c))))),
  );
}

/** Calls `work` now and every `ms` until the returned stop is called; errors go to `failed`. */
export function every(ms: number, work: () => Promise<void>, failed: (e: unknown) => void): () => void {
  let stopped = false;
  let timer: number | undefined;
  const tick = async () => {
    try {
      await work();
    } catch (e) {
      if (!stopped) failed(e);
    }
    if (!stopped) timer = window.setTimeout(tick, ms);
  };
  void tick();
  return () => {
    stopped = true;
    window.clearTimeout(timer);
  };
}

export function message(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

// What every view gets, and what it gives back.

export interface Context {
  /** `client` or `operator`. */
  role: string;
  fingerprint: string;
}

/**
 * Draws into `root` for the route's `args` and `query`; returns what stops its timers and
 * streams when the page moves on.
 */
export type View = (
  root: HTMLElement,
  args: string[],
  query: URLSearchParams,
  context: Context,
) => (() => void) | void;

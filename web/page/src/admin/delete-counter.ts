/**
 * `counter.delete` for the admin page. The TypeScript client's `deleteCounter` comes with the
 * delete procedure (issue 16); until the client has it, the page's Delete button is disabled and
 * says why, rather than sending a request this client cannot describe.
 */

import type { TallyClient } from "@tally/client";

/** What `counter.delete` answers. */
export interface DeleteAnswer {
  name: string;
  /** Whether this call removed it (false when it was already gone). */
  deleted: boolean;
  version: number;
}

type Deleting = { deleteCounter?: (name: string) => Promise<DeleteAnswer> };

/** Why this client cannot delete, or null when it can. */
export function deleteUnavailable(client: TallyClient): string | null {
  return typeof (client as Deleting).deleteCounter === "function"
    ? null
    : "This build's client has no counter.delete yet";
}

/** Deletes counter `name`. */
export function deleteCounter(client: TallyClient, name: string): Promise<DeleteAnswer> {
  const remove = (client as Deleting).deleteCounter;
  if (remove === undefined) return Promise.reject(new Error(deleteUnavailable(client) ?? ""));
  return remove.call(client, name);
}

/**
 * Signing in: a form for a token when the server asks for one (or the session expired), and
 * otherwise a line saying whom the page acts as, with a way to sign in or out.
 */

import { useTallyClient, useTallyPrincipal } from "@tally/react";
import { useId, useState, type FormEvent } from "react";
import { signIn, signOut, useSession } from "./session";

export function SignIn() {
  const client = useTallyClient();
  const principal = useTallyPrincipal();
  const { signedIn, reason } = useSession();
  const [asked, setAsked] = useState(false);
  const [draft, setDraft] = useState("");
  const [draftError, setDraftError] = useState<string | null>(null);
  const fieldId = useId();

  const onSubmit = (event: FormEvent) => {
    event.preventDefault();
    const token = draft.trim();
    if (token === "") {
      setDraftError("Paste a token first.");
      return;
    }
    setDraft("");
    setDraftError(null);
    setAsked(false);
    signIn(client, token);
  };

  if (reason === null && !asked) {
    return (
      <section className="session" aria-label="Session">
        {signedIn ? (
          <>
            <span data-testid="signed-in-as">
              Signed in as <strong>{describePrincipal(principal)}</strong>
            </span>
            <button type="button" className="link" onClick={() => signOut(client)}>
              Sign out
            </button>
          </>
        ) : (
          <button type="button" className="link" onClick={() => setAsked(true)}>
            Sign in with a token
          </button>
        )}
      </section>
    );
  }

  const title =
    reason === "expired"
      ? "Session expired — sign in again"
      : reason === "required"
        ? signedIn
          ? "The server did not accept this token"
          : "This server needs a token"
        : "Sign in";
  return (
    <section
      className="signin"
      aria-labelledby={`${fieldId}-title`}
      role={reason === null ? undefined : "alert"}
    >
      <h2 id={`${fieldId}-title`}>{title}</h2>
      <form onSubmit={onSubmit} className="signin-form" noValidate>
        <label htmlFor={`${fieldId}-token`}>Token</label>
        <div className="open-row">
          <input
            id={`${fieldId}-token`}
            type="password"
            value={draft}
            onChange={(event) => setDraft(event.target.value)}
            placeholder="A JWT from your application, or an API key (tally_…)"
            autoComplete="off"
            spellCheck={false}
            aria-invalid={draftError !== null}
            aria-describedby={`${fieldId}-help`}
          />
          <button type="submit" className="primary">
            Sign in
          </button>
          {reason === null && (
            <button type="button" onClick={() => setAsked(false)}>
              Cancel
            </button>
          )}
        </div>
        <p id={`${fieldId}-help`} className={draftError ? "field-error" : "hint"}>
          {draftError ??
            "Kept in this tab only. A link may also carry one as #token=…, which is never sent to the server."}
        </p>
      </form>
    </section>
  );
}

/** A principal as a person reads it. */
function describePrincipal(principal: string | null): string {
  if (principal === null) return "…";
  if (principal.startsWith("key:")) return `API key ${principal.slice("key:".length)}…`;
  return principal;
}

// Test credentials: HS256 JWTs signed with node's own HMAC (the server verifies them with a
// well-kept JWT crate), and the secret file `tally serve --jwt-secret-file` reads.
import { createHmac, randomBytes } from "node:crypto";
import { writeFileSync } from "node:fs";
import { join } from "node:path";

/** The claims a test token carries; `exp` and `iat` default from `ttlSeconds`. */
export interface TestClaims {
  sub: string;
  /** Grants, e.g. `likes:*=read,increment<=1`; without any, the token may do nothing. */
  grants?: string[];
  /** Seconds from now until `exp` (one hour by default); negative for an expired token. */
  ttlSeconds?: number;
  /** Other claims, or overrides of the ones above. */
  extra?: Record<string, unknown>;
}

function base64url(data: string | Buffer): string {
  return Buffer.from(data).toString("base64url");
}

/** An HS256 JWT for `claims`, signed with `secret`. */
export function mintToken(secret: string, claims: TestClaims): string {
  const now = Math.floor(Date.now() / 1000);
  const payload = {
    sub: claims.sub,
    iat: now,
    exp: now + (claims.ttlSeconds ?? 3600),
    ...(claims.grants ? { tally: { grants: claims.grants } } : {}),
    ...claims.extra,
  };
  const signingInput = `${base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${base64url(
    JSON.stringify(payload),
  )}`;
  const signature = createHmac("sha256", secret).update(signingInput).digest();
  return `${signingInput}.${base64url(signature)}`;
}

/** A JWT-shaped token with `claims` and a signature nobody made, for client-only tests. */
export function unsignedToken(claims: Record<string, unknown>): string {
  return `${base64url('{"alg":"HS256","typ":"JWT"}')}.${base64url(JSON.stringify(claims))}.c2ln`;
}

/**
 * Writes a fresh random secret (64 hex characters, with a trailing newline the server trims)
 * to `dir/jwt-secret`, and returns the file's path and the secret.
 */
export function writeSecretFile(dir: string): { path: string; secret: string } {
  const secret = randomBytes(32).toString("hex");
  const path = join(dir, "jwt-secret");
  writeFileSync(path, `${secret}\n`, { mode: 0o600 });
  return { path, secret };
}

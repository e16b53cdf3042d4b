/**
 * Authentication: a request presents one of the configured keys, byte for byte, on the `apikey` header or as
 * a Bearer token. Keys are compared as SHA-256 digests, so the time taken tells nothing about a key.
 */
import { withoutOws } from "./http_fields.ts";

/** Whether a request presents a configured key. */
export type KeyCheck = (request: Request) => Promise<boolean>;

async function sha256(text: string): Promise<Uint8Array> {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text)));
}

/** Compares digests, so the time taken depends on neither the keys' lengths nor where they differ. */
function sameDigest(a: Uint8Array, b: Uint8Array): boolean {
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

/** `Bearer`, any case, then SP/HTAB, then the token; other schemes present no key. */
const BEARER = /^bearer[ \t]+(.*)$/i;

/**
 * The keys a request presents: the `apikey` header and the Bearer token, each exactly as sent but for
 * SP/HTAB around it. One of them must be a configured key; the other may carry something else (supabase-js
 * puts a signed-in user's JWT there). Unicode white space such as U+00A0 is part of the value, so a key with
 * it is not the key.
 */
function presentedKeys(request: Request): string[] {
  const keys: string[] = [];
  const apikey = request.headers.get("apikey");
  if (apikey !== null) keys.push(withoutOws(apikey));
  const bearer = BEARER.exec(request.headers.get("authorization") ?? "");
  if (bearer) keys.push(withoutOws(bearer[1]));
  return keys.filter((key) => key !== "");
}

/** Every presented key is compared with every configured one, without stopping at the first match. */
export function keyCheck(authKeys: readonly string[]): KeyCheck {
  const allowed = Promise.all(authKeys.map(sha256));
  return async (request) => {
    const keys = await allowed;
    let ok = false;
    for (const presented of presentedKeys(request)) {
      const digest = await sha256(presented);
      for (const key of keys) ok = sameDigest(digest, key) || ok;
    }
    return ok;
  };
}

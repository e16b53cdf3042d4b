/**
 * Domain rules: which host names may reach the CloudPanel server, the site user derived from a domain,
 * site-user passwords, the document root, and quoting for the remote shell.
 *
 * Nothing reaches a shell unless it passed these rules; quoting is a second line of defence, not the first.
 */
import { createHash } from "node:crypto";
import { domainToASCII } from "node:url";
import { HostingError } from "./errors.ts";

/** A domain that passed `parseDomain`: lower-case ASCII (IDN converted to punycode). */
export type Domain = string & { readonly __brand: "Domain" };
/** A site user that matches `SITE_USER_RE`. */
export type SiteUser = string & { readonly __brand: "SiteUser" };

export const MAX_DOMAIN_LENGTH = 253;
export const MAX_LABEL_LENGTH = 63;
export const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
export const SITE_USER_RE = /^[a-z][a-z0-9-]{0,31}$/;
export const PASSWORD_RE = /^[A-Za-z0-9]{24,128}$/;
/** Characters a domain may hold before IDN conversion: letters and marks of any script, digits, dot, hyphen. */
const INPUT_CHARS_RE = /^[\p{L}\p{M}\p{Nd}.-]+$/u;

function invalid(rule: string): HostingError {
  return new HostingError("invalid_domain", `domain rejected: ${rule}`, {
    publicMessage: `The domain is invalid: ${rule}.`,
  });
}

/** Validates a domain as entered by the Hub and returns its ASCII form; throws `invalid_domain` naming the rule. */
export function parseDomain(input: unknown): Domain {
  if (typeof input !== "string" || input.length === 0) throw invalid("it is empty");
  // Bound the work before any conversion (a UTF-8 label can be longer than its punycode form, not 4x).
  if (input.length > MAX_DOMAIN_LENGTH * 4) {
    throw invalid(`it is longer than ${MAX_DOMAIN_LENGTH} characters`);
  }
  if (!INPUT_CHARS_RE.test(input)) {
    throw invalid(
      "it may only contain letters, digits, dots and hyphens (no spaces, quotes or other symbols)",
    );
  }
  // The WHATWG host parser also maps full-width dots and other look-alikes. For an invalid IDN Node returns
  // '' and Deno 2.1 throws a plain Error: both mean invalid.
  let ascii = "";
  try {
    ascii = domainToASCII(input.toLowerCase());
  } catch {
    // falls through to the check below
  }
  if (!ascii) throw invalid("it is not a valid internationalised domain name");
  if (ascii.length > MAX_DOMAIN_LENGTH) throw invalid(`it is longer than ${MAX_DOMAIN_LENGTH} characters`);
  const labels = ascii.split(".");
  if (labels.length < 2) throw invalid("it needs at least two labels, such as example.com");
  for (const label of labels) {
    if (label.length === 0) {
      throw invalid("it has an empty label (two dots in a row, or a leading or trailing dot)");
    }
    if (label.length > MAX_LABEL_LENGTH) {
      throw invalid(`a label is longer than ${MAX_LABEL_LENGTH} characters`);
    }
    if (!LABEL_RE.test(label)) {
      throw invalid(
        "a label starts or ends with a hyphen, or holds characters other than a-z, 0-9 and hyphen",
      );
    }
  }
  if (/^[0-9]+$/.test(labels[labels.length - 1])) throw invalid("it looks like an IP address, not a domain");
  return ascii as Domain;
}

/**
 * The CloudPanel site user for a domain: readable, unique per domain, stable across retries.
 * `example.com` → `example-com-` plus six hex digits of the domain's SHA-256.
 */
export function siteUserFor(domain: Domain): SiteUser {
  const hash = createHash("sha256").update(domain).digest("hex").slice(0, 6);
  let base = domain.replace(/\./g, "-").replace(/[^a-z0-9-]/g, "");
  if (!/^[a-z]/.test(base)) base = `s${base}`;
  base = base.slice(0, 32 - 1 - hash.length).replace(/-+$/, "");
  const user = `${base}-${hash}`;
  if (!SITE_USER_RE.test(user)) {
    throw new HostingError("internal", `derived site user does not match the rule`);
  }
  return user as SiteUser;
}

const ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/** A random password of `[A-Za-z0-9]`, without modulo bias. */
export function generatePassword(length = 32): string {
  if (length < 24 || length > 128) throw new RangeError(`Cannot generate a password of ${length} characters`);
  const out: string[] = [];
  const bytes = new Uint8Array(length * 2);
  while (out.length < length) {
    crypto.getRandomValues(bytes);
    for (const byte of bytes) {
      // 248 = 4 * 62: bytes at or above it would favour the first letters.
      if (byte < 248 && out.length < length) out.push(ALPHABET[byte % 62]);
    }
  }
  return out.join("");
}

export function docRootFor(user: SiteUser, domain: Domain): string {
  return `/home/${user}/htdocs/${domain}`;
}

/** POSIX single quoting for the remote shell. */
export function shellQuote(value: string): string {
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

/**
 * Domain rules: which host names may reach the CloudPanel server, the site user derived from a domain,
 * site-user passwords, the document root, and quoting for the remote shell.
 *
 * Nothing reaches a shell unless it passed these rules; quoting is a second line of defence, not the first.
 *
 * One domain, one spelling. `parseDomain` returns the canonical form (lower-case ASCII, IDN as punycode, no
 * trailing dot), so two rows whose text differs only in letter case or in Unicode versus `xn--` spelling get
 * the same value. Any other variation is refused rather than silently mapped: white space, invisible
 * characters (zero-width, soft hyphen, bidi controls), full-width dots, compatibility forms such as full-width
 * letters or ligatures, a trailing dot. A browser would map several of these to the same host, so accepting
 * them would let two differently written rows claim one site.
 */
import { createHash } from "node:crypto";
import { domainToASCII, domainToUnicode } from "node:url";
import { HostingError } from "./errors.ts";

/** A domain that passed `parseDomain`: its canonical form, lower-case ASCII (IDN converted to punycode). */
export type Domain = string & { readonly __brand: "Domain" };
/** A site user that matches `SITE_USER_RE`. */
export type SiteUser = string & { readonly __brand: "SiteUser" };

/** Octets of the ASCII form without a trailing dot (255 on the wire, less the length bytes). */
export const MAX_DOMAIN_LENGTH = 253;
export const MAX_LABEL_LENGTH = 63;
/**
 * Input longer than this is refused before any other work, so nothing below ever walks more. Each character of
 * a Unicode label costs at least one punycode octet and takes at most two UTF-16 units (three for a Hangul
 * syllable written as its parts): four units per octet is a wide margin.
 */
export const MAX_INPUT_LENGTH = MAX_DOMAIN_LENGTH * 4;
export const LABEL_RE = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
export const SITE_USER_RE = /^[a-z][a-z0-9-]{0,31}$/;
export const PASSWORD_RE = /^[A-Za-z0-9]{24,128}$/;
/**
 * Top-level domains that can never be a public website (special-use names): `localhost`, `invalid` (RFC 6761),
 * `local` (multicast DNS, RFC 6762), `onion` (Tor, RFC 7686), `alt` (non-DNS, RFC 9476), `arpa` (reverse DNS
 * and `home.arpa`, RFC 8375), `internal` (reserved by ICANN for private networks). `test` and `example`
 * (RFC 6761) are accepted: the demo and the tests use them, and Let's Encrypt refuses to certify them anyway.
 */
export const RESERVED_TLDS: ReadonlySet<string> = new Set([
  "localhost",
  "invalid",
  "local",
  "onion",
  "alt",
  "arpa",
  "internal",
]);
/** Every top-level domain in the root zone is letters only, or an `xn--` IDN; this also excludes numbers. */
const TLD_RE = /^(?:[a-z]{2,63}|xn--[a-z0-9-]{1,59})$/;

/**
 * What each character of a domain is, with the words that name a refused one; the first matching row wins,
 * `null` means allowed. Order matters: a few invisible characters are also letters or marks (U+3164, U+034F)
 * and must be named for what they look like.
 */
const CHARACTER_RULES: ReadonlyArray<readonly [RegExp, string | null]> = [
  [/\p{White_Space}/u, "white space"],
  [/[\u3002\uFF0E\uFF61]/u, "a full-width or ideographic dot (write '.')"],
  [/[\p{Cf}\p{Default_Ignorable_Code_Point}]/u, "an invisible or formatting character"],
  [/\p{Cc}/u, "a control character"],
  [/[/:@?#[\]\\%]/, "URL syntax (give the host name alone: no scheme, user, port, path or %-escape)"],
  [/[*_]/, "a wildcard or underscore, which host names cannot hold"],
  [/[\p{L}\p{M}\p{Nd}.-]/u, null],
];

/** Why a character may not be in a domain, or null when it may (letters and marks of any script, digits). */
function refusedCharacter(char: string): string | null {
  for (const [re, words] of CHARACTER_RULES) {
    if (re.test(char)) return words;
  }
  return "a symbol or other character";
}

/** `U+200B`; printable ASCII is also shown as itself, other characters never (they may be invisible or bidi). */
function describe(char: string): string {
  const code = `U+${char.codePointAt(0)!.toString(16).toUpperCase().padStart(4, "0")}`;
  if (!/^[\x21-\x7e]$/.test(char)) return code;
  return char === "'" ? `"'" (${code})` : `'${char}' (${code})`;
}

function invalid(rule: string): HostingError {
  return new HostingError("invalid_domain", `domain rejected: ${rule}`, {
    publicMessage: `The domain is invalid: ${rule}.`,
  });
}

/**
 * The WHATWG URL standard's "ends in a number" check: a host whose last label (after dropping one trailing
 * empty label) is a decimal, `0x` hexadecimal (`0x` alone included) or `0`-prefixed octal number is parsed as
 * an IPv4 address by browsers and URL libraries: `127.1`, `0x7f.1`, `2130706433` all mean 127.0.0.1.
 * Octal numbers are all digits, so two patterns cover the three forms.
 */
export function endsInNumber(host: string): boolean {
  const labels = host.split(".");
  if (labels[labels.length - 1] === "") {
    if (labels.length === 1) return false;
    labels.pop();
  }
  const last = labels[labels.length - 1];
  return /^[0-9]+$/.test(last) || /^0x[0-9a-f]*$/i.test(last);
}

/** The IDNA 2008 label rules UTS #46 leaves to the caller (its browser profile skips them). */
function checkHyphens(label: string, what: string): void {
  if (label.startsWith("-") || label.endsWith("-")) throw invalid(`${what} starts or ends with a hyphen`);
  if (label.slice(2, 4) === "--" && !label.startsWith("xn--")) {
    throw invalid(
      `${what} has '--' as its third and fourth characters, which is kept for encodings like xn--`,
    );
  }
}

/**
 * Validates a domain as entered by the Hub and returns its canonical form; throws `invalid_domain` naming the
 * rule. Accepted spellings differ only in letter case and in Unicode versus punycode (`Bücher.example` and
 * `xn--bcher-kva.example` both give `xn--bcher-kva.example`); everything else that a browser would map is
 * refused (see the module comment). Work is bounded by `MAX_INPUT_LENGTH`, whatever the input.
 */
export function parseDomain(input: unknown): Domain {
  if (typeof input !== "string" || input.length === 0) throw invalid("it is empty or not text");
  if (input.length > MAX_INPUT_LENGTH) {
    throw invalid(`it is longer than ${MAX_DOMAIN_LENGTH} characters`);
  }
  for (const char of input) {
    const refusal = refusedCharacter(char);
    if (refusal) {
      throw invalid(
        `it may only contain letters, digits, dots and hyphens; it contains ${refusal}, ${describe(char)}`,
      );
    }
  }
  // Canonical composition first: a decomposed ü is the same text as a composed one, not a variant spelling.
  const lower = input.normalize("NFC").toLowerCase();
  if (endsInNumber(lower)) throw ipv4();
  // For an invalid IDN Node returns '' and Deno 2.1 throws a plain Error: both mean invalid.
  let ascii = "";
  try {
    ascii = domainToASCII(lower);
  } catch {
    // falls through to the check below
  }
  if (!ascii) throw invalid("it is not a valid internationalised domain name");
  // UTS #46 maps some digits (full-width, for one) to ASCII ones: check the result too.
  if (endsInNumber(ascii)) throw ipv4();
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
    checkHyphens(label, "a label");
  }
  checkSpelling(lower, labels);
  const tld = labels[labels.length - 1];
  if (!TLD_RE.test(tld)) {
    throw invalid("its last label (the top-level domain) must be letters only, or an xn-- name");
  }
  if (RESERVED_TLDS.has(tld)) throw invalid(`'.${tld}' is reserved and can never be a public website`);
  return ascii as Domain;
}

/** The same function under the name the storage code uses: the one spelling a domain is stored and compared in. */
export const canonicalDomain: (input: unknown) => Domain = parseDomain;

function ipv4(): HostingError {
  return invalid(
    "it is an IP address (IPv4 in one of the forms browsers accept, such as 127.1 or 0x7f.0.0.1), not a domain",
  );
}

/**
 * Each label of the input must be the ASCII label itself or its Unicode form (up to case), and the Unicode
 * form must survive the round trip and the character rules. This refuses what UTS #46 maps silently
 * (full-width letters, ligatures, ignored characters) and `xn--` labels that decode to something no one could
 * type here: plain ASCII, symbols (emoji), a leading or trailing hyphen.
 */
function checkSpelling(lower: string, asciiLabels: string[]): void {
  const unicode = domainToUnicode(asciiLabels.join("."));
  const unicodeLabels = unicode.split(".");
  const inputLabels = lower.split(".");
  if (unicodeLabels.length !== asciiLabels.length || inputLabels.length !== asciiLabels.length) {
    throw invalid("it is not a valid internationalised domain name");
  }
  asciiLabels.forEach((ascii, i) => {
    if (!ascii.startsWith("xn--")) {
      if (inputLabels[i] !== ascii) throw respell(asciiLabels);
      return;
    }
    const decoded = unicodeLabels[i];
    let again = "";
    try {
      again = domainToASCII(decoded);
    } catch {
      // falls through
    }
    if (again !== ascii || /^\p{ASCII}*$/u.test(decoded)) {
      throw invalid("a label starting with xn-- is not a valid encoding of an internationalised name");
    }
    for (const char of decoded) {
      const refusal = refusedCharacter(char);
      if (refusal) throw invalid(`a label starting with xn-- encodes ${refusal}, ${describe(char)}`);
    }
    checkHyphens(decoded, "an internationalised label");
    if (inputLabels[i] !== ascii && inputLabels[i] !== decoded.toLowerCase()) throw respell(asciiLabels);
  });
}

function respell(asciiLabels: string[]): HostingError {
  return invalid(
    "it uses another form of a character (full-width, ligature, styled or similar); " +
      `write it as ${domainToUnicode(asciiLabels.join("."))}`,
  );
}

/**
 * The CloudPanel site user for a domain: readable, unique per domain, stable across retries.
 * `example.com` → `example-com-` plus six hex digits of the domain's SHA-256. Derived from the canonical form,
 * so every accepted spelling of a domain gives the same user.
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
  if (!Number.isInteger(length) || length < 24 || length > 128) {
    throw new RangeError(`Cannot generate a password of ${length} characters`);
  }
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

/** `/home/<user>/htdocs/<domain>`; refuses anything that could leave that directory (a cast, not a parse). */
export function docRootFor(user: SiteUser, domain: Domain): string {
  if (!SITE_USER_RE.test(user) || !/^[a-z0-9-]+(?:\.[a-z0-9-]+)+$/.test(domain)) {
    throw new HostingError(
      "internal",
      "document root asked for a site user or domain that was not validated",
    );
  }
  return `/home/${user}/htdocs/${domain}`;
}

/** POSIX single quoting for the remote shell. A NUL cannot be passed through a shell: refused. */
export function shellQuote(value: string): string {
  if (value.includes("\0")) {
    throw new HostingError("internal", "a NUL character cannot be quoted for a shell");
  }
  return `'${value.replaceAll("'", `'\\''`)}'`;
}

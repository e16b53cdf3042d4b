/**
 * DNS before the certificate: does every name the certificate will cover point at the server yet?
 *
 * Asked over DNS-over-HTTPS with `fetch`, in the JSON API that Google Public DNS (`https://dns.google/resolve`)
 * and Cloudflare (`https://cloudflare-dns.com/dns-query`) share: `GET <resolver>?name=<n>&type=A` with
 * `accept: application/dns-json`, answered `{Status, TC, RD, RA, AD, CD, Question[], Answer[]}`. An Edge
 * Function has no resolver of its own that is known to see what Let's Encrypt sees, and a public recursive
 * resolver does.
 *
 * Two outcomes matter to the caller, both retryable: `dns_not_ready` (the resolver answered, and DNS does not
 * point at the server yet: no certificate should be asked for) and `dns_resolver_unavailable` (the resolver
 * could not tell: unreachable, too slow, an error status, or an answer that is not DNS). Nothing here logs; the
 * caller does. Messages name the resolver by its host only: an operator's resolver URL may carry a private
 * profile id in its path or query.
 */
import { z } from "zod";
import { HostingError, isHostingError } from "./errors.ts";
import { concatBytes } from "./bytes.ts";

export type AddressType = "A" | "AAAA";

export interface DnsOptions {
  /** The JSON API endpoint, e.g. `https://cloudflare-dns.com/dns-query`; http only for a local simulator. */
  resolverUrl: string;
  fetch?: typeof fetch;
  /** For each query, from sending it to the end of its answer. */
  timeoutMs: number;
  /** The step's signal (lease lost, shutdown): its reason is rethrown when it is a HostingError. */
  signal?: AbortSignal;
}

export interface PointsTo {
  /** Per name as given, the A then AAAA addresses DNS answered, canonical (RFC 5952 for IPv6). */
  answered: Record<string, string[]>;
}

/** DNS type numbers (IANA) as the JSON API writes them. */
const TYPE_NUMBER: Readonly<Record<AddressType, number>> = { A: 1, AAAA: 28 };
/** RCODE names (IANA) for messages; Status 0 and 3 are answers, every other is the resolver's trouble. */
const RCODE_NAMES: Readonly<Record<number, string>> = {
  1: "FORMERR",
  2: "SERVFAIL",
  4: "NOTIMP",
  5: "REFUSED",
};
const NOERROR = 0;
const NXDOMAIN = 3;

/** A JSON DNS answer is a few hundred bytes; more is not one (and must not fill the function's memory). */
const MAX_BODY_BYTES = 64 * 1024;
const EXCERPT_CHARS = 120;

const record = z.object({
  name: z.string(),
  type: z.number().int().min(0).max(65535),
  TTL: z.number().int().min(0),
  data: z.string(),
});
/**
 * The fields every JSON API answer has. Extra fields (`Authority`, `Additional`, Google's `Comment` and
 * `edns_client_subnet`) are allowed and ignored; a missing or mistyped field means the URL is not a DNS JSON API.
 */
const dnsAnswer = z.object({
  Status: z.number().int().min(0).max(4095),
  TC: z.boolean(),
  RD: z.boolean(),
  RA: z.boolean(),
  AD: z.boolean(),
  CD: z.boolean(),
  Question: z.array(z.object({ name: z.string(), type: z.number().int() })),
  Answer: z.array(record).optional(),
});

const IPV4_RE = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?:\.(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/**
 * The one spelling of an IP address, or null when `text` is not one: IPv4 as a dotted quad (no leading zeros,
 * which some parsers read as octal), IPv6 as RFC 5952 writes it (lower case, no leading zeros, the longest run
 * of zero groups as `::`), so `2001:0DB8:0:0:0:0:0:1` and `2001:db8::1` compare equal. Zone ids (`%eth0`) are
 * refused: no public address has one.
 */
export function canonicalIp(text: string): string | null {
  if (IPV4_RE.test(text)) return text;
  if (!/^[0-9A-Fa-f:.]+$/.test(text) || !text.includes(":")) return null;
  try {
    // The WHATWG URL parser implements the IPv6 grammar and serialises hosts in RFC 5952's form.
    return new URL(`http://[${text}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
}

function isOfType(address: string, type: AddressType): boolean {
  return type === "A" ? IPV4_RE.test(address) : !IPV4_RE.test(address);
}

/** The resolver's host (and port), all that messages may show of its URL; config_invalid when it is no URL. */
function resolverHost(resolverUrl: string): string {
  let url: URL | null = null;
  try {
    url = new URL(resolverUrl);
  } catch {
    // handled below
  }
  if (url === null || (url.protocol !== "https:" && url.protocol !== "http:")) {
    throw new HostingError("config_invalid", "the DNS-over-HTTPS resolver URL is not an http(s) URL", {
      publicMessage: "The DNS-over-HTTPS resolver URL is not an http(s) URL.",
    });
  }
  return url.host;
}

/** A DNS name as answers write it may end in a dot and differ in case (RFC 4343). */
function sameName(a: string, b: string): boolean {
  const bare = (n: string) => n.toLowerCase().replace(/\.$/, "");
  return bare(a) === bare(b);
}

/** What one query found: the addresses, and whether the name does not exist at all. */
interface Lookup {
  addresses: string[];
  nxdomain: boolean;
}

/**
 * The name's addresses of `type`, canonical, in the order answered; none when the name has none or does not
 * exist (NXDOMAIN). A CNAME chain is followed as the resolver returns it: `Answer` holds the chain's CNAME
 * records and then the final name's records, and only records of the asked type are addresses.
 */
export async function resolve(name: string, type: AddressType, options: DnsOptions): Promise<string[]> {
  return (await lookup(name, type, options)).addresses;
}

async function lookup(name: string, type: AddressType, options: DnsOptions): Promise<Lookup> {
  const host = resolverHost(options.resolverUrl);
  const url = new URL(options.resolverUrl);
  url.searchParams.set("name", name);
  url.searchParams.set("type", type);
  const what = `${name} ${type}`;
  const text = await fetchAnswer(url, host, what, options);

  const unusable = (detail: string) =>
    new HostingError(
      "dns_resolver_unavailable",
      `the DNS resolver ${host} answered the query for ${what} with ${detail}: ${excerpt(text)}`,
      {
        publicMessage:
          `The DNS resolver ${host} answered something that is not a DNS JSON answer (${detail}); check the resolver URL. Will retry.`,
      },
    );
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw unusable(/^\s*</.test(text) ? "an HTML page" : "text that is not JSON");
  }
  const parsed = dnsAnswer.safeParse(json);
  if (!parsed.success) throw unusable("JSON of another shape");
  const answer = parsed.data;
  if (!answer.Question.some((q) => sameName(q.name, name) && q.type === TYPE_NUMBER[type])) {
    throw unusable("an answer to another question");
  }

  if (answer.Status === NXDOMAIN) return { addresses: [], nxdomain: true };
  if (answer.Status !== NOERROR) {
    const rcode = RCODE_NAMES[answer.Status] ?? `DNS error ${answer.Status}`;
    throw new HostingError(
      "dns_resolver_unavailable",
      `the DNS resolver ${host} answered ${rcode} (Status ${answer.Status}) to the query for ${what}`,
      { publicMessage: `The DNS resolver ${host} answered ${rcode} for ${what}; will retry.` },
    );
  }
  // A truncated answer may lack records, and a missing record could be one that points elsewhere.
  if (answer.TC) throw unusable("a truncated answer (TC)");

  const addresses: string[] = [];
  for (const rr of answer.Answer ?? []) {
    if (rr.type !== TYPE_NUMBER[type]) continue;
    const ip = canonicalIp(rr.data);
    if (ip === null || !isOfType(ip, type)) throw unusable(`an ${type} record whose data is not an address`);
    if (!addresses.includes(ip)) addresses.push(ip);
  }
  return { addresses, nxdomain: false };
}

/** The body of a 200 answer within `timeoutMs`; every other outcome is `dns_resolver_unavailable`. */
async function fetchAnswer(url: URL, host: string, what: string, options: DnsOptions): Promise<string> {
  const { signal, timeoutMs } = options;
  if (signal?.aborted) throw aborted(signal.reason, what);
  const controller = new AbortController();
  // Our own timer rather than AbortSignal.timeout: cleared as soon as the answer is read.
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  const onAbort = () => controller.abort();
  signal?.addEventListener("abort", onAbort, { once: true });
  const failed = (error: unknown): HostingError => {
    if (signal?.aborted) return aborted(signal.reason, what);
    if (isHostingError(error)) return error;
    if (controller.signal.aborted) {
      return new HostingError(
        "dns_resolver_unavailable",
        `the DNS resolver ${host} did not answer the query for ${what} within ${timeoutMs} ms`,
        {
          publicMessage: `The DNS resolver ${host} did not answer within ${seconds(timeoutMs)}; will retry.`,
        },
      );
    }
    // Deno's fetch errors quote the request URL, which may hold a private path: keep only its host.
    const detail = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
    return new HostingError(
      "dns_resolver_unavailable",
      `the DNS resolver ${host} could not be reached for ${what}: ${withoutUrls(detail, host)}`,
      { publicMessage: `The DNS resolver ${host} could not be reached; will retry.` },
    );
  };
  try {
    const response = await (options.fetch ?? fetch)(url, {
      headers: { accept: "application/dns-json" },
      signal: controller.signal,
    });
    if (response.status !== 200) {
      await response.body?.cancel();
      throw new HostingError(
        "dns_resolver_unavailable",
        `the DNS resolver ${host} answered HTTP ${response.status} to the query for ${what}`,
        { publicMessage: `The DNS resolver ${host} answered HTTP ${response.status}; will retry.` },
      );
    }
    return await readBody(response, host, what);
  } catch (error) {
    throw failed(error);
  } finally {
    clearTimeout(timer);
    signal?.removeEventListener("abort", onAbort);
  }
}

async function readBody(response: Response, host: string, what: string): Promise<string> {
  const reader = response.body?.getReader();
  if (!reader) return "";
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY_BYTES) {
      await reader.cancel();
      throw new HostingError(
        "dns_resolver_unavailable",
        `the DNS resolver ${host} answered the query for ${what} with more than ${MAX_BODY_BYTES} bytes`,
        {
          publicMessage:
            `The DNS resolver ${host} answered something that is not a DNS JSON answer (an oversized answer); check the resolver URL. Will retry.`,
        },
      );
    }
    chunks.push(value);
  }
  return new TextDecoder().decode(concatBytes(...chunks));
}

function aborted(reason: unknown, what: string): HostingError {
  if (isHostingError(reason)) return reason;
  return new HostingError("interrupted", `DNS query for ${what}: aborted (${String(reason)})`, {
    cause: reason,
  });
}

function withoutUrls(text: string, host: string): string {
  return text.replace(/\b[a-z][a-z0-9+.-]*:\/\/[^\s)'"]+/gi, `<${host}>`);
}

function excerpt(text: string): string {
  const line = text.replace(/\s+/g, " ").trim();
  return line.length > EXCERPT_CHARS ? `${line.slice(0, EXCERPT_CHARS)}…` : line;
}

function seconds(ms: number): string {
  return `${Math.round(ms / 100) / 10} s`;
}

/**
 * Resolves when every name has at least one A or AAAA record and every one of them is among `expected` (the
 * server's public addresses, in any spelling). Let's Encrypt may validate over any of a name's addresses
 * (IPv6 first when there is an AAAA record), so one stray record is enough to fail it: `dns_not_ready`, whose
 * public message says per name what DNS answered and what was expected. Names are asked in parallel; the first
 * resolver failure cancels the rest and is thrown.
 */
export async function checkPointsTo(
  names: string[],
  expected: string[],
  options: DnsOptions,
): Promise<PointsTo> {
  if (names.length === 0) throw new RangeError("checkPointsTo needs at least one name");
  resolverHost(options.resolverUrl);
  const wanted = expected.map((ip) => {
    const canonical = canonicalIp(ip.trim());
    if (canonical === null) {
      throw new HostingError("config_invalid", `the server's public address ${ip} is not an IP address`, {
        publicMessage: `The server's public address '${ip}' is not an IPv4 or IPv6 address.`,
      });
    }
    return canonical;
  });
  if (wanted.length === 0) {
    throw new HostingError("config_invalid", "no public address is configured for the server", {
      publicMessage:
        "The server has no public address to compare DNS with; set CLOUDPANEL_PUBLIC_IPS or the server's public_ips.",
    });
  }

  const unique = [...new Set(names)];
  // The first resolver failure stops the other queries; all are settled before it is thrown, so none is left
  // running behind the caller.
  const siblings = new AbortController();
  const signal = options.signal ? AbortSignal.any([options.signal, siblings.signal]) : siblings.signal;
  const queryOptions = { ...options, signal };
  let firstError: unknown;
  const settled = await Promise.allSettled(
    unique.flatMap((name) => [lookup(name, "A", queryOptions), lookup(name, "AAAA", queryOptions)]).map((p) =>
      p.catch((error) => {
        if (firstError === undefined) firstError = error;
        siblings.abort(error);
        throw error;
      })
    ),
  );
  if (firstError !== undefined) throw firstError;
  const lookups = settled.map((r) => (r as PromiseFulfilledResult<Lookup>).value);

  const answered: Record<string, string[]> = {};
  const found = unique.map((name, i) => {
    const [a, aaaa] = [lookups[2 * i], lookups[2 * i + 1]];
    const addresses = [...a.addresses, ...aaaa.addresses];
    answered[name] = addresses;
    return {
      name,
      addresses,
      nxdomain: a.nxdomain || aaaa.nxdomain,
      right: addresses.filter((ip) => wanted.includes(ip)).length,
    };
  });
  const wrong = found.filter((f) => f.addresses.length === 0 || f.right < f.addresses.length);
  if (wrong.length === 0) return { answered };

  const expectedText = [...new Set(wanted)].join(" or ");
  const parts = wrong.map(({ name, addresses, nxdomain, right }) => {
    if (addresses.length === 0) {
      return `${name} has no A or AAAA record${nxdomain ? " (NXDOMAIN: the name does not exist)" : ""}`;
    }
    return `${name} → ${addresses.join(", ")} (expected ${right > 0 ? "only " : ""}${expectedText})`;
  });
  // Each name that points elsewhere says what was expected; when none does, the addresses are said once.
  const tail = wrong.some((f) => f.addresses.length > 0) ? "" : ` The server's addresses: ${expectedText}.`;
  const text = `DNS does not point at the server yet: ${parts.join("; ")}.${tail}`;
  throw new HostingError("dns_not_ready", `${text} Resolver: ${resolverHost(options.resolverUrl)}.`, {
    publicMessage: text,
  });
}

// deno-lint-ignore-file no-console
/**
 * A DNS-over-HTTPS resolver simulator (the JSON API) for tests and the demo: the DNS check before the
 * certificate asks a public resolver over the internet, which a test cannot reach or steer.
 *
 * The shape follows the JSON API as Google Public DNS documents it and Cloudflare adopted it: `GET` with `name`
 * and `type` (a mnemonic, case-insensitive, or a number), answered with HTTP 200 and
 * `{Status, TC, RD, RA, AD, CD, Question: [{name, type}], Answer: [{name, type, TTL, data}]}`; type numbers 1 A,
 * 28 AAAA, 5 CNAME, 6 SOA; names written with a trailing dot; Status 0 NOERROR, 2 SERVFAIL, 3 NXDOMAIN (with the
 * CNAME chain that led there in `Answer`), 5 REFUSED; a CNAME chain is followed and returned in order, CNAME
 * records first. Two endpoints: `/dns-query` (Cloudflare's path: JSON only with `accept: application/dns-json`
 * or `ct=application/dns-json`, else HTTP 400, as it then expects the binary `dns=` form) and `/resolve`
 * (Google's path: always JSON, and a `Comment` field).
 *
 * ASSUMED (not taken from either provider): the texts of 400 answers (`{"error": …}`), the SOA record placed in
 * `Authority` for NXDOMAIN and empty answers (its zone is the name's last two labels, its values fixed), the
 * TTLs (300 unless set), a CNAME loop or a chain longer than 16 answering SERVFAIL, and the bodies of
 * injected faults. AD is always false: nothing here is signed.
 *
 * In-process: `const sim = await startDohSim(); sim.setRecords("example.com", { A: ["203.0.113.10"] }); …`
 * Records that follow something else (the demo's: where each site was placed, read from its database) come from
 * `setResolver((name, type) => addresses | null)`, asked first for every A and AAAA question.
 * Stand-alone: `deno run -A dev/doh_sim.ts [--port=8053] [--record=example.com=203.0.113.10,2001:db8::10 …]`
 * prints its URL.
 */
import { registeredDomain } from "../supabase/functions/hosting-automator/certificate_names.ts";
import { gone, serveLocal, wait } from "./sim_http.ts";

export type DohStyle = "cloudflare" | "google";

export interface DohRecords {
  A?: string[];
  AAAA?: string[];
  /** The name is an alias: it has no other record (a CNAME cannot coexist with other data). */
  CNAME?: string;
  /** Seconds; 300 by default. */
  ttl?: number;
}

export interface DohSimOptions {
  /** 0 (default) picks a free port; always on 127.0.0.1. */
  port?: number;
  /** Which endpoint `url` names: `/dns-query` (default) or `/resolve`. Both are always served. */
  style?: DohStyle;
  /** Delay before each answer. */
  latencyMs?: number;
}

/**
 * Answers A and AAAA questions before the records set with `setRecords`: the addresses of that type (an empty
 * list: the name exists without such a record), or null to fall back to the records (NXDOMAIN when none).
 * `name` is in lower case without the trailing dot. May be async (it may read a database).
 */
export type DohResolver = (
  name: string,
  type: "A" | "AAAA",
) => string[] | null | Promise<string[] | null>;

/** What the next requests answer instead of DNS; see also `servfail(name)` and `down()`. */
export type DohFault =
  /** This HTTP status with a short text body. */
  | { kind: "status"; status: number }
  /** HTTP 200 labelled application/dns-json whose body is not JSON. */
  | { kind: "garbage" }
  /** HTTP 200 with JSON that is not a DNS answer (a login page's API, a wrong URL). */
  | { kind: "shape" }
  /** No answer until the client goes away, the simulator goes down or closes. */
  | { kind: "hang" };

export interface DohQuery {
  path: string;
  /** The `name` and `type` parameters as sent. */
  name: string;
  type: string;
  accept: string | null;
  /** The HTTP status answered: 0 while pending. */
  status: number;
  /** The DNS Status of a JSON answer. */
  rcode?: number;
  fault?: DohFault["kind"] | "unavailable";
}

export interface DohSim {
  /** The endpoint: `http://127.0.0.1:{port}/dns-query` (or `/resolve` for the google style). */
  readonly url: string;
  readonly port: number;
  /** Copies of every query received, oldest first. */
  readonly queries: DohQuery[];
  clearQueries(): void;
  /** Replaces the name's records; a name never set is NXDOMAIN. */
  setRecords(name: string, records: DohRecords): void;
  /** The name no longer exists (NXDOMAIN). */
  removeRecords(name: string): void;
  /** Asked first for every A and AAAA question (null: no hook). A hook that throws answers SERVFAIL. */
  setResolver(resolver: DohResolver | null): void;
  /** Queries about this name answer this Status (2 SERVFAIL by default, 5 REFUSED…) until `clearFaults()`. */
  servfail(name: string, rcode?: number): void;
  /** Injects `fault` into the next `times` requests, or every request until `clearFaults()`. */
  fail(fault: DohFault, times?: number): void;
  /** Removes `servfail` names and the `fail` fault. */
  clearFaults(): void;
  setLatency(ms: number): void;
  /**
   * `closed` (default): stops listening, connections are refused. `503`: keeps listening and answers every
   * request HTTP 503, as a resolver behind a failing load balancer does. Pending requests are released.
   */
  down(mode?: "closed" | "503"): Promise<void>;
  /** Answers again, on the same port. */
  up(): void;
  close(): Promise<void>;
}

const TYPES: Readonly<Record<string, number>> = { A: 1, CNAME: 5, SOA: 6, AAAA: 28 };
const MAX_CHAIN = 16;
const DEFAULT_TTL = 300;
const LABEL_RE = /^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$/;

interface Zone {
  A: string[];
  AAAA: string[];
  CNAME?: string;
  ttl: number;
}

interface Rr {
  name: string;
  type: number;
  TTL: number;
  data: string;
}

/** Lower case, no trailing dot: how names are keyed (DNS names compare case-insensitively, RFC 4343). */
function key(name: string): string {
  return name.toLowerCase().replace(/\.$/, "");
}

function fqdn(name: string): string {
  return `${key(name)}.`;
}

/** A name the resolvers accept: 1 to 253 octets, labels of 1 to 63 (both refuse `.x`, `x..y` and ``). */
function validName(name: string): boolean {
  const bare = name.replace(/\.$/, "").toLowerCase();
  return bare.length >= 1 && bare.length <= 253 && bare.split(".").every((l) => LABEL_RE.test(l));
}

function parseType(raw: string | null): number | null {
  if (raw === null || raw === "") return TYPES.A;
  if (/^\d+$/.test(raw)) {
    const n = Number(raw);
    return n >= 1 && n <= 65535 ? n : null;
  }
  return TYPES[raw.toUpperCase()] ?? null;
}

class Sim implements DohSim {
  readonly #zones = new Map<string, Zone>();
  readonly #servfail = new Map<string, number>();
  readonly #log: DohQuery[] = [];
  readonly #style: DohStyle;
  #latencyMs: number;
  #fault: { fault: DohFault; left: number } | null = null;
  #resolver: DohResolver | null = null;
  #unavailable = false;
  #server: Deno.HttpServer<Deno.NetAddr> | null = null;
  /** Aborted when the simulator goes down or closes: releases hanging and sleeping handlers. */
  #release = new AbortController();
  #closed = false;
  #port = 0;

  constructor(options: DohSimOptions) {
    this.#style = options.style ?? "cloudflare";
    this.#latencyMs = options.latencyMs ?? 0;
  }

  get port(): number {
    return this.#port;
  }
  get url(): string {
    return `http://127.0.0.1:${this.#port}${this.#style === "google" ? "/resolve" : "/dns-query"}`;
  }
  get queries(): DohQuery[] {
    return this.#log.map((q) => ({ ...q }));
  }

  clearQueries(): void {
    this.#log.length = 0;
  }

  setRecords(name: string, records: DohRecords): void {
    if (!validName(name)) throw new Error(`not a DNS name: ${name}`);
    const { A = [], AAAA = [], CNAME, ttl = DEFAULT_TTL } = records;
    if (CNAME !== undefined && (A.length > 0 || AAAA.length > 0)) {
      throw new Error(`${name}: a CNAME cannot coexist with other records`);
    }
    this.#zones.set(key(name), { A: [...A], AAAA: [...AAAA], CNAME, ttl });
  }

  removeRecords(name: string): void {
    this.#zones.delete(key(name));
  }

  setResolver(resolver: DohResolver | null): void {
    this.#resolver = resolver;
  }

  servfail(name: string, rcode = 2): void {
    this.#servfail.set(key(name), rcode);
  }

  fail(fault: DohFault, times?: number): void {
    this.#fault = { fault, left: times ?? Infinity };
  }

  clearFaults(): void {
    this.#fault = null;
    this.#servfail.clear();
  }

  setLatency(ms: number): void {
    this.#latencyMs = ms;
  }

  listen(port: number): void {
    this.#release = new AbortController();
    const server = serveLocal(port, (request) => this.#handle(request));
    this.#server = server;
    this.#port = server.addr.port;
  }

  async down(mode: "closed" | "503" = "closed"): Promise<void> {
    this.#release.abort();
    this.#release = new AbortController();
    if (mode === "503") {
      this.#unavailable = true;
      return;
    }
    const server = this.#server;
    if (!server) return;
    this.#server = null;
    await server.shutdown();
  }

  up(): void {
    if (this.#closed) throw new Error("the simulator is closed");
    this.#unavailable = false;
    if (!this.#server) this.listen(this.#port);
  }

  async close(): Promise<void> {
    this.#closed = true;
    this.#unavailable = false;
    await this.down("closed");
  }

  // -------------------------------------------------------------------------------------------------------------

  async #handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const entry: DohQuery = {
      path: url.pathname,
      name: url.searchParams.get("name") ?? "",
      type: url.searchParams.get("type") ?? "",
      accept: request.headers.get("accept"),
      status: 0,
    };
    this.#log.push(entry);
    const signals = [request.signal, this.#release.signal];
    let response: Response;
    if (this.#latencyMs > 0 && !(await wait(this.#latencyMs, signals))) {
      response = gone();
    } else if (this.#unavailable) {
      entry.fault = "unavailable";
      response = new Response("503 Service Temporarily Unavailable", { status: 503 });
    } else {
      const fault = this.#takeFault();
      if (fault) entry.fault = fault.kind;
      response = fault ? await faultResponse(fault, signals) : await this.#route(request, url, entry);
    }
    entry.status = response.status;
    return response;
  }

  #takeFault(): DohFault | null {
    const f = this.#fault;
    if (!f) return null;
    if (--f.left <= 0) this.#fault = null;
    return f.fault;
  }

  async #route(request: Request, url: URL, entry: DohQuery): Promise<Response> {
    if (url.pathname !== "/dns-query" && url.pathname !== "/resolve") {
      return new Response("404 page not found", { status: 404 });
    }
    if (request.method !== "GET") return badRequest("Only GET is supported for JSON queries");
    if (url.pathname === "/dns-query") {
      // Cloudflare's endpoint serves the binary format (`dns=`) unless JSON is asked for.
      const json = (request.headers.get("accept") ?? "").includes("application/dns-json") ||
        url.searchParams.get("ct") === "application/dns-json";
      if (!json) return badRequest("Missing 'dns' parameter or 'accept: application/dns-json' header");
    }
    const name = url.searchParams.get("name");
    if (name === null || !validName(name)) return badRequest(`Invalid query name '${name ?? ""}'`);
    const type = parseType(url.searchParams.get("type"));
    if (type === null) return badRequest(`Invalid query type '${url.searchParams.get("type")}'`);

    const body = await this.#answer(name, type);
    entry.rcode = body.Status;
    if (url.pathname === "/resolve") body.Comment = "Response from 127.0.0.1 (simulated).";
    return new Response(JSON.stringify(body), {
      status: 200,
      headers: { "content-type": "application/dns-json", "cache-control": "max-age=300" },
    });
  }

  async #answer(name: string, type: number): Promise<Record<string, unknown> & { Status: number }> {
    const header = (Status: number) => ({
      Status,
      TC: false,
      RD: true,
      RA: true,
      AD: false,
      CD: false,
      Question: [{ name: fqdn(name), type }],
    });
    const answer: Rr[] = [];
    const seen = new Set<string>();
    let current = key(name);
    for (;;) {
      const rcode = this.#servfail.get(current);
      // A resolver that cannot finish the chain answers SERVFAIL without a partial answer.
      if (rcode !== undefined) return header(rcode);
      const hooked = await this.#hook(current, type);
      if (hooked === "servfail") return header(2);
      if (hooked !== null) {
        for (const d of hooked) answer.push({ name: fqdn(current), type, TTL: DEFAULT_TTL, data: d });
        if (hooked.length === 0) {
          return { ...header(0), ...(answer.length ? { Answer: answer } : {}), Authority: [soa(current)] };
        }
        return { ...header(0), Answer: answer };
      }
      const zone = this.#zones.get(current);
      if (!zone) {
        return { ...header(3), ...(answer.length ? { Answer: answer } : {}), Authority: [soa(current)] };
      }
      if (zone.CNAME !== undefined && type !== TYPES.CNAME) {
        if (seen.has(current) || seen.size >= MAX_CHAIN) return header(2);
        seen.add(current);
        answer.push({ name: fqdn(current), type: TYPES.CNAME, TTL: zone.ttl, data: fqdn(zone.CNAME) });
        current = key(zone.CNAME);
        continue;
      }
      const data = type === TYPES.A
        ? zone.A
        : type === TYPES.AAAA
        ? zone.AAAA
        : type === TYPES.CNAME && zone.CNAME !== undefined
        ? [fqdn(zone.CNAME)]
        : [];
      for (const d of data) answer.push({ name: fqdn(current), type, TTL: zone.ttl, data: d });
      if (data.length === 0) {
        return { ...header(0), ...(answer.length ? { Answer: answer } : {}), Authority: [soa(current)] };
      }
      return { ...header(0), Answer: answer };
    }
  }

  /** The hook's addresses for an A or AAAA question; null: no hook or no answer from it; "servfail": it threw. */
  async #hook(name: string, type: number): Promise<string[] | null | "servfail"> {
    const resolver = this.#resolver;
    const mnemonic = type === TYPES.A ? "A" : type === TYPES.AAAA ? "AAAA" : null;
    if (!resolver || !mnemonic) return null;
    try {
      const addresses = await resolver(name, mnemonic);
      return addresses === null ? null : [...addresses];
    } catch {
      return "servfail";
    }
  }
}

/** The SOA a resolver puts in `Authority` of a negative answer: the registered domain's zone; ASSUMED values. */
function soa(name: string): Rr {
  const zone = registeredDomain(name);
  return {
    name: `${zone}.`,
    type: TYPES.SOA,
    TTL: 300,
    data: `ns1.${zone}. hostmaster.${zone}. 2024010101 7200 3600 1209600 300`,
  };
}

async function faultResponse(fault: DohFault, signals: AbortSignal[]): Promise<Response> {
  switch (fault.kind) {
    case "status":
      return new Response(`${fault.status} (simulated)`, { status: fault.status });
    case "garbage":
      return new Response('{"Status":0,"TC":false,"Answer":[{"name":"exa', {
        status: 200,
        headers: { "content-type": "application/dns-json" },
      });
    case "shape":
      return new Response(JSON.stringify({ ok: true, result: "not a DNS answer" }), {
        status: 200,
        headers: { "content-type": "application/json" },
      });
    case "hang":
      await wait(Infinity, signals);
      return gone();
  }
}

function badRequest(error: string): Response {
  return new Response(JSON.stringify({ error }), {
    status: 400,
    headers: { "content-type": "application/dns-json" },
  });
}

/** Starts a simulator on 127.0.0.1; async so that a failure to listen rejects rather than throws. */
export function startDohSim(options: DohSimOptions = {}): Promise<DohSim> {
  return Promise.resolve().then(() => {
    const sim = new Sim(options);
    sim.listen(options.port ?? 0);
    return sim;
  });
}

if (import.meta.main) {
  const arg = (name: string) => Deno.args.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
  const sim = await startDohSim({ port: Number(arg("port") ?? 8053) });
  for (const a of Deno.args.filter((a) => a.startsWith("--record="))) {
    const [name, list = ""] = a.slice("--record=".length).split("=");
    const ips = list.split(",").filter(Boolean);
    sim.setRecords(name, {
      A: ips.filter((ip) => !ip.includes(":")),
      AAAA: ips.filter((ip) => ip.includes(":")),
    });
  }
  console.log(`DNS-over-HTTPS simulator on ${sim.url} (names not given with --record are NXDOMAIN)`);
  console.log(`HOSTING_DOH_URL=${sim.url}`);
  Deno.addSignalListener("SIGINT", () => sim.close().then(() => Deno.exit(0)));
}

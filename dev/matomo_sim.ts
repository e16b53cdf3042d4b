// deno-lint-ignore-file no-console
/**
 * A Matomo 5.2 HTTP API simulator for tests and the demo (Matomo cannot run here: docs/architecture.md §14).
 *
 * Behaviour follows what Matomo 5.2's source and developer documentation establish (summarised in
 * docs/architecture.md §15.3); each rule says the fact it models, naming Matomo's own class or method where
 * that helps. Where Matomo's code and documentation say nothing, the choice is marked ASSUMED. Only the methods
 * hosting-automator needs are simulated; every other method answers like an unknown one.
 *
 * In-process: `const sim = await startMatomoSim(); … await sim.close();`
 * Stand-alone: `deno run -A dev/matomo_sim.ts [--port=8081] [--token=…]` prints the URL and token.
 */
import { gone, serveLocal, wait } from "./sim_http.ts";

export const MATOMO_VERSION = "5.2.0";

/** Exact Matomo 5 texts: the API proxy's, the URL setting's, the login plugin's and the access check's. */
export const MESSAGES = {
  tokenViaGet:
    "Unable to authenticate with the provided token. It is either invalid, expired or is required to be sent as a POST parameter.",
  tokenViaPost: "Unable to authenticate with the provided token. It is either invalid or expired.",
  superUserRequired: "You can't access this resource as it requires a 'superuser' access.",
  bruteForceBlocked: "Too many failed logins. Please wait and try logging in again later.",
  siteNameRequired: "Please specify a value for 'siteName'.",
  noUrl: "URLs: You must specify at least one URL for the website.",
  invalidUrl: (url: string) => `URLs: The url '${url}' is not a valid URL.`,
  // Matomo's language file has a placeholder for the module; '\Piwik\Plugins\X\API' is what live instances
  // print (ASSUMED from a published transcript).
  methodNotFound: (action: string, module: string) =>
    `The method '${action}' does not exist or is not available in the module '\\Piwik\\Plugins\\${module}\\API'.`,
  // ASSUMED, not read in Matomo's source: viewRequired as public client tests quote it; methodRequired by
  // analogy with the proxy's text for siteName.
  viewRequired: "You can't access this resource as it requires view access for at least one website.",
  methodRequired: "Please specify a value for 'method'.",
  // getSiteFromId and deleteSite: Matomo's texts for a site that does not exist, the access check's for a
  // site the caller may not view, and deleteSite's refusal to remove the last site.
  idSiteRequired: "Please specify a value for 'idSite'.", // ASSUMED: the proxy's text, as for siteName
  siteNotFoundInRequest: (id: string) =>
    `An unexpected website was found in the request: website id was set to '${id}' .`,
  siteViewRequired: (id: string) =>
    `You can't access this resource as it requires 'view' access for the website id = ${id}.`,
  siteNotFound: (id: string) => `website id = ${id} not found`,
  deleteOnlySite:
    "It is not possible to delete this website as it is the only registered website. Add a new website first, then delete this one.",
} as const;

export interface SimTokenOptions {
  token: string;
  /** Default true. A super user may add sites and sees every site; addSite needs one. */
  superUser?: boolean;
  /** Default true: Matomo 5's UI default "Only allow secure requests" (refused in a query string). */
  secureOnly?: boolean;
  /** Sites a non-super user can view: the only ones its lookups find (super users search every site). */
  viewSites?: number[];
}

export interface SimSiteInput {
  name: string;
  /** Cleaned as addSite cleans them: the first becomes main_url, the rest aliases. */
  urls: string | string[];
  idsite?: number;
}

export interface SimSite {
  idsite: number;
  name: string;
  main_url: string;
  alias_urls: string[];
}

export interface MatomoSimOptions {
  /** 0 (default) picks a free port; always on 127.0.0.1. */
  port?: number;
  /** Default: one random super-user, secure-only token, readable as `sim.token`. */
  tokens?: SimTokenOptions[];
  sites?: SimSiteInput[];
  /** Delay before each answer. */
  latencyMs?: number;
  /** Render lookup rows' idsite as a numeric string, as older PHP/PDO does (newer ones give a number). */
  idsiteAsString?: boolean;
  /** Failed token attempts before every token is refused (brute-force detection); default 20, 0 = never. */
  bruteForceLimit?: number;
  version?: string;
}

/** What the next requests answer instead of the API. `down` is separate: see `down()` / `up()`. */
export type SimFault =
  /** `{"result":"error"}` in the requested format; HTTP 200 unless `status` is given, as for Matomo's own. */
  | { kind: "error"; message?: string; status?: number }
  /** An HTML error page, HTTP 500 unless `status` is given: how errors outside the API dispatcher look. */
  | { kind: "html"; status?: number }
  /** Text that is not JSON (a PHP warning and a cut-off body) labelled application/json; HTTP 200 by default. */
  | { kind: "garbage"; status?: number }
  /** No answer until the client goes away, the simulator goes down or closes. */
  | { kind: "hang" };

export interface SimRequest {
  method: string;
  path: string;
  /** Raw query parameters (last value of a repeated name). */
  query: Record<string, string>;
  /** Names of the form-encoded body parameters, in order; values are not kept (token). */
  bodyParams: string[];
  contentType: string | null;
  tokenInQuery: boolean;
  /** The API method after merging query and body, e.g. `SitesManager.addSite`. */
  apiMethod: string | null;
  /** The answered status: 0 while pending, 503 when released unanswered (hang, latency cut short). */
  status: number;
  fault?: SimFault["kind"];
}

/**
 * What a `failWhen` rule sees of a request: enough to pick requests about one site, nothing secret.
 * `params` merges query and body as Matomo reads them (the query wins); arrays are flattened as `urls[0]`;
 * `token_auth` is left out.
 */
export interface SimRequestInfo {
  method: string;
  path: string;
  apiMethod: string | null;
  params: Record<string, string>;
}

export interface MatomoSim {
  /** `http://127.0.0.1:{port}`, no trailing slash (the shape of MatomoConfig.url). */
  readonly url: string;
  readonly port: number;
  /** The first configured token. */
  readonly token: string;
  /** Copies of every request received, oldest first. */
  readonly requests: SimRequest[];
  /** Copies of the site table, by idsite. */
  readonly sites: SimSite[];
  clearRequests(): void;
  /** Adds a site as if created earlier (UI or another client); returns its idsite. */
  addExistingSite(site: SimSiteInput): number;
  setLatency(ms: number): void;
  /** Injects `fault` into the next `times` requests, or every request until `clearFaults()`. */
  fail(fault: SimFault, times?: number): void;
  /**
   * Injects `fault` into every request `match` accepts, until `clearFaults()` (e.g. every call about one
   * domain). Rules are checked in the order added, before the `fail` fault, which such a request leaves unused.
   */
  failWhen(match: (request: SimRequestInfo) => boolean, fault: SimFault): void;
  /** Removes the `fail` fault and every `failWhen` rule. */
  clearFaults(): void;
  /** Stops listening (connections are refused) and releases pending requests; the state is kept. */
  down(): Promise<void>;
  /** Listens again on the same port. */
  up(): Promise<void>;
  close(): Promise<void>;
}

// ---------------------------------------------------------------------------------------------------------------
// Request parameters, PHP style: $_GET + $_POST, with `name[]` and `name[key]` arrays

/** A PHP request value: a string, or an ordered array (`urls[0]=…`, `urls[]=…`) keyed like PHP keeps it. */
type PhpValue = string | Map<string, string>;
type PhpParams = Map<string, PhpValue>;

/**
 * `name[key]` and `name[]` build arrays in insertion order (PHP keeps order, so `urls[1]` sent before `urls[0]`
 * stays first, which is why Matomo's log importer sends indexed parameters in order); a repeated plain name
 * keeps the last value.
 * ASSUMED simplification: nested brackets are kept as a plain name; PHP's `.`/space → `_` mangling is not done.
 */
function phpParams(entries: Iterable<[string, string]>): PhpParams {
  const out: PhpParams = new Map();
  for (const [name, value] of entries) {
    const m = /^([^[\]]+)\[([^[\]]*)\]$/.exec(name);
    if (!m) {
      out.set(name, value);
      continue;
    }
    let array = out.get(m[1]);
    if (!(array instanceof Map)) out.set(m[1], array = new Map());
    array.set(m[2] === "" ? String(nextIndex(array)) : m[2], value);
  }
  return out;
}

function nextIndex(array: Map<string, string>): number {
  let max = -1;
  for (const key of array.keys()) if (/^(0|[1-9][0-9]*)$/.test(key)) max = Math.max(max, Number(key));
  return max + 1;
}

/** A scalar parameter; arrays count as absent. */
function str(params: PhpParams, name: string): string | undefined {
  const v = params.get(name);
  return typeof v === "string" ? v : undefined;
}

/** PHP fills $_POST only from form bodies (form-encoded or multipart); anything else is read and ignored. */
async function bodyEntries(request: Request): Promise<[string, string][]> {
  const type = request.headers.get("content-type")?.toLowerCase() ?? "";
  if (
    request.method === "POST" &&
    (type.startsWith("application/x-www-form-urlencoded") || type.startsWith("multipart/form-data"))
  ) {
    const form = await request.formData();
    return [...form].filter((e): e is [string, string] => typeof e[1] === "string");
  }
  await request.body?.cancel();
  return [];
}

// ---------------------------------------------------------------------------------------------------------------
// URL rules

/** UrlHelper::isLookLikeUrl, the loose check addSite applies to each URL. */
function isLookLikeUrl(url: string): boolean {
  const m = /^(([A-Za-z][A-Za-z0-9+.-]*)?:)?\/\/(.*)$/s.exec(url);
  return m !== null && m[3].length > 0 && !/^(javascript:|vbscript:|data:)/i.test(m[1] ?? "");
}

/** PHP urldecode: `+` is a space, bad escapes stay as they are. */
function urldecode(text: string): string {
  return text.replace(/\+/g, " ").replace(/(%[0-9A-Fa-f]{2})+/g, (run) => {
    try {
      return decodeURIComponent(run);
    } catch {
      return run;
    }
  });
}

function removeTrailingSlash(url: string): string {
  return url.length > 5 && url.endsWith("/") ? url.slice(0, -1) : url;
}

/**
 * Urls::cleanParameterUrls, as addSite applies it to `urls`: a string is ONE url (a comma list is not split);
 * empty values dropped; urldecoded; one trailing `/` removed; `http://` added when there is no scheme; trimmed;
 * de-duplicated. ASSUMED: PHP's parse_url scheme test is approximated by "letters then `:`, not a port".
 * HTML-entity sanitising is skipped: Matomo encodes on input and decodes on JSON output, a round trip.
 */
function cleanUrls(urls: string | Iterable<string>): string[] {
  const list = typeof urls === "string" ? [urls] : [...urls];
  const out: string[] = [];
  for (const raw of list.filter((u) => u !== "" && u !== "0")) {
    let url = removeTrailingSlash(urldecode(raw));
    const scheme = /^[A-Za-z][A-Za-z0-9+.-]*:(?![0-9]+(\/|$))/.test(url);
    if (!scheme && !url.includes("://")) url = `http://${url}`;
    url = url.trim();
    if (!out.includes(url)) out.push(url);
  }
  return out;
}

/** The 5 variants getSitesIdFromSiteUrl looks for (www., http://, https:// stripped, in str_replace order). */
function lookupVariants(url: string): string[] {
  const u = removeTrailingSlash(url);
  const host = u.replaceAll("www.", "").replaceAll("http://", "").replaceAll("https://", "");
  return [u, `http://${host}`, `http://www.${host}`, `https://${host}`, `https://www.${host}`];
}

// ---------------------------------------------------------------------------------------------------------------
// Rendering: `{"value": …}` for scalars, rows as a list, `{"result":"error"}`; xml unless format=json

type ApiResult =
  | { kind: "value"; value: number | string | boolean }
  | { kind: "rows"; rows: Record<string, number | string>[] }
  /** An associative array, rendered as a JSON object since Matomo 4 (getSiteFromId). */
  | { kind: "object"; fields: Record<string, number | string> }
  /** What a method that returns nothing answers (deleteSite). */
  | { kind: "success" }
  | { kind: "error"; message: string };

/** Escapes text for XML and HTML alike. */
const escape = (s: string) =>
  s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

function render(format: string, status: number, result: ApiResult): Response {
  if (format === "json") {
    const body = result.kind === "value"
      ? { value: result.value }
      : result.kind === "rows"
      ? result.rows
      : result.kind === "object"
      ? result.fields
      : result.kind === "success"
      ? { result: "success", message: "ok" }
      // Newlines in messages become spaces, as Matomo's JSON renderer does.
      : { result: "error", message: result.message.replace(/\r?\n/g, " ") };
    return new Response(JSON.stringify(body), {
      status,
      headers: { "content-type": "application/json; charset=utf-8" },
    });
  }
  // ASSUMED: every other format (xml is Matomo's default) gets Matomo-like XML; csv/tsv/html are not modelled.
  const head = '<?xml version="1.0" encoding="utf-8" ?>\n';
  let xml: string;
  if (result.kind === "value") {
    xml = `<result>${escape(String(result.value))}</result>`;
  } else if (result.kind === "error") {
    xml = `<result>\n\t<error message="${escape(result.message)}" />\n</result>`;
  } else if (result.kind === "success") {
    xml = `<result>\n\t<success message="ok" />\n</result>`; // ASSUMED, by analogy with the error element
  } else if (result.kind === "object") {
    const fields = Object.entries(result.fields).map(([k, v]) => `\t<${k}>${escape(String(v))}</${k}>\n`);
    xml = `<result>\n${fields.join("")}</result>`;
  } else if (result.rows.length === 0) {
    xml = "<result />";
  } else {
    const rows = result.rows.map((row) =>
      "\t<row>\n" +
      Object.entries(row).map(([k, v]) => `\t\t<${k}>${escape(String(v))}</${k}>\n`).join("") +
      "\t</row>\n"
    );
    xml = `<result>\n${rows.join("")}</result>`;
  }
  return new Response(head + xml, { status, headers: { "content-type": "text/xml; charset=utf-8" } });
}

/** ASSUMED layout of Matomo's error page (ExceptionHandler::dieWithHtmlErrorPage). */
function htmlPage(status: number, title: string, message: string): Response {
  const body =
    `<!DOCTYPE html>\n<html>\n<head><meta charset="utf-8"><title>${escape(title)}</title></head>\n` +
    `<body><div id="contentsimple"><h2>${escape(title)}</h2><p>${
      escape(message)
    }</p></div></body>\n</html>\n`;
  return new Response(body, { status, headers: { "content-type": "text/html; charset=utf-8" } });
}

// ---------------------------------------------------------------------------------------------------------------
// The simulator

type Token = Required<SimTokenOptions>;

/** A request as PHP sees it: $_GET, $_POST and their merge. */
interface Incoming {
  url: URL;
  query: PhpParams;
  body: PhpParams;
  params: PhpParams;
}

class Sim implements MatomoSim {
  readonly #tokens: Token[];
  readonly #sites: SimSite[] = [];
  /** When each site was added (getSiteFromId's ts_created); kept apart so `sites` keeps its shape. */
  readonly #created = new Map<number, Date>();
  readonly #log: SimRequest[] = [];
  readonly #options: MatomoSimOptions;
  #latencyMs: number;
  #fault: { fault: SimFault; left: number } | null = null;
  #rules: { match: (request: SimRequestInfo) => boolean; fault: SimFault }[] = [];
  #failedLogins = 0;
  #server: Deno.HttpServer<Deno.NetAddr> | null = null;
  /** Aborted when the simulator goes down or closes: releases hanging and sleeping handlers. */
  #release = new AbortController();
  #closed = false;
  #port = 0;

  constructor(options: MatomoSimOptions) {
    this.#options = options;
    this.#latencyMs = options.latencyMs ?? 0;
    const tokens = options.tokens ?? [{ token: randomToken() }];
    if (tokens.length === 0) throw new Error("at least one token is needed");
    this.#tokens = tokens.map((t) => ({
      token: t.token,
      superUser: t.superUser ?? true,
      secureOnly: t.secureOnly ?? true,
      viewSites: t.viewSites ?? [],
    }));
    for (const site of options.sites ?? []) this.addExistingSite(site);
  }

  get port(): number {
    return this.#port;
  }
  get url(): string {
    return `http://127.0.0.1:${this.#port}`;
  }
  get token(): string {
    return this.#tokens[0].token;
  }
  get requests(): SimRequest[] {
    return this.#log.map((r) => ({ ...r, query: { ...r.query }, bodyParams: [...r.bodyParams] }));
  }
  get sites(): SimSite[] {
    return this.#sites.map((s) => ({ ...s, alias_urls: [...s.alias_urls] }));
  }

  clearRequests(): void {
    this.#log.length = 0;
  }

  addExistingSite(site: SimSiteInput): number {
    const urls = cleanUrls(site.urls);
    if (site.idsite !== undefined && this.#sites.some((s) => s.idsite === site.idsite)) {
      throw new Error(`idsite ${site.idsite} exists`);
    }
    return this.#insert(site.name, urls, site.idsite);
  }

  setLatency(ms: number): void {
    this.#latencyMs = ms;
  }

  fail(fault: SimFault, times?: number): void {
    this.#fault = { fault, left: times ?? Infinity };
  }

  failWhen(match: (request: SimRequestInfo) => boolean, fault: SimFault): void {
    this.#rules.push({ match, fault });
  }

  clearFaults(): void {
    this.#fault = null;
    this.#rules = [];
  }

  listen(port: number): void {
    this.#release = new AbortController();
    const server = serveLocal(port, (request) => this.#handle(request));
    this.#server = server;
    this.#port = server.addr.port;
  }

  async down(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    this.#server = null;
    this.#release.abort();
    await server.shutdown();
  }

  async up(): Promise<void> {
    if (this.#closed) throw new Error("the simulator is closed");
    // The port was free a moment ago; another process's socket may hold it for a moment (an outgoing
    // connection's local port, a test server given the freed port): try again for a while before giving up.
    for (let tries = 0; !this.#server; tries++) {
      try {
        this.listen(this.#port);
      } catch (error) {
        if (!(error instanceof Deno.errors.AddrInUse) || tries >= 50) throw error;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.down();
  }

  // -------------------------------------------------------------------------------------------------------------

  #insert(name: string, urls: string[], idsite?: number): number {
    const id = idsite ?? this.#sites.reduce((max, s) => Math.max(max, s.idsite), 0) + 1;
    // Column sizes name 90, main_url 255, alias 190; Matomo's non-strict MySQL mode truncates (inferred).
    this.#sites.push({
      idsite: id,
      name: name.slice(0, 90),
      main_url: (urls[0] ?? "").slice(0, 255),
      alias_urls: urls.slice(1).map((u) => u.slice(0, 190)),
    });
    this.#sites.sort((a, b) => a.idsite - b.idsite);
    this.#created.set(id, new Date());
    return id;
  }

  /** The site an `idSite` parameter names. ASSUMED: anything but a plain decimal id names no site. */
  #site(id: string): SimSite | undefined {
    return /^[1-9][0-9]*$/.test(id) ? this.#sites.find((s) => s.idsite === Number(id)) : undefined;
  }

  /**
   * getSiteFromId's columns (the site table's, plus the names enrichSite adds); creator_login only for a super
   * user. Numbers follow `idsiteAsString` like the lookup's idsite. ASSUMED: the values of settings the
   * simulator does not model are Matomo's defaults, and every site was created by `admin`.
   */
  #siteFields(site: SimSite, superUser: boolean): Record<string, number | string> {
    const num = (n: number) => (this.#options.idsiteAsString ?? false) ? String(n) : n;
    const created = (this.#created.get(site.idsite) ?? new Date()).toISOString();
    return {
      idsite: num(site.idsite),
      name: site.name,
      main_url: site.main_url,
      ts_created: `${created.slice(0, 10)} ${created.slice(11, 19)}`,
      ecommerce: num(0),
      sitesearch: num(1),
      sitesearch_keyword_parameters: "",
      sitesearch_category_parameters: "",
      timezone: "UTC",
      currency: "USD",
      exclude_unknown_urls: num(0),
      excluded_ips: "",
      excluded_parameters: "",
      excluded_user_agents: "",
      excluded_referrers: "",
      group: "",
      type: "website",
      keep_url_fragment: num(0),
      ...(superUser ? { creator_login: "admin" } : {}),
      timezone_name: "UTC",
      currency_name: "US Dollar",
    };
  }

  async #handle(request: Request): Promise<Response> {
    const url = new URL(request.url);
    const bodyRaw = await bodyEntries(request);
    const query = phpParams(url.searchParams);
    const body = phpParams(bodyRaw);
    // $_GET + $_POST: the query string wins on duplicate names (PHP's array union).
    const req: Incoming = { url, query, body, params: new Map([...body, ...query]) };
    const entry: SimRequest = {
      method: request.method,
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      bodyParams: bodyRaw.map(([k]) => k),
      contentType: request.headers.get("content-type"),
      tokenInQuery: url.searchParams.has("token_auth"),
      apiMethod: str(req.params, "method") ?? null,
      status: 0,
    };
    this.#log.push(entry);

    const signals = [request.signal, this.#release.signal];
    let response: Response;
    if (this.#latencyMs > 0 && !(await wait(this.#latencyMs, signals))) {
      response = gone();
    } else {
      const fault = this.#ruleFault(request.method, req) ?? this.#takeFault();
      if (fault) entry.fault = fault.kind;
      response = fault ? await this.#faultResponse(fault, req.params, signals) : this.#route(req);
    }
    entry.status = response.status;
    return response;
  }

  #ruleFault(method: string, req: Incoming): SimFault | null {
    if (this.#rules.length === 0) return null;
    const params: Record<string, string> = {};
    for (const [name, value] of req.params) {
      if (name === "token_auth") continue;
      if (typeof value === "string") params[name] = value;
      else for (const [key, item] of value) params[`${name}[${key}]`] = item;
    }
    const info: SimRequestInfo = {
      method,
      path: req.url.pathname,
      apiMethod: str(req.params, "method") ?? null,
      params,
    };
    return this.#rules.find((rule) => rule.match(info))?.fault ?? null;
  }

  #takeFault(): SimFault | null {
    const f = this.#fault;
    if (!f) return null;
    if (--f.left <= 0) this.#fault = null;
    return f.fault;
  }

  async #faultResponse(fault: SimFault, params: PhpParams, signals: AbortSignal[]): Promise<Response> {
    switch (fault.kind) {
      case "error":
        return render(format(params), fault.status ?? 200, {
          kind: "error",
          message: fault.message ?? "Simulated Matomo error.",
        });
      case "html":
        return htmlPage(fault.status ?? 500, "Matomo › Error", "An error occurred (simulated).");
      case "garbage":
        return new Response(
          'PHP Warning:  Undefined array key "idsite" (simulated)\n{"value":',
          { status: fault.status ?? 200, headers: { "content-type": "application/json; charset=utf-8" } },
        );
      case "hang":
        await wait(Infinity, signals);
        return gone();
    }
  }

  #route({ url, query, body, params }: Incoming): Response {
    // Endpoint: /index.php or /. ASSUMED: the web server answers 404 HTML elsewhere.
    if (url.pathname !== "/" && url.pathname !== "/index.php") {
      return htmlPage(404, "Not Found", "The requested URL was not found on this server.");
    }
    // ASSUMED: without module=API Matomo serves its UI; anonymous visitors get the sign-in page.
    if (str(params, "module") !== "API") return htmlPage(200, "Sign in - Matomo", "Sign in");
    const fmt = format(params);

    // Authentication: the token is "secure" only when in the body and absent from the query string.
    const inGet = str(query, "token_auth") ?? "";
    const inPost = str(body, "token_auth") ?? "";
    const given = inGet !== "" ? inGet : inPost;
    const secure = inGet === "" && inPost !== "";
    // ASSUMED: no token at all is the anonymous user, who has no access here (Matomo 4 continued as anonymous
    // after a failed token; nothing read says otherwise for 5).
    let caller: Token | null = null;
    if (given !== "") {
      const limit = this.#options.bruteForceLimit ?? 20;
      // Brute-force detection blocks after `limit` failures (20 within 60 minutes by default). ASSUMED: 401,
      // rendered like a failed login; the 60-minute window is not modelled (a simulator lives shorter).
      if (limit > 0 && this.#failedLogins >= limit) {
        return this.#loginFailure(query, fmt, MESSAGES.bruteForceBlocked);
      }
      const token = this.#tokens.find((t) => t.token === given && (secure || !t.secureOnly));
      if (!token) {
        this.#failedLogins++;
        return this.#loginFailure(query, fmt, secure ? MESSAGES.tokenViaPost : MESSAGES.tokenViaGet);
      }
      caller = token;
    }

    const method = str(params, "method") ?? "";
    if (method === "") return render(fmt, 400, { kind: "error", message: MESSAGES.methodRequired });
    const dot = method.indexOf(".");
    const module = dot < 0 ? method : method.slice(0, dot);
    const action = dot < 0 ? "" : method.slice(dot + 1);
    const [status, result] = this.#call(module, action, params, caller);
    return render(fmt, status, result);
  }

  /**
   * A failed login is raised before the API dispatcher, so ExceptionHandler renders it in the API format only
   * when module=API and method=X.y are in the query string, else as an HTML page; 401 either way (inferred
   * from Matomo's ExceptionHandler, not observed).
   */
  #loginFailure(query: PhpParams, fmt: string, message: string): Response {
    const apiInQuery = str(query, "module") === "API" &&
      /^[A-Za-z0-9_]+\.[A-Za-z0-9_]+$/.test(str(query, "method") ?? "");
    return apiInQuery
      ? render(fmt, 401, { kind: "error", message })
      : htmlPage(401, "Matomo › Error", message);
  }

  #call(module: string, action: string, params: PhpParams, user: Token | null): [number, ApiResult] {
    const superUser = user?.superUser ?? false;
    const noAccess = (message: string): [number, ApiResult] => [401, { kind: "error", message }];
    switch (`${module}.${action}`) {
      case "API.getMatomoVersion":
      case "API.getPiwikVersion": // deprecated alias
        // Requires some view access; NoAccessException → 401 on 5.x.
        if (!superUser && (user?.viewSites.length ?? 0) === 0) return noAccess(MESSAGES.viewRequired);
        return [200, { kind: "value", value: this.#options.version ?? MATOMO_VERSION }];
      case "UsersManager.hasSuperUserAccess":
        // `{"value": true|false}` for the caller's token. ASSUMED: anonymous gets false rather than an error.
        return [200, { kind: "value", value: superUser }];
      case "SitesManager.getSitesIdFromSiteUrl": {
        // The proxy requires declared parameters without defaults (as for siteName). ASSUMED same text for url.
        const url = str(params, "url");
        if (url === undefined || url === "") {
          return [200, { kind: "error", message: "Please specify a value for 'url'." }];
        }
        const wanted = new Set(lookupVariants(url).map((v) => v.toLowerCase())); // case-insensitive collation (inferred)
        const visible = (s: SimSite) => superUser || (user?.viewSites.includes(s.idsite) ?? false);
        const ids = this.#sites
          .filter((s) => visible(s) && [s.main_url, ...s.alias_urls].some((u) => wanted.has(u.toLowerCase())))
          .map((s) => s.idsite); // ASSUMED: ascending idsite (SQL UNION order is unspecified)
        // filter_limit defaults to 100 rows over HTTP; -1 means all.
        const limit = Number(str(params, "filter_limit") ?? "100");
        const shown = Number.isInteger(limit) && limit >= 0 ? ids.slice(0, limit) : ids;
        const asString = this.#options.idsiteAsString ?? false;
        return [200, { kind: "rows", rows: shown.map((id) => ({ idsite: asString ? String(id) : id })) }];
      }
      case "SitesManager.addSite": {
        // Required parameter checked by the proxy before the method body runs: HTTP 200.
        const name = str(params, "siteName");
        if (name === undefined || name === "") {
          return [200, { kind: "error", message: MESSAGES.siteNameRequired }];
        }
        // Super user required; NoAccessException → 401 on 5.x (200 on 4.x).
        if (!superUser) return noAccess(MESSAGES.superUserRequired);
        const urlsParam = params.get("urls");
        let urls: string[] = [];
        if (urlsParam !== undefined) {
          // Validated only when present: each must look like a URL, then at least one must remain.
          urls = cleanUrls(typeof urlsParam === "string" ? urlsParam : urlsParam.values());
          const bad = urls.find((u) => !isLookLikeUrl(u));
          if (bad !== undefined) return [200, { kind: "error", message: MESSAGES.invalidUrl(bad) }];
          if (urls.length === 0) return [200, { kind: "error", message: MESSAGES.noUrl }];
        }
        // Duplicates are allowed: Matomo checks nothing of the kind. Other addSite parameters are ignored.
        return [200, { kind: "value", value: this.#insert(name, urls) }];
      }
      case "SitesManager.getSiteFromId": {
        const id = str(params, "idSite");
        if (id === undefined || id === "") return [200, { kind: "error", message: MESSAGES.idSiteRequired }];
        const site = this.#site(id);
        // View access on that site first: a non-super user is refused even for an id that does not exist.
        if (!superUser && !(site && user?.viewSites.includes(site.idsite))) {
          return noAccess(MESSAGES.siteViewRequired(id));
        }
        if (!site) return [200, { kind: "error", message: MESSAGES.siteNotFoundInRequest(id) }];
        return [200, { kind: "object", fields: this.#siteFields(site, superUser) }];
      }
      case "SitesManager.deleteSite": {
        const id = str(params, "idSite");
        if (id === undefined || id === "") return [200, { kind: "error", message: MESSAGES.idSiteRequired }];
        // In Matomo's order: super user, then the id among all sites, then never the last site. Only
        // `force_api_session` (session auth, not modelled) would also demand passwordConfirmation.
        if (!superUser) return noAccess(MESSAGES.superUserRequired);
        const site = this.#site(id);
        if (!site) return [200, { kind: "error", message: MESSAGES.siteNotFound(id) }];
        if (this.#sites.length === 1) return [200, { kind: "error", message: MESSAGES.deleteOnlySite }];
        this.#sites.splice(this.#sites.indexOf(site), 1);
        this.#created.delete(site.idsite);
        // Raw logs and archives stay in Matomo's database; the simulator keeps neither.
        return [200, { kind: "success" }];
      }
    }
    // Unknown method → BadRequestException, HTTP 400. ASSUMED: unknown modules answer the same way
    // (real Matomo says "The plugin X is not enabled…" for those).
    return [400, { kind: "error", message: MESSAGES.methodNotFound(action, module) }];
  }
}

/** `format` defaults to xml and is case-insensitive. */
function format(params: PhpParams): string {
  return (str(params, "format") ?? "xml").toLowerCase();
}

function randomToken(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** Starts a simulator on 127.0.0.1; async so that a failure to listen rejects rather than throws. */
export function startMatomoSim(options: MatomoSimOptions = {}): Promise<MatomoSim> {
  return Promise.resolve().then(() => {
    const sim = new Sim(options);
    sim.listen(options.port ?? 0);
    return sim;
  });
}

if (import.meta.main) {
  const arg = (name: string) => Deno.args.find((a) => a.startsWith(`--${name}=`))?.split("=")[1];
  const token = arg("token");
  const sim = await startMatomoSim({
    port: Number(arg("port") ?? 8081),
    tokens: token ? [{ token }] : undefined,
  });
  console.log(`Matomo simulator on ${sim.url}/index.php`);
  console.log(`MATOMO_API_URL=${sim.url} MATOMO_API_TOKEN=${sim.token}`);
  Deno.addSignalListener("SIGINT", () => sim.close().then(() => Deno.exit(0)));
}

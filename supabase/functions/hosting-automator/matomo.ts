/**
 * The Matomo client: find the site registered for a domain, add it, or delete it when the domain is removed
 * (docs/architecture.md §8, §15.3).
 *
 * Every call is `POST {url}/index.php?module=API&method=…&format=json` with `token_auth` and the method's
 * parameters in a form-encoded body: Matomo 5 tokens are secure-only by default and refuse the query string, and
 * keeping module/method in the query makes Matomo render even authentication failures as JSON
 * (docs/architecture.md §15.3). Matomo allows duplicate sites, so `ensureSite` looks up before it adds; and a
 * recorded site id may by now name someone else's site, so `deleteSite` reads a site before it deletes it.
 */
import ky, { isHTTPError, isTimeoutError, type KyInstance, type RetryOptions } from "ky";
import { z } from "zod";
import type { MatomoConfig } from "./config.ts";
import type { Domain } from "./domain.ts";
import { HostingError } from "./errors.ts";
import type { Logger } from "./log.ts";
import { concatBytes } from "./bytes.ts";

export interface MatomoSite {
  idSite: number;
  /** True when the site existed before this call. */
  reused: boolean;
}

/** Lookups are idempotent: retry a lost connection or a 5xx twice, quickly. Timeouts are not retried: a Matomo
 * that did not answer in `timeoutMs` rarely answers in the next, and the job's own backoff retries later. */
const LOOKUP_RETRY: RetryOptions = {
  limit: 2,
  methods: ["post"],
  statusCodes: [408, 429, 500, 502, 503, 504],
  delay: (attempt) => 200 * 2 ** (attempt - 1),
  backoffLimit: 1000,
};
/** addSite is never repeated: a lost answer may still have created the site, which the next lookup finds. */
const NO_RETRY: RetryOptions = { limit: 0 };
/**
 * deleteSite by id may be repeated like a lookup: when a lost answer hid a deletion that happened, the repeat
 * meets Matomo's "not found", which counts as done.
 */
const DELETE_RETRY: RetryOptions = LOOKUP_RETRY;

/** Matomo's API answers are tiny; a bigger body is not its API (and must not fill the function's memory). */
const MAX_BODY_BYTES = 1024 * 1024;
const EXCERPT_CHARS = 160;

/** idsite is a JSON number or a numeric string depending on Matomo's PHP and PDO versions: accept both. */
const idSite = z.union([
  z.number().int().positive(),
  z.string().regex(/^[1-9][0-9]{0,9}$/).transform(Number),
]);
const errorAnswer = z.object({ result: z.literal("error"), message: z.string().optional() });
const lookupAnswer = z.array(z.object({ idsite: idSite }));
const addAnswer = z.object({ value: idSite });
const versionAnswer = z.object({ value: z.string() });
const flagAnswer = z.object({ value: z.boolean() });
/** getSiteFromId answers an object with many columns; only the id and the main URL matter here. */
const siteAnswer = z.object({ idsite: idSite, main_url: z.string() });
const successAnswer = z.object({ result: z.literal("success") });

/**
 * Matomo's refusals (HTTP 200, plain exceptions) that mean the site does not exist, or no longer: for a
 * deletion, done. deleteSite says the first; getSiteFromId, asked by a super user, the second.
 */
const SITE_GONE: readonly RegExp[] = [
  /^website id = \d+ not found/,
  /^An unexpected website was found in the request: website id was set to '?\d+'?/,
];
/** deleteSite's refusal to leave Matomo without any site (SitesManager_ExceptionDeleteSite). */
const ONLY_SITE = /^It is not possible to delete this website as it is the only registered website/;

/** The parameters of the two calls a site needs; shared with the CLI's --dry-run, which prints them. */
export function lookupParams(domain: Domain): Record<string, string> {
  return { url: `https://${domain}`, filter_limit: "-1" };
}
export function addSiteParams(domain: Domain): Record<string, string> {
  return { siteName: domain, "urls[0]": `https://${domain}` };
}
/** The API script: operators often paste the endpoint itself; both forms address it. */
export function endpointOf(url: string): string {
  return url.endsWith("/index.php") ? url : `${url}/index.php`;
}
/**
 * Module, method and format in the query string (so even a failed login is answered as JSON); all else in the
 * body.
 */
export function requestUrl(endpoint: string, method: string): string {
  return `${endpoint}?module=API&method=${encodeURIComponent(method)}&format=json`;
}

/** An abort signal (the step's: lease lost, shutdown, deadline) stops the request. */
export interface CallOptions {
  signal?: AbortSignal;
}

export interface DeleteOptions extends CallOptions {
  /** The idsite recorded for the domain; null or absent when none was (the add step was cut off, say). */
  idSite?: number | null;
}

/**
 * Whether a site's URL is the domain itself: http or https, with or without a leading `www.`, nothing after
 * the host but one `/`. Hosts compare as URLs parse them (lower case, IDN as punycode, like `Domain`).
 */
export function isDomainUrl(url: string, domain: Domain): boolean {
  let parsed: URL;
  try {
    parsed = new URL(url.trim());
  } catch {
    return false;
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") return false;
  if (parsed.port !== "" || parsed.username !== "" || parsed.password !== "") return false;
  if (parsed.pathname !== "/" || parsed.search !== "" || parsed.hash !== "") return false;
  const bare = (host: string) => host.replace(/^www\./, "");
  return bare(parsed.hostname) === bare(domain);
}

/** What a refused call answers instead of failing, or undefined to fail as usual (it may throw its own). */
type OnRefused<T> = (message: string, status: number) => T | undefined;

export class MatomoClient {
  readonly #config: MatomoConfig;
  readonly #logger: Logger;
  readonly #endpoint: string;
  readonly #http: KyInstance;

  constructor(config: MatomoConfig, logger: Logger, options: { fetch?: typeof fetch } = {}) {
    // The token is a secret of the app's one redactor, whoever built this client.
    logger.redactor.add(config.token);
    this.#config = config;
    this.#logger = logger;
    this.#endpoint = endpointOf(config.url);
    this.#http = ky.create({
      fetch: options.fetch,
      timeout: config.timeoutMs,
      headers: { accept: "application/json" },
      hooks: {
        beforeRetry: [async ({ request, error, retryCount }) => {
          // The failed answer is dropped unread; cancel it so its connection is released.
          if (isHTTPError(error)) await error.response.body?.cancel();
          this.#logger.debug("matomo: retrying", {
            matomo_method: new URL(request.url).searchParams.get("method"),
            attempt: retryCount + 1,
            reason: isHTTPError(error) ? `HTTP ${error.response.status}` : error.name,
          });
        }],
      },
    });
  }

  /**
   * The lowest idsite registered for the domain, or null. Looks up `https://{domain}`: Matomo also tries the
   * http:// and www. variants of it, and the literal string is exactly the URL `addSite` stores, which a
   * bare host would not match when Matomo's `www.` stripping mangles it (e.g. `awww.example.com`).
   */
  async findSite(domain: Domain, options: CallOptions = {}): Promise<number | null> {
    const ids = await this.#siteIds(domain, options);
    if (ids.length === 0) return null;
    if (ids.length > 1) {
      this.#logger.warn("matomo: several sites share this URL", { domain, matomo_site_ids: ids });
    }
    return Math.min(...ids);
  }

  /**
   * Registers the domain as a new site and returns its idsite. Adds a duplicate if one exists: Matomo never
   * checks.
   */
  async addSite(domain: Domain, options: CallOptions = {}): Promise<number> {
    const answer = await this.#call(
      "SitesManager.addSite",
      addSiteParams(domain),
      addAnswer,
      NO_RETRY,
      options,
    );
    return answer.value;
  }

  /**
   * Read-only preflight (CLI --dry-run): the Matomo version, and whether the token may add sites (addSite
   * needs a super user's token). Both are reads, so they are retried like the lookup.
   */
  async preflight(): Promise<{ version: string; superUser: boolean }> {
    const version = await this.#call("API.getMatomoVersion", {}, versionAnswer, LOOKUP_RETRY);
    const superUser = await this.#call("UsersManager.hasSuperUserAccess", {}, flagAnswer, LOOKUP_RETRY);
    return { version: version.value, superUser: superUser.value };
  }

  /** The domain's site: an existing one is reused, a new one is added only when none exists. */
  async ensureSite(domain: Domain, options: CallOptions = {}): Promise<MatomoSite> {
    const existing = await this.findSite(domain, options);
    if (existing !== null) {
      this.#logger.info("matomo: site exists, reusing it", { domain, matomo_site_id: existing });
      return { idSite: existing, reused: true };
    }
    const created = await this.addSite(domain, options);
    this.#logger.info("matomo: site added", { domain, matomo_site_id: created });
    return { idSite: created, reused: false };
  }

  /**
   * Deletes the domain's Matomo site (Matomo itself keeps the raw logs and archives in its database) and
   * returns the ids this call deleted. With `idSite`, only that site; without, every site the lookup finds for the domain, as
   * `findSite` finds them. A site is deleted only when its main URL is the domain (`isDomainUrl`): a recorded id
   * that now names another domain's site, or a site that merely lists the domain among its aliases, serves
   * someone else and is left alone. A site that is already gone (deleted by hand, or by an earlier attempt whose
   * answer was lost) is done: not listed, no error. Needs a super user's token, like addSite.
   */
  async deleteSite(domain: Domain, options: DeleteOptions = {}): Promise<{ deleted: number[] }> {
    const { idSite: known = null, signal } = options;
    if (known !== null && !(Number.isSafeInteger(known) && known > 0)) {
      throw new RangeError(`idSite must be a positive integer, got ${known}`);
    }
    const candidates = known !== null ? [known] : await this.#siteIds(domain, { signal });
    const deleted: number[] = [];
    for (const id of candidates) {
      const mainUrl = await this.#mainUrl(id, { signal });
      if (mainUrl === null) {
        this.#logger.info("matomo: site already gone", { domain, matomo_site_id: id });
        continue;
      }
      if (!isDomainUrl(mainUrl, domain)) {
        this.#logger.warn("matomo: site is another domain's, not deleted", {
          domain,
          matomo_site_id: id,
          matomo_main_url: mainUrl,
        });
        continue;
      }
      if (await this.#delete(id, { signal })) {
        this.#logger.info("matomo: site deleted", { domain, matomo_site_id: id });
        deleted.push(id);
      } else {
        this.#logger.info("matomo: site already gone", { domain, matomo_site_id: id });
      }
    }
    return { deleted };
  }

  /** Every idsite registered for the domain, ascending as Matomo lists them. */
  async #siteIds(domain: Domain, options: CallOptions): Promise<number[]> {
    const rows = await this.#call(
      "SitesManager.getSitesIdFromSiteUrl",
      lookupParams(domain),
      lookupAnswer,
      LOOKUP_RETRY,
      options,
    );
    return rows.map((row) => row.idsite);
  }

  /** The site's main URL, or null when Matomo has no such site. */
  async #mainUrl(id: number, options: CallOptions): Promise<string | null> {
    const site = await this.#call(
      "SitesManager.getSiteFromId",
      { idSite: String(id) },
      siteAnswer,
      LOOKUP_RETRY,
      options,
      (message, status) => status === 200 && SITE_GONE.some((re) => re.test(message)) ? null : undefined,
    );
    if (site !== null && site.idsite !== id) {
      throw new HostingError(
        "matomo_bad_response",
        `Matomo answered SitesManager.getSiteFromId(${id}) with site ${site.idsite}`,
        { publicMessage: "Matomo answered something that is not its API (another site than asked for)." },
      );
    }
    return site?.main_url ?? null;
  }

  /** True when this call deleted the site, false when it was gone already. */
  async #delete(id: number, options: CallOptions): Promise<boolean> {
    return await this.#call(
      "SitesManager.deleteSite",
      { idSite: String(id) },
      successAnswer.transform(() => true as const),
      DELETE_RETRY,
      options,
      (message, status) => {
        if (status !== 200) return undefined;
        if (SITE_GONE.some((re) => re.test(message))) return false;
        if (ONLY_SITE.test(message)) {
          throw new HostingError(
            "matomo_only_site",
            `Matomo refused SitesManager.deleteSite(${id}): ${this.#excerpt(message)}`,
          );
        }
        return undefined;
      },
    );
  }

  async #call<T, R = never>(
    method: string,
    params: Record<string, string>,
    schema: z.ZodType<T>,
    retry: RetryOptions,
    options: CallOptions = {},
    onRefused?: OnRefused<R>,
  ): Promise<T | R> {
    const started = performance.now();
    try {
      const { status, text } = await this.#post(method, params, retry, options);
      const result = this.#interpret(method, status, text, schema, onRefused);
      this.#logger.debug("matomo: call done", { matomo_method: method, status, duration_ms: since(started) });
      return result;
    } catch (error) {
      const code = error instanceof HostingError ? error.code : undefined;
      this.#logger.debug("matomo: call failed", { matomo_method: method, code, duration_ms: since(started) });
      throw error;
    }
  }

  /** One API call over HTTP; any status is returned with its body, transport failures are `matomo_unreachable`. */
  async #post(
    method: string,
    params: Record<string, string>,
    retry: RetryOptions,
    options: CallOptions = {},
  ): Promise<{ status: number; text: string }> {
    const { timeoutMs } = this.#config;
    let response: Response;
    try {
      // A ready Request rather than ky's `body` option: under Deno 2.1's checker, ky's Options lose their
      // RequestInit fields as soon as the program imports `node:` modules (domain.ts does).
      const request = new Request(
        requestUrl(this.#endpoint, method),
        {
          method: "POST",
          body: new URLSearchParams({ token_auth: this.#config.token, ...params }),
          signal: options.signal,
        },
      );
      response = await this.#http(request, { retry });
    } catch (error) {
      // Non-2xx answers still carry Matomo's JSON error (401 token, 400 unknown method): read them below.
      if (isHTTPError(error)) response = error.response;
      else if (isTimeoutError(error)) {
        // No cause kept: ky's error holds the Request, whose body holds the token.
        throw new HostingError(
          "matomo_unreachable",
          `Matomo did not answer ${method} within ${timeoutMs} ms`,
          {
            publicMessage: "Matomo did not answer in time.",
          },
        );
      } else {
        const detail = error instanceof Error ? `${error.name}: ${error.message}` : String(error);
        throw new HostingError("matomo_unreachable", `Matomo could not be reached for ${method}: ${detail}`, {
          cause: error,
        });
      }
    }
    return { status: response.status, text: await this.#readBody(method, response) };
  }

  /** Reads the body within `timeoutMs` (ky's timeout ends when the headers arrive) and up to MAX_BODY_BYTES. */
  async #readBody(method: string, response: Response): Promise<string> {
    const reader = response.body?.getReader();
    if (!reader) return "";
    let timer: number | undefined;
    const deadline = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error("body timeout")), this.#config.timeoutMs);
    });
    const chunks: Uint8Array[] = [];
    let size = 0;
    try {
      for (;;) {
        const { done, value } = await Promise.race([reader.read(), deadline]);
        if (done) break;
        size += value.byteLength;
        if (size > MAX_BODY_BYTES) {
          throw new HostingError(
            "matomo_bad_response",
            `Matomo answered ${method} with more than ${MAX_BODY_BYTES} bytes (HTTP ${response.status})`,
            { publicMessage: "Matomo answered something that is not its API (an oversized answer)." },
          );
        }
        chunks.push(value);
      }
    } catch (error) {
      reader.cancel().catch(() => {});
      if (error instanceof HostingError) throw error;
      throw new HostingError(
        "matomo_unreachable",
        `Matomo's answer to ${method} did not complete within ${this.#config.timeoutMs} ms`,
        { publicMessage: "Matomo did not answer in time.", cause: error },
      );
    } finally {
      clearTimeout(timer);
    }
    return new TextDecoder().decode(concatBytes(...chunks));
  }

  /**
   * `{"result":"error"}` is an error whatever the status (often 200); anything but the expected JSON is not the
   * API.
   */
  #interpret<T, R>(
    method: string,
    status: number,
    text: string,
    schema: z.ZodType<T>,
    onRefused?: OnRefused<R>,
  ): T | R {
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch {
      const what = /^\s*</.test(text) ? "an HTML page" : "text that is not JSON";
      throw this.#badResponse(method, status, what, text);
    }
    const refused = errorAnswer.safeParse(data);
    if (refused.success) {
      const message = refused.data.message ?? "(no message)";
      const instead = onRefused?.(message, status);
      if (instead !== undefined) return instead;
      throw this.#refused(method, status, message);
    }
    if (status < 200 || status > 299) {
      throw this.#badResponse(method, status, "JSON that is not an API answer", text);
    }
    const parsed = schema.safeParse(data);
    if (!parsed.success) throw this.#badResponse(method, status, "JSON of an unexpected shape", text);
    return parsed.data;
  }

  #refused(method: string, status: number, message: string): HostingError {
    const internal = `Matomo refused ${method} (HTTP ${status}): ${this.#excerpt(message)}`;
    if (status === 401) {
      // Bad token, a token that is not a super user's, or brute-force blocking: all need the operator, and
      // repeating a bad token only gets the caller blocked (docs/architecture.md §15.3).
      return new HostingError("matomo_error", internal, {
        publicMessage:
          "Matomo refused the API token (HTTP 401). MATOMO_API_TOKEN must be a valid token of a " +
          "Matomo super user; it is sent by POST, as Matomo 5's secure-only tokens require.",
      });
    }
    // Matomo's own text stays internal: it can hold server paths or database details.
    return new HostingError("matomo_error", internal, {
      publicMessage: `Matomo refused ${method}.`,
      transient: status >= 500,
    });
  }

  #badResponse(method: string, status: number, what: string, body: string): HostingError {
    return new HostingError(
      "matomo_bad_response",
      `Matomo answered ${method} with ${what} (HTTP ${status}): ${this.#excerpt(body)}`,
      {
        publicMessage:
          `Matomo answered something that is not its API (${what}, HTTP ${status}); check MATOMO_API_URL.`,
      },
    );
  }

  /** A short, single-line excerpt for internal messages, through the app's redactor (it knows the token). */
  #excerpt(text: string): string {
    const line = this.#logger.redact(text).replace(/\s+/g, " ").trim();
    return line.length > EXCERPT_CHARS ? `${line.slice(0, EXCERPT_CHARS)}…` : line;
  }
}

function since(started: number): number {
  return Math.round(performance.now() - started);
}

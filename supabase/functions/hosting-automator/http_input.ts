/**
 * What each route accepts, from the JSON body and the query: parsed into values, or refused with a 400 that
 * names the field and the rule. Unknown fields are refused; other query parameters are ignored.
 */
import { z } from "zod";
import { badRequest, quoted } from "./http_response.ts";

/** UUIDs are case-insensitive; the lower-case form is the one the database and the answers use. */
const siteId = z.uuid({ message: "must be a UUID" }).transform((id) => id.toLowerCase());
const siteRequest = z.strictObject({ site_id: siteId });
const drainRequest = z.strictObject({});
/** Supabase Database Webhook payload; `user_id` appears in Supabase's published types only. */
const webhookRequest = z.strictObject({
  type: z.enum(["INSERT", "UPDATE", "DELETE"]),
  table: z.literal("sites", { message: 'must be "sites"' }),
  schema: z.literal("public", { message: 'must be "public"' }),
  record: z.looseObject({ id: siteId }).nullable(),
  old_record: z.looseObject({}).nullable().optional(),
  user_id: z.string().nullable().optional(),
});
/** `/remove` takes the kick's site form only: removing is never a side effect of a webhook or a drain. */
const removeRequest = siteRequest;
const retryRequest = z.union([
  z.strictObject({ site_id: siteId }),
  z.strictObject({ all_failed: z.literal(true) }),
]);

/** A kick: run this site's job, run whatever is due, or nothing (and why). */
export type Kick =
  | { kind: "site"; siteId: string }
  | { kind: "drain" }
  | { kind: "ignored"; reason: string };

/** What `/retry` re-queues: one site's failed job, or every failed one. */
export type RetryTarget = { siteId: string } | { allFailed: true };

function describe(error: z.ZodError): string {
  return error.issues.slice(0, 3).map((issue) => {
    const where = issue.path.length ? issue.path.join(".") : "body";
    if (issue.code === "unrecognized_keys") {
      return `${where}: unknown field ${issue.keys.map((k) => quoted(k)).join(", ")}`;
    }
    return `${where}: ${issue.message}`;
  }).join("; ");
}

function isObject(body: unknown): body is object {
  return typeof body === "object" && body !== null && !Array.isArray(body);
}

export function parseKick(body: unknown): Kick {
  if (!isObject(body)) {
    throw badRequest('body: expected a JSON object: {"site_id": "<uuid>"}, {} or a Database Webhook payload');
  }
  if ("type" in body || "record" in body) {
    const hook = webhookRequest.safeParse(body);
    if (!hook.success) throw badRequest(`Database Webhook payload: ${describe(hook.error)}`);
    if (hook.data.type === "DELETE") return { kind: "ignored", reason: "the row was deleted" };
    // Only a DELETE comes without the row; an INSERT or UPDATE without it is malformed.
    if (hook.data.record === null) {
      throw badRequest(`Database Webhook payload: record: required for ${hook.data.type}`);
    }
    return { kind: "site", siteId: hook.data.record.id };
  }
  if ("site_id" in body) {
    const site = siteRequest.safeParse(body);
    if (!site.success) throw badRequest(describe(site.error));
    return { kind: "site", siteId: site.data.site_id };
  }
  const drain = drainRequest.safeParse(body);
  if (!drain.success) {
    throw badRequest(
      `${describe(drain.error)}; expected {"site_id": "<uuid>"}, {} or a Database Webhook payload`,
    );
  }
  return { kind: "drain" };
}

/** The site `/remove` names. */
export function parseRemove(body: unknown): string {
  if (!isObject(body) || !("site_id" in body)) throw badRequest('body: expected {"site_id": "<uuid>"}');
  const parsed = removeRequest.safeParse(body);
  if (!parsed.success) throw badRequest(describe(parsed.error));
  return parsed.data.site_id;
}

export function parseRetry(body: unknown): RetryTarget {
  const parsed = retryRequest.safeParse(body);
  if (!parsed.success) throw badRequest('body: expected {"site_id": "<uuid>"} or {"all_failed": true}');
  return "site_id" in parsed.data ? { siteId: parsed.data.site_id } : { allFailed: true };
}

/** `?wait=`; other query parameters are ignored, as clients add their own (`forceFunctionRegion`). */
export function parseWait(url: URL): boolean {
  const values = url.searchParams.getAll("wait");
  if (values.length > 1) throw badRequest("wait: given more than once");
  const wait = values[0] ?? null;
  if (wait === null || wait === "false" || wait === "0") return false;
  if (wait === "true" || wait === "1" || wait === "") return true;
  throw badRequest("wait: must be true or false");
}

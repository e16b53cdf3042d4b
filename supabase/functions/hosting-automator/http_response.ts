/**
 * What the handler answers: JSON, and errors as `{"error": {"code", "message"}}` with the status of
 * their code. Only an error's public message reaches the client; its detail goes to the log.
 */
import { type ErrorCode, HostingError } from "./errors.ts";

/** The status of each code a request can end with; any other code is a 500. */
const STATUS_OF: Partial<Record<ErrorCode, number>> = {
  bad_request: 400,
  unauthorized: 401,
  not_found: 404,
  method_not_allowed: 405,
  payload_too_large: 413,
  store_failed: 503,
};

export function statusOf(error: HostingError): number {
  return STATUS_OF[error.code] ?? 500;
}

export function json(status: number, body: unknown, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json; charset=utf-8", ...headers },
  });
}

export function errorResponse(error: HostingError, headers?: Record<string, string>): Response {
  return json(statusOf(error), { error: { code: error.code, message: error.publicMessage } }, headers);
}

/** A 400 whose message, shown to the caller, names the field and the rule. */
export function badRequest(message: string): HostingError {
  return new HostingError("bad_request", message, { publicMessage: message });
}

/** A caller's text in an answer: quoted and cut short. */
export function quoted(text: string): string {
  return JSON.stringify(text.length > 40 ? `${text.slice(0, 40)}…` : text);
}

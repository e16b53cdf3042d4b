/**
 * Reading a request's body: uncompressed UTF-8 JSON of at most MAX_BODY_BYTES, read to its end, whose framing
 * (Content-Length) and structure (repeated keys, depth) are the caller's to get right. Every refusal is a 400
 * or 413 naming what is wrong, before anything else looks at the request.
 */
import { concatBytes } from "./bytes.ts";
import { HostingError, isHostingError } from "./errors.ts";
import { withoutOws } from "./http_fields.ts";
import { badRequest, quoted } from "./http_response.ts";

export const MAX_BODY_BYTES = 64 * 1024;
/** Deeper JSON is refused before validation; the deepest shape, a Database Webhook's row, stays far below. */
export const MAX_JSON_DEPTH = 64;

/** Media types read as JSON (a body without one is too); supabase-js sends a string as `text/plain`. */
const JSON_TYPES = new Set(["application/json", "text/plain"]);

/** The declared length, or null; malformed, negative or conflicting values are the caller's error. */
function declaredLength(request: Request): number | null {
  const header = request.headers.get("content-length");
  if (header === null) return null;
  // Repeated fields arrive joined by commas; the same value repeated is one length (RFC 9110 §8.6).
  const values = header.split(",").map(withoutOws);
  if (!values.every((value) => /^[0-9]+$/.test(value)) || new Set(values.map(Number)).size !== 1) {
    throw badRequest("Content-Length: must be one non-negative whole number");
  }
  return Number(values[0]);
}

/** Only uncompressed UTF-8 JSON: other encodings, media types and charsets are refused before reading. */
function checkMediaType(request: Request): void {
  const encoding = request.headers.get("content-encoding");
  if (encoding !== null && withoutOws(encoding).toLowerCase() !== "identity") {
    throw badRequest("Content-Encoding: not supported; send the body uncompressed");
  }
  const type = request.headers.get("content-type");
  if (type === null) return;
  const [essence, ...parameters] = type.split(";");
  if (!JSON_TYPES.has(withoutOws(essence).toLowerCase())) {
    throw badRequest("Content-Type: must be application/json");
  }
  for (const parameter of parameters) {
    const [name, value = ""] = parameter.split("=");
    const charset = value.trim().replace(/^"|"$/g, "").toLowerCase();
    if (name.trim().toLowerCase() === "charset" && charset !== "utf-8" && charset !== "utf8") {
      throw badRequest("Content-Type: charset must be utf-8");
    }
  }
}

function tooLarge(): HostingError {
  return new HostingError("payload_too_large", "body over limit", {
    publicMessage: `The request body is larger than ${MAX_BODY_BYTES} bytes.`,
  });
}

/** The body's bytes, at most MAX_BODY_BYTES: reading stops (and the stream is cancelled) past the limit. */
async function readBytes(body: ReadableStream<Uint8Array>): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    const reader = body.getReader();
    while (true) {
      const { done, value } = await reader.read();
      if (done) break;
      size += value.byteLength;
      if (size > MAX_BODY_BYTES) {
        await reader.cancel().catch(() => {});
        throw tooLarge();
      }
      chunks.push(value);
    }
  } catch (error) {
    if (isHostingError(error)) throw error;
    throw new HostingError("bad_request", "reading the body failed", {
      publicMessage: "body: could not be read to its end (the client closed early or the stream failed)",
      cause: error,
    });
  }
  return concatBytes(...chunks);
}

/**
 * Reads at most MAX_BODY_BYTES of UTF-8 JSON; an empty body is `{}`. A body that cannot be read to its end
 * (the client closed early, the stream failed) is the caller's error, like one that is not JSON.
 */
export async function readJson(request: Request): Promise<unknown> {
  const declared = declaredLength(request);
  if (declared !== null && declared > MAX_BODY_BYTES) throw tooLarge();
  checkMediaType(request);
  const bytes = request.body ? await readBytes(request.body) : new Uint8Array();
  if (declared !== null && bytes.byteLength !== declared) {
    throw badRequest(`body: ${bytes.byteLength} bytes, but Content-Length says ${declared}`);
  }
  let text: string;
  try {
    // A UTF-8 byte order mark is dropped (RFC 8259 §8.1 lets parsers ignore it).
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw badRequest("body: is not valid UTF-8");
  }
  // Only JSON's own white space: a body of U+00A0 is not empty, it is not JSON.
  if (/^[ \t\r\n]*$/.test(text)) return {};
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    throw badRequest("body: is not valid JSON");
  }
  checkStructure(text);
  return value;
}

/**
 * Refuses what JSON.parse lets through silently: a key repeated in one object (parsers disagree on which
 * value wins) and nesting deeper than MAX_JSON_DEPTH. `text` is valid JSON, so a plain scan suffices.
 */
function checkStructure(text: string): void {
  const open: Array<Set<string> | null> = []; // the keys seen, per open object; null for an array
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      const keys = open[open.length - 1];
      if (keys && expectKey) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (keys.has(key)) throw badRequest(`body: the key ${quoted(key)} appears twice in one object`);
        keys.add(key);
        expectKey = false;
      }
      i = end;
    } else if (c === "{" || c === "[") {
      open.push(c === "{" ? new Set() : null);
      if (open.length > MAX_JSON_DEPTH) throw badRequest(`body: nested deeper than ${MAX_JSON_DEPTH} levels`);
      expectKey = c === "{";
    } else if (c === "}" || c === "]") {
      open.pop();
      expectKey = false;
    } else if (c === ",") {
      expectKey = open.length > 0 && open[open.length - 1] !== null;
    }
  }
}

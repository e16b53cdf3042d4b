/**
 * Logging and the single redaction point.
 *
 * Every log line, event message and stored internal error passes through one `Redactor`, which knows every
 * secret value of the invocation: configuration secrets at start, generated site-user passwords as they are
 * made. Patterns catch the shapes a secret takes even when its value is unknown (PEM private keys, the
 * password flag of clpctl, Matomo's token_auth).
 */

export const REDACTED = "[REDACTED]";

/** Secrets shorter than this are not registered: they would redact ordinary words. */
const MIN_SECRET_LENGTH = 6;
/** Lines of a multi-line secret (PEM) at least this long are redacted on their own too. */
const MIN_SECRET_LINE_LENGTH = 16;

const PATTERNS: ReadonlyArray<[RegExp, string]> = [
  [/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)/g, REDACTED],
  [/(--siteUserPassword=)('[^']*'|"[^"]*"|\S+)/g, `$1${REDACTED}`],
  [/(token_auth=)[^&\s"']+/g, `$1${REDACTED}`],
  [/("token_auth"\s*:\s*")[^"]*/g, `$1${REDACTED}`],
  [/(postgres(?:ql)?:\/\/[^:/\s]+:)[^@\s]+@/g, `$1${REDACTED}@`],
];

export class Redactor {
  #values = new Set<string>();
  #sorted: string[] = [];

  constructor(secrets: Iterable<string | undefined> = []) {
    for (const secret of secrets) this.add(secret);
  }

  /** Registers a secret value, with its JSON- and URL-encoded forms and, for multi-line values, each line. */
  add(secret: string | undefined): void {
    if (!secret || secret.trim().length < MIN_SECRET_LENGTH) return;
    const forms = new Set([
      secret,
      secret.trim(),
      JSON.stringify(secret).slice(1, -1),
      encodeURIComponent(secret),
    ]);
    for (const line of secret.split(/\r?\n/)) {
      if (line.trim().length >= MIN_SECRET_LINE_LENGTH) forms.add(line.trim());
    }
    let changed = false;
    for (const form of forms) {
      if (form.length >= MIN_SECRET_LENGTH && !this.#values.has(form)) {
        this.#values.add(form);
        changed = true;
      }
    }
    // Longest first, so a secret that contains another is replaced whole.
    if (changed) this.#sorted = [...this.#values].sort((a, b) => b.length - a.length);
  }

  redact(text: string): string {
    let out = text;
    for (const value of this.#sorted) out = out.replaceAll(value, REDACTED);
    for (const [pattern, replacement] of PATTERNS) out = out.replace(pattern, replacement);
    return out;
  }
}

export type LogLevel = "debug" | "info" | "warn" | "error";
const LEVELS: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export interface LogFields {
  site?: string;
  domain?: string;
  job?: number | string;
  step?: string;
  duration_ms?: number;
  code?: string;
  [key: string]: unknown;
}

export type LogSink = (line: string, level: LogLevel) => void;

export const consoleSink: LogSink = (line, level) => {
  // The one place the function writes to the console: every line here has been redacted.
  // deno-lint-ignore no-console
  if (level === "error") console.error(line);
  // deno-lint-ignore no-console
  else console.log(line);
};

/** One JSON object per line; every line goes through the redactor. */
export class Logger {
  readonly redactor: Redactor;
  readonly #sink: LogSink;
  readonly #min: number;
  readonly #bindings: LogFields;

  constructor(
    redactor: Redactor,
    options: { sink?: LogSink; level?: LogLevel; bindings?: LogFields } = {},
  ) {
    this.redactor = redactor;
    this.#sink = options.sink ?? consoleSink;
    this.#min = LEVELS[options.level ?? "info"];
    this.#bindings = options.bindings ?? {};
  }

  child(bindings: LogFields): Logger {
    return new Logger(this.redactor, {
      sink: this.#sink,
      level: levelName(this.#min),
      bindings: { ...this.#bindings, ...bindings },
    });
  }

  /** The redaction point, for text that leaves the process by another road (events, stored errors). */
  redact(text: string): string {
    return this.redactor.redact(text);
  }

  debug(msg: string, fields?: LogFields): void {
    this.#write("debug", msg, fields);
  }
  info(msg: string, fields?: LogFields): void {
    this.#write("info", msg, fields);
  }
  warn(msg: string, fields?: LogFields): void {
    this.#write("warn", msg, fields);
  }
  error(msg: string, fields?: LogFields): void {
    this.#write("error", msg, fields);
  }

  #write(level: LogLevel, msg: string, fields?: LogFields): void {
    if (LEVELS[level] < this.#min) return;
    const record = { time: new Date().toISOString(), level, msg, ...this.#bindings, ...fields };
    let line: string;
    try {
      line = JSON.stringify(record, errorReplacer);
    } catch {
      line = JSON.stringify({ time: record.time, level, msg, note: "fields could not be serialised" });
    }
    this.#sink(this.redactor.redact(line), level);
  }
}

function levelName(value: number): LogLevel {
  return (Object.entries(LEVELS).find(([, v]) => v === value)?.[0] ?? "info") as LogLevel;
}

/** Errors serialise as name, code and message; stacks stay out of the log lines (they can carry paths). */
function errorReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return { name: value.name, ...(code === undefined ? {} : { code }), message: value.message };
  }
  if (typeof value === "bigint") return value.toString();
  return value;
}

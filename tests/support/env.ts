/**
 * Test support: what `tests/run.ts` hands to the Deno tests (cluster URL, template database, Supabase CLI,
 * artifact directory), and the artifacts every test leaves for the final secret scan: captured log lines,
 * the secrets tests created, and the clpctl simulator states (which hold the generated site passwords).
 */
import { fileURLToPath } from "node:url";
import type { LogLevel, LogSink } from "../../supabase/functions/hosting-automator/log.ts";

export const ROOT = fileURLToPath(new URL("../../", import.meta.url));

function required(name: string): string {
  const value = Deno.env.get(name);
  if (!value) {
    throw new Error(`${name} is not set: run the suite with \`deno task test\`, which starts PostgreSQL`);
  }
  return value;
}

export const harness = {
  /** postgresql://postgres:postgres@127.0.0.1:<port> (no database). */
  get pgBase(): string {
    return required("HA_PG_BASE");
  },
  /** A database with the migrations applied (by the Supabase CLI) and the platform stand-ins. */
  get template(): string {
    return required("HA_PG_TEMPLATE");
  },
  get supabaseCli(): string {
    return required("HA_SUPABASE_CLI");
  },
  get artifacts(): string {
    return required("HA_ARTIFACTS");
  },
};

export function artifactPath(...parts: string[]): string {
  return [harness.artifacts, ...parts].join("/");
}

const encoder = new TextEncoder();

function append(file: string, line: string): void {
  Deno.writeFileSync(artifactPath(file), encoder.encode(line + "\n"), { append: true });
}

/** A secret a test created: the final scan checks it appears in no log, event or error. */
export function registerSecret(value: string): string {
  append("secrets.jsonl", JSON.stringify(value));
  return value;
}

/** A log sink that keeps every line for the final scan (and, when HA_TEST_VERBOSE is set, prints it). */
export function captureSink(lines?: string[]): LogSink {
  const verbose = Deno.env.get("HA_TEST_VERBOSE");
  return (line: string, _level: LogLevel) => {
    lines?.push(line);
    append("logs.jsonl", line);
    // deno-lint-ignore no-console
    if (verbose) console.log(line);
  };
}

/** A fresh directory under the artifacts, kept until the end of the run. */
export async function artifactDir(kind: string): Promise<string> {
  const dir = artifactPath(kind, crypto.randomUUID().slice(0, 12));
  await Deno.mkdir(dir, { recursive: true });
  return dir;
}

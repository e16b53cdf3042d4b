/**
 * Test support: each test gets its own database, cloned from the migrated template (fast: a file copy).
 * Databases are kept until the run ends, so the final scan can read every event log and error message.
 */
import postgres from "postgres";
import { harness } from "./env.ts";

export interface TestDb {
  name: string;
  url: string;
  sql: postgres.Sql;
  close(): Promise<void>;
}

/** `empty`: a bare database (only what the cluster gives every database) instead of the migrated template. */
export async function testDb(label = "t", options: { empty?: boolean } = {}): Promise<TestDb> {
  const slug = label.toLowerCase().replace(/[^a-z0-9]+/g, "_").slice(0, 30);
  const name = `t_${slug}_${crypto.randomUUID().slice(0, 8)}`;
  // A connection of its own each time: nothing stays open between tests (Deno's sanitizers check that).
  const admin = postgres(`${harness.pgBase}/postgres`, { max: 1, onnotice: () => {} });
  try {
    await admin.unsafe(`create database "${name}"${options.empty ? "" : ` template "${harness.template}"`}`);
  } finally {
    await admin.end({ timeout: 5 });
  }
  const url = `${harness.pgBase}/${name}`;
  const sql = postgres(url, { max: 10, onnotice: () => {} });
  return {
    name,
    url,
    sql,
    close: () => sql.end({ timeout: 5 }),
  };
}

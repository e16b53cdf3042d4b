/**
 * Test support: a PostgreSQL cluster of a test's own, for tests that restart the server (the suite's shared
 * cluster must stay up for the tests running beside them). Its one database is a copy of the suite's migrated
 * template (pg_dump | pg_restore), so it holds exactly what every other test database holds.
 */
import postgres from "postgres";
import { type Cluster, PG_BIN, startCluster, SUPABASE_BASE_SQL } from "./cluster.ts";
import type { TestDb } from "./db.ts";
import { harness } from "./env.ts";

export interface PrivateCluster {
  cluster: Cluster;
  db: TestDb;
  /** Closes the database's connections and stops the cluster. */
  close(): Promise<void>;
}

export async function startPrivateCluster(label = "private"): Promise<PrivateCluster> {
  const cluster = await startCluster();
  let db: TestDb | undefined;
  try {
    await cluster.psql("postgres", SUPABASE_BASE_SQL);
    const name = `t_${label.toLowerCase().replace(/[^a-z0-9]+/g, "_").slice(0, 30)}`;
    await cluster.psql("postgres", `create database "${name}"`);
    const dump = await new Deno.Command(`${PG_BIN}/pg_dump`, {
      args: ["-Fc", "-d", `${harness.pgBase}/${harness.template}`],
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!dump.success) throw new Error(`pg_dump failed: ${new TextDecoder().decode(dump.stderr)}`);
    const restore = new Deno.Command(`${PG_BIN}/pg_restore`, {
      args: ["--exit-on-error", "-d", cluster.url(name)],
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = restore.stdin.getWriter();
    await writer.write(dump.stdout);
    await writer.close();
    const restored = await restore.output();
    if (!restored.success) throw new Error(`pg_restore failed: ${new TextDecoder().decode(restored.stderr)}`);
    const url = cluster.url(name);
    const sql = postgres(url, { max: 10, onnotice: () => {} });
    db = { name, url, sql, close: () => sql.end({ timeout: 5 }) };
    const opened = db;
    return {
      cluster,
      db,
      async close() {
        await opened.close().catch(() => {});
        await cluster.stop();
      },
    };
  } catch (error) {
    await db?.close().catch(() => {});
    await cluster.stop();
    throw error;
  }
}

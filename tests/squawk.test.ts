/**
 * The migration lint (squawk with .squawk.toml) can fail: a statement that would lock a busy table for long
 * is reported, and an inline ignore with its reason is the way to accept one.
 */
import assert from "node:assert/strict";
import { squawk } from "./support/squawk.ts";

async function lint(sql: string): Promise<{ code: number; output: string }> {
  const dir = await Deno.makeTempDir({ prefix: "ha-squawk-" });
  try {
    await Deno.writeTextFile(`${dir}/20990101000000_example.sql`, sql);
    return await squawk([`${dir}/20990101000000_example.sql`]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("squawk reports an index built on public.sites without CONCURRENTLY and a migration without lock_timeout", async () => {
  const result = await lint("create index sites_created on public.sites (created_at);\n");
  assert.notEqual(result.code, 0, result.output);
  assert.match(result.output, /require-concurrent-index-creation/);
  assert.match(result.output, /require-lock-timeout/);
});

Deno.test("squawk accepts such a statement when the migration sets lock_timeout and says why inline", async () => {
  const result = await lint(
    "set local lock_timeout = '5s';\n" +
      "-- squawk-ignore require-concurrent-index-creation -- the Hub's table holds a few hundred rows\n" +
      "create index sites_created on public.sites (created_at);\n",
  );
  assert.equal(result.code, 0, result.output);
});

/**
 * The words the database and the function share, each spelled once: the database's step names and job kinds are
 * the function's, and every error code a SQL function writes on its own is one the function knows (its public
 * text and class come from errors.ts). The steps' meanings travel with the transitions (outcome.ts, journal.ts),
 * so no function body may name a step or a code the function could send.
 */
import assert from "node:assert/strict";
import { ERROR_CODES } from "../supabase/functions/hosting-automator/errors.ts";
import { JOB_KINDS, STEP_NAMES } from "../supabase/functions/hosting-automator/store.ts";
import { testDb } from "./support/db.ts";

/** The module's SQL function bodies: the private schema's and the public `hosting_*` ones. */
const BODIES = `
  select p.proname as name, p.prosrc as body
  from pg_proc p join pg_namespace n on n.oid = p.pronamespace
  where n.nspname = 'hosting_automator' or (n.nspname = 'public' and p.proname like 'hosting\\_%')`;

Deno.test("the database's step names and job kinds are the function's, in order", async () => {
  const db = await testDb("vocabulary_enums");
  try {
    const steps = await db.sql`
      select e.enumlabel from pg_enum e
      where e.enumtypid = 'hosting_automator.step_name'::regtype order by e.enumsortorder`;
    assert.deepEqual(steps.map((r) => r.enumlabel).sort(), [...STEP_NAMES].sort());
    const [{ def }] = await db.sql`
      select pg_get_constraintdef(c.oid) as def from pg_constraint c
      where c.conrelid = 'hosting_automator.jobs'::regclass and c.conname = 'jobs_kind_check'`;
    const kinds = [...String(def).matchAll(/'([a-z_]+)'::text/g)].map((m) => m[1]);
    assert.deepEqual(kinds.sort(), [...JOB_KINDS].sort(), def);
  } finally {
    await db.close();
  }
});

Deno.test("every error code a SQL function writes is one the function knows, and no body names a step", async () => {
  const db = await testDb("vocabulary_codes");
  try {
    const functions = await db.sql.unsafe(BODIES);
    assert.ok(functions.length > 30, `the module's functions were found (${functions.length})`);
    const written = new Set<string>();
    for (const { name, body } of functions) {
      for (const m of String(body).matchAll(/last_error_code\s*=\s*'([a-z_]+)'/g)) written.add(m[1]);
      for (const step of STEP_NAMES) {
        assert.ok(!new RegExp(`'${step}'`).test(String(body)), `${name} names the step ${step}`);
      }
    }
    assert.ok(written.size > 0, "the codes SQL writes were found");
    const unknown = [...written].filter((code) => !(code in ERROR_CODES));
    assert.deepEqual(unknown, [], `codes SQL writes that errors.ts does not know: ${unknown.join(", ")}`);
  } finally {
    await db.close();
  }
});

/**
 * The PostgreSQL 17 (PGlite) run of the pgTAP files: how a psql script is cut into statements, and how the
 * assertions that need pg_cron become pgTAP skips while everything else runs unchanged.
 */
import assert from "node:assert/strict";
import { skipStatements, splitPsqlScript } from "./support/pglite.ts";

const SCRIPT = `-- a header; cron.job in a comment needs nothing
begin;
select plan(3);
insert into t values ('a;b', $x$ ; b $x$) returning id \\gset t_
select is(:'t_id', 1, 'semicolons in quotes and dollar quotes do not end a statement');
/* block; comment */ select ok(true, 'it''s fine');
-- the sweep is scheduled
select is(
  (select schedule from cron.job where jobname = 'sweep'), '* * * * *',
  'pg_cron runs the sweep');
select * from finish();
rollback;
`;

Deno.test("a psql script is cut at semicolons and meta-commands, not inside quotes or comments, and joins back unchanged", () => {
  const pieces = splitPsqlScript(SCRIPT);
  assert.equal(pieces.join(""), SCRIPT);
  const trimmed = pieces.map((p) => p.trim()).filter(Boolean);
  assert.equal(trimmed.length, 8);
  assert.match(
    trimmed[2],
    /^insert into t values \('a;b', \$x\$ ; b \$x\$\) returning id \\gset t_$/,
  );
  assert.match(trimmed[4], /^\/\* block; comment \*\/ select ok\(true, 'it''s fine'\);$/);
});

Deno.test("assertions that use cron.* become pgTAP skips with the reason; comments alone do not count", () => {
  const { script, skipped } = skipStatements(SCRIPT, /\bcron\./i, "pg_cron is not available in PGlite");
  assert.equal(skipped.length, 1, "the assertion reading cron.job, not the comments that name it");
  assert.match(skipped[0].statement, /^select is\( \(select schedule from cron\.job/);
  assert.doesNotMatch(script, /from cron\.job/);
  assert.equal(script.match(/select skip\('pg_cron is not available in PGlite', 1\);/g)?.length, 1);
  assert.match(script, /-- the sweep is scheduled\nselect skip/, "comments before a statement stay");
});

Deno.test("a statement that needs what is missing but is not one assertion is refused, not dropped", () => {
  assert.throws(
    () => skipStatements("select * from cron.job;\n", /\bcron\./i, "no pg_cron"),
    /not one pgTAP assertion/,
  );
  assert.throws(
    () => skipStatements("insert into t values ($x$ cron.job $x$);\n", /\bcron\./i, "no pg_cron"),
    /not one pgTAP assertion/,
    "a dollar-quoted mention counts: the statement may run it",
  );
});

/**
 * The chaos run's removal phase, as the Hub would cause it: once every site has settled, a seeded share of the
 * active sites is removed, half by deleting the row, half by setting `status_hosting = 'removing'` on it, in a
 * few batches; half of the deleted domains are inserted again at once (the same domain, a new row with
 * `status_dns = 'active'`), so the new row must wait for the old site's removal and then be provisioned.
 */
import type postgres from "postgres";
import { unit } from "./rng.ts";

export interface RemovalTarget {
  /** The row asked to be removed (for a deleted row, its old id). */
  id: string;
  domain: string;
  /** `delete`: the row is deleted; `keep`: the row is kept and set `removing`. */
  how: "delete" | "keep";
  /** A deleted row whose domain is inserted again in the same transaction. */
  recreate: boolean;
}

export interface RemovalPlan {
  targets: RemovalTarget[];
  /** The targets in the order they are asked for, one array per batch. */
  batches: RemovalTarget[][];
  /** Jobs with a greater id were queued by this phase. */
  afterJobId: number;
}

/** Batches the removals are asked for in (fewer when there are fewer targets). */
const BATCHES = 3;

/**
 * Which of the active sites are removed and how: the share is taken in an order decided by the seed and each
 * domain (not by the order of the rows); then every other one is deleted, and every other deleted one is
 * inserted again.
 */
export function planRemovals(
  active: Array<{ id: string; domain: string }>,
  share: number,
  seed: number,
  afterJobId: number,
): RemovalPlan {
  const count = Math.min(active.length, Math.round(share * active.length));
  const chosen = [...active]
    .map((site) => ({ site, key: unit(seed, "removal", site.domain) }))
    .sort((a, b) => a.key - b.key)
    .slice(0, count)
    .map((x) => x.site);
  let deleted = 0;
  const targets: RemovalTarget[] = chosen.map((site, i) => {
    const how = i % 2 === 0 ? "delete" : "keep";
    const recreate = how === "delete" && deleted++ % 2 === 0;
    return { id: site.id, domain: site.domain, how, recreate };
  });
  const n = Math.min(BATCHES, targets.length);
  const batches = Array.from({ length: n }, (_, b) => targets.filter((_, i) => i % n === b));
  return { targets, batches, afterJobId };
}

/**
 * Asks for one batch of removals: one UPDATE for the kept rows; one transaction that deletes the others and
 * inserts the re-created domains again. Both may be repeated after an error (PostgreSQL restarting): the
 * UPDATE changes nothing twice, and a domain already inserted again is not inserted twice.
 */
export async function askForRemovals(sql: postgres.Sql, batch: RemovalTarget[]): Promise<void> {
  const kept = batch.filter((t) => t.how === "keep").map((t) => t.id);
  const deleted = batch.filter((t) => t.how === "delete").map((t) => t.id);
  const again = batch.filter((t) => t.recreate).map((t) => t.domain);
  if (kept.length > 0) {
    await sql`update public.sites set status_hosting = 'removing'
      where id = any(${kept}::uuid[]) and status_hosting is distinct from 'removing'`;
  }
  if (deleted.length > 0) {
    await sql.begin(async (tx) => {
      await tx`delete from public.sites where id = any(${deleted}::uuid[])`;
      await tx`insert into public.sites (domain, status_dns, status_hosting)
        select d, 'active', 'pending' from unnest(${again}::text[]) d
        where not exists (select 1 from public.sites s where s.domain = d)`;
    });
  }
}

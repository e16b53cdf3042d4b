/**
 * Seeded randomness for the chaos run. Decisions about one call are a pure function of the seed and the
 * call's identity (verb, domain, how many times it was made), not of the order in which concurrent calls
 * arrive, so the same seed injects the same faults into the same calls run after run.
 */

/** A 32-bit hash of the parts (FNV-1a, then a murmur3 finaliser for the low bits). */
export function hash32(...parts: Array<string | number>): number {
  let h = 0x811c9dc5;
  for (const ch of parts.join("\u0000")) {
    h ^= ch.codePointAt(0)!;
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** A number in [0, 1) decided by the parts. */
export function unit(...parts: Array<string | number>): number {
  return hash32(...parts) / 2 ** 32;
}

/** A sequence of numbers in [0, 1) (mulberry32), for decisions that are made in order by one loop. */
export function sequence(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Test support: asserting the HostingError a piece of work fails with. */
import assert from "node:assert/strict";
import {
  type ErrorCode,
  type HostingError,
  isHostingError,
} from "../../supabase/functions/hosting-automator/errors.ts";

/** Asserts that `work` rejects with a HostingError of `code` and returns it. */
export async function failsWith(work: Promise<unknown>, code: ErrorCode): Promise<HostingError> {
  try {
    await work;
  } catch (e) {
    assert.ok(isHostingError(e), `expected a HostingError, got ${e}`);
    assert.equal(e.code, code, `expected ${code}, got ${e.code}: ${e.message}`);
    return e;
  }
  assert.fail(`expected ${code}, but it succeeded`);
}
